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
    d = len(devices)
    if d < 2:
        return lambda nbytes: 0.0
    hops = ring_hops(devices)
    measured = pricing.pricer.measured_all_reduce(hops, d)
    if measured is not None:
        pricing.sources_used["communication"].add("profile")
        return lambda nbytes: measured.latency_s + nbytes / measured.bandwidth if nbytes > 0 else 0.0
    links = [pricing.link(a, b) for a, b in hops]
    latency = max(link.latency_s for link in links)
    bandwidth = min(link.bandwidth for link in links)
    return lambda nbytes: ring_all_reduce_time(nbytes, d, latency, bandwidth)


def half_ring(pricing: PlanPricing, devices: list[int], op: str) -> Callable[[float], float]:
    """Seconds of one ``op`` (all_gather or reduce_scatter) of a buffer of n bytes whole over
    ``devices``, as a function of n: the profile's fit of that op where it has one, else
    half an all-reduce of the buffer. The ring's links are looked up once (a group of 512
    gathers thousands of blocks). Bytes are not counted here: the caller counts each
    collective once per step (`count_ring_bytes` with ``halves=1``)."""
    d = len(devices)
    if d < 2:
        return lambda nbytes: 0.0
    hops = ring_hops(devices)
    own = pricing.pricer.measured_collective(op, hops, d)
    if own is not None:
        pricing.sources_used["communication"].add("profile")
        return lambda nbytes: own.latency_s + nbytes / own.bandwidth if nbytes > 0 else 0.0
    measured = pricing.pricer.measured_all_reduce(hops, d)
    if measured is not None:
        pricing.sources_used["communication"].add("profile")
        return lambda nbytes: (measured.latency_s + nbytes / measured.bandwidth) / 2 if nbytes > 0 else 0.0
    links = [pricing.link(a, b) for a, b in hops]
    latency = max(link.latency_s for link in links)
    bandwidth = min(link.bandwidth for link in links)
    return lambda nbytes: ring_all_reduce_time(nbytes, d, latency, bandwidth) / 2
