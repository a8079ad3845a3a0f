"""Ring collectives over a group of devices: their time and the bytes they put on each link.

NCCL and gloo reduce a buffer around a ring: each of the d hops carries 2(d-1)/d of it
(Patarasuk and Yuan 2009). Its time is a profile's measured fit for the link kind and
group size where there is one, else the ring formula on the slowest hop
(`planner.cost.timing.ring_all_reduce_time`). A ring all-reduce is a reduce-scatter then an
all-gather, so each of those (sharded data parallel's) carries (d-1)/d of the whole buffer
per hop and takes half an all-reduce's time, unless the profile timed that collective itself
(`runtime.measure.profiling` does, after compute, as it times the all-reduce).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from planner.cost.timing import ring_all_reduce_time

if TYPE_CHECKING:
    from planner.cost.plan_pricing import PlanPricing
    from planner.cost.price import Pricer


def ring_hops(devices: list[int]) -> list[tuple[int, int]]:
    """Each device to the next, the last back to the first."""
    return list(zip(devices, devices[1:] + devices[:1], strict=True))


def count_ring_bytes(pricing: PlanPricing, devices: list[int], nbytes: float, halves: int = 2) -> None:
    """Add one all-reduce of ``nbytes`` over ``devices`` to the plan's bytes per link (with
    ``halves`` 1: one all-gather or reduce-scatter of the whole buffer)."""
    d = len(devices)
    if d < 2:
        return
    for a, b in ring_hops(devices):
        pricing.link_bytes[(a, b)] += halves * (d - 1) / d * nbytes


def all_reduce_time(pricing: PlanPricing, devices: list[int], nbytes: float) -> float:
    """One all-reduce of ``nbytes`` over ``devices``, its bytes counted on their links."""
    if len(devices) < 2 or nbytes <= 0:
        return 0.0
    count_ring_bytes(pricing, devices, nbytes)
    return all_reduce_fn(pricing, devices)(nbytes)


def all_reduce_fn(pricing: PlanPricing, devices: list[int]) -> Callable[[float], float]:
    """Seconds of one all-reduce of a buffer of n bytes over ``devices``, as a function of n:
    the profile's fit where it has one, else the ring formula on the slowest hop. Bytes are
    not counted here (`count_ring_bytes`)."""
    return _ring(pricing, devices, "all_reduce")


def half_ring(pricing: PlanPricing, devices: list[int], op: str) -> Callable[[float], float]:
    """Seconds of one ``op`` (all_gather or reduce_scatter) of a buffer of n bytes whole over
    ``devices``, as a function of n: the profile's fit of that op where it has one, else
    half an all-reduce of the buffer. Bytes are not counted here: the caller counts each
    collective once per step (`count_ring_bytes` with ``halves=1``)."""
    return _ring(pricing, devices, op)


def _ring(pricing: PlanPricing, devices: list[int], op: str) -> Callable[[float], float]:
    """`ring_time`, looked up once per device ring and op for all the plans a pricer prices
    (a group of 512 looks up 512 links), its sources noted for this plan."""
    fn, sources = pricing.pricer.ring(tuple(devices), op)
    pricing.sources_used["communication"].update(sources)
    return fn


def ring_time(
    pricer: Pricer, devices: tuple[int, ...], op: str
) -> tuple[Callable[[float], float], frozenset]:
    """(seconds of one ``op`` of a buffer of n bytes whole over ``devices`` as a function of
    n, where its figures came from): a profile's fit of the op itself (all_gather and
    reduce_scatter), else of the all-reduce (an all-gather or reduce-scatter is half of it),
    else the ring formula on the slowest hop of the cluster's links."""
    d = len(devices)
    if d < 2:
        return (lambda nbytes: 0.0), frozenset()
    hops = ring_hops(list(devices))
    own = pricer.measured_collective(op, hops, d) if op != "all_reduce" else None
    if own is not None:
        return (lambda nbytes: own.latency_s + nbytes / own.bandwidth if nbytes > 0 else 0.0), PROFILE
    halves = 1 if op == "all_reduce" else 2
    measured = pricer.measured_all_reduce(hops, d)
    if measured is not None:
        return (
            lambda nbytes: (measured.latency_s + nbytes / measured.bandwidth) / halves if nbytes > 0 else 0.0
        ), PROFILE
    links = [pricer.link(a, b, "p2p") for a, b in hops]
    latency = max(link.latency_s for link in links)
    bandwidth = min(link.bandwidth for link in links)
    sources = frozenset(link.source for link in links)
    return (lambda nbytes: ring_all_reduce_time(nbytes, d, latency, bandwidth) / halves), sources


PROFILE = frozenset({"profile"})
