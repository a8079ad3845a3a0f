"""What the search may try: every layout of the model on the cluster, as candidates.

Enumerated: the devices to use (all, each kind alone, the fastest one), the tensor-parallel
degrees given (each group on consecutive devices of one kind in one node: its collectives run
on every block), dp x pp over the groups,
both mesh orders (a pipeline's ranks on neighbouring devices, so stage-to-stage traffic
stays on the fast links inside a node; or a replica group's), every order of device kinds
along a pipeline, micro-batch counts, schedules (GPipe, 1F1B, interleaved with v = 2), and
for replicas of different speeds, batch shares in proportion to speed (pipelines up to
MAX_PP deep). The GAN (a model of named sub-networks, `planner.networks`) is laid out as
data parallel or as `mp`, its networks on their own devices.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from planner.cluster import Cluster
from planner.devices import device_kind
from planner.errors import PlannerError
from planner.networks import is_adversarial
from planner.plan import Strategy
from planner.profile import Profile
from planner.schedules import Schedule, schedule_error
from planner.search.candidate import Candidate

MAX_PP = 64  # deeper pipelines are not enumerated: their bubble and simulation cost grow with depth
PIPELINES_IN_NODES = "pipelines in nodes"
REPLICAS_IN_NODES = "replicas in nodes"


def candidates(
    cluster: Cluster,
    speeds: dict[int, float],
    blocks: list[str],
    batch: int,
    wanted: Strategy | None,
    schedule: str | None,
    micro_batches: int | None,
    tp_degrees: Sequence[int] = (1,),
    sequence_parallel: bool = False,
) -> list[Candidate]:
    """Every layout of ``wanted`` (None: any strategy) that honours the pinned schedule and
    micro-batch count, for each of ``tp_degrees`` (under sequence parallelism when asked);
    the GAN's own layouts when the blocks are a GAN's networks."""
    if is_adversarial(blocks):
        return adversarial_candidates(cluster, speeds, blocks, batch, wanted)
    if wanted == Strategy.MP:
        raise PlannerError(
            "mp places named sub-networks (a GAN's generator and discriminator); this model has none: use pp"
        )
    out = []
    for tp in tp_degrees:
        seen: set[tuple] = set()  # device sets can repeat a layout (a kind of one device is the fastest)
        for device_set in _device_sets(cluster, speeds):
            groups = tensor_groups(cluster, device_set, tp)
            if groups is None:
                continue
            leads = device_set if tp == 1 else list(groups)
            found = layouts(cluster, speeds, leads, len(blocks), batch, wanted, schedule, micro_batches, seen)
            out += [c.with_tensor_groups(groups, sequence_parallel and tp > 1) for c in found]
    return out


def tensor_groups(cluster: Cluster, devices: list[int], tp: int) -> dict[int, list[int]] | None:
    """``devices`` in groups of ``tp``: consecutive devices of one kind in one node, keyed by
    each group's first device; None when some node's devices of a kind do not divide by tp."""
    by_place: dict[tuple[int, str], list[int]] = {}
    for d in sorted(devices, key=lambda d: (cluster.device(d).node, cluster.device(d).kind, d)):
        by_place.setdefault((cluster.device(d).node, cluster.device(d).kind), []).append(d)
    if any(len(members) % tp for members in by_place.values()):
        return None
    return {
        members[i]: members[i : i + tp] for members in by_place.values() for i in range(0, len(members), tp)
    }


def device_speeds(
    cluster: Cluster, profile: Profile | None, blocks: list[str], dtype: str
) -> dict[int, float]:
    """Relative speed of each device, for choosing devices and batch shares.

    Measured where the profile times every block on every kind in the cluster (one over a
    one-sample forward and backward through all blocks), else datasheet peak FLOP/s; a
    device measured twice as slow gets half the share. Times the device's compute share.
    """
    kinds = {d.kind for d in cluster.devices}
    measured: dict[str, float] = {}
    if profile is not None and profile.timed_in(dtype):
        for kind in kinds:
            times = [profile.block_time(b, kind, 1) for b in blocks]
            if all(t is not None for t in times) and sum(f + b for f, b in times) > 0:
                measured[kind] = 1.0 / sum(f + b for f, b in times)
    if measured.keys() != kinds:  # never mix measured and datasheet scales
        measured = {k: device_kind(k).peak_flops.get(dtype, 0.0) for k in kinds}
    return {d.id: measured[d.kind] * d.compute_share for d in cluster.devices}


# -- data, pipeline and hybrid parallel ---------------------------------------------------
class _Placement(NamedTuple):
    """Ranks laid on devices: ``dp`` replicas of a ``pp``-stage pipeline."""

    dp: int
    pp: int
    mesh: str
    """The mesh order and the order of device kinds, in words."""
    devices: list[int]
    """Device of each rank, in rank order."""
    coords: list[tuple[int, int]]
    """``(dp_index, pp_index)`` of each rank."""
    replicas: list[list[int]]
    """Each replica's devices."""


def layouts(
    cluster: Cluster,
    speeds: dict[int, float],
    devices: list[int],
    n_blocks: int,
    batch: int,
    wanted: Strategy | None,
    schedule: str | None,
    pinned_m: int | None,
    seen: set[tuple],
) -> Iterator[Candidate]:
    """Each layout of ``devices`` not in ``seen`` (then added to it): every placement with
    its micro-batches, shares and schedules."""
    for at in _placements(cluster, devices, n_blocks, wanted):
        for m, shares, sched, v in _variants(speeds, at.replicas, at.pp, batch, n_blocks, schedule, pinned_m):
            key = (tuple(at.devices), tuple(at.coords), m, sched, v, tuple(shares))
            if key not in seen:
                seen.add(key)
                yield _candidate(at, m, sched, v, shares)


def _placements(
    cluster: Cluster, device_set: list[int], n_blocks: int, wanted: Strategy | None
) -> Iterator[_Placement]:
    """For each dp x pp of ``wanted`` over ``device_set``: each order of device kinds and,
    for hybrids across nodes or link kinds, each mesh order."""
    # On one node with one kind of link every mesh order is the same plan.
    uniform = len(cluster.nodes()) == 1 and len(cluster.link_kinds()) <= 1
    for dp, pp in _shapes(len(device_set), n_blocks):
        if wanted not in (None, _strategy_of(dp, pp)):
            continue
        meshes = [PIPELINES_IN_NODES, REPLICAS_IN_NODES] if dp > 1 and pp > 1 and not uniform else [""]
        for kinds, ordered in _orders(cluster, device_set[: dp * pp]):
            for mesh in meshes:
                coords = _grid(mesh, dp, pp)
                replicas: list[list[int]] = [[] for _ in range(dp)]  # one pass: up to 10^5 ranks
                for r, (dp_index, _) in enumerate(coords):
                    replicas[dp_index].append(ordered[r])
                label = ", ".join(x for x in (mesh, kinds) if x)
                yield _Placement(dp, pp, label, ordered, coords, replicas)


def _strategy_of(dp: int, pp: int) -> Strategy:
    return Strategy.DP if pp == 1 else (Strategy.PP if dp == 1 else Strategy.HYBRID)


def _grid(mesh: str, dp: int, pp: int) -> list[tuple[int, int]]:
    """Each rank's (dp_index, pp_index): a pipeline's ranks consecutive, or a replica group's."""
    if mesh == REPLICAS_IN_NODES:
        return [(r % dp, r // dp) for r in range(dp * pp)]
    return [(r // pp, r % pp) for r in range(dp * pp)]


def _candidate(at: _Placement, m: int, schedule: Schedule | None, v: int, shares: list[int]) -> Candidate:
    if at.pp == 1:  # ranks are replicas in order: coords (r, 0)
        return Candidate.data_parallel(at.devices, shares, micro_batches=m, mesh=at.mesh)
    return Candidate.pipelined(
        dp_degree=at.dp,
        pp_degree=at.pp,
        micro_batches=m,
        schedule=schedule,
        virtual_stages=v,
        devices=at.devices,
        coords=at.coords,
        shares=shares,
        mesh=at.mesh,
    )


def _device_sets(cluster: Cluster, speeds: dict[int, float]) -> list[list[int]]:
    """All devices; each kind alone when there are several; the single fastest device."""
    everything = [d.id for d in cluster.devices]
    sets = [everything]
    kinds = sorted({d.kind for d in cluster.devices})
    if len(kinds) > 1:
        sets += [[d.id for d in cluster.devices if d.kind == k] for k in kinds]
    fastest = max(everything, key=lambda i: (speeds[i], -i))
    if len(everything) > 1:
        sets.append([fastest])
    return sets


def _shapes(total: int, n_blocks: int) -> list[tuple[int, int]]:
    """(dp, pp) that use all ``total`` devices, pipelines no deeper than the blocks or MAX_PP."""
    shapes = [(total // pp, pp) for pp in range(1, min(total, n_blocks, MAX_PP) + 1) if total % pp == 0]
    if total > MAX_PP and n_blocks >= MAX_PP:
        shapes.append((1, MAX_PP))  # the pure pipeline, as deep as it goes, on the first devices
    return shapes


def _orders(cluster: Cluster, devices: list[int]) -> list[tuple[str, list[int]]]:
    """Devices in placement order: by node, then by each order of kinds (at most 6 tried)."""
    kinds = sorted({cluster.device(d).kind for d in devices})
    out = []
    for perm in itertools.islice(itertools.permutations(kinds), 6):
        key = {k: i for i, k in enumerate(perm)}
        ordered = sorted(devices, key=lambda d: (cluster.device(d).node, key[cluster.device(d).kind], d))
        out.append(("" if len(kinds) == 1 else ">".join(perm), ordered))
    return out


def _variants(speeds, replicas, pp, batch, n_blocks, schedule, pinned_m):
    """(micro-batches, shares, schedule, virtual stages) for one placement."""
    for m in _micro_batch_counts(pp, batch // len(replicas), pinned_m):
        for shares in _shares(speeds, replicas, batch, m):
            for sched, v in _schedules(pp, m, n_blocks, schedule):
                yield m, shares, sched, v


def _micro_batch_counts(pp: int, share: int, pinned: int | None) -> list[int]:
    if pinned is not None:
        return [pinned]
    # More micro-batches shrink the bubble but cost a weight read per micro-batch and grow
    # the simulation; past max(64, pp) the gain is gone.
    options = {1, 2, 4, 8, 16, 32, 64, pp, 2 * pp, 4 * pp}
    return sorted(m for m in options if m <= min(share, max(64, pp)))


def _shares(speeds: dict[int, float], replicas: list[list[int]], batch: int, m: int) -> list[list[int]]:
    """Even shares, and shares in proportion to replica speed when speeds differ; each a
    multiple of m."""
    dp = len(replicas)
    if batch % m or (batch // m) < dp:
        return []
    units = batch // m
    even = [units // dp + (1 if i < units % dp else 0) for i in range(dp)]
    out = [[u * m for u in even]]
    rates = [min(speeds[d] for d in r) * len(r) for r in replicas]
    if len(set(rates)) > 1:
        raw = [units * s / sum(rates) for s in rates]
        share = [max(1, int(r)) for r in raw]
        while sum(share) < units:
            share[max(range(dp), key=lambda i: raw[i] - share[i])] += 1
        while sum(share) > units:
            share[max(range(dp), key=lambda i: share[i] - raw[i])] -= 1
        if min(share) >= 1 and share != even:
            out.append([u * m for u in share])
    return out


def _schedules(pp: int, m: int, n_blocks: int, pinned: str | None) -> Iterator[tuple[Schedule | None, int]]:
    """(schedule, virtual stages) torch can run for this pipeline; none for data parallel,
    which has no schedule to pin."""
    if pp == 1:
        if pinned is None:
            yield None, 1
        return
    options = [(Schedule.GPIPE, 1), (Schedule.ONE_F_ONE_B, 1)]
    if n_blocks >= 2 * pp:
        options.append((Schedule.INTERLEAVED_1F1B, 2))
    for sched, v in options:
        if pinned not in (None, sched):
            continue
        if schedule_error(sched, pp, m, v) is None:
            yield sched, v


# -- the GAN ------------------------------------------------------------------------------
def adversarial_candidates(
    cluster: Cluster, speeds: dict[int, float], blocks: list[str], batch: int, wanted: Strategy | None
) -> list[Candidate]:
    """Data parallel on the fastest device or on all, and each ordered pair of the four
    fastest devices for the generator and the discriminator (`mp`)."""
    out = []
    devices = sorted((d.id for d in cluster.devices), key=lambda i: (-speeds[i], i))
    if wanted in (None, Strategy.DP):
        for n in sorted({1, len(devices)}):
            if batch >= n:
                shares = [batch // n + (1 if i < batch % n else 0) for i in range(n)]
                out.append(Candidate.data_parallel(devices[:n], shares))
    if wanted in (None, Strategy.MP) and len(devices) >= 2:
        for pair in itertools.permutations(devices[:4], 2):
            out.append(Candidate.model_parallel(pair, batch, blocks))  # blocks: the networks in order
    return out
