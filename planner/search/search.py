"""Search the plans: data, pipeline and hybrid parallel, ranked by `price()`.

Enumerated: the devices to use (all, each kind alone, the fastest one), dp x pp over them,
both mesh orders (a pipeline's ranks on neighbouring devices, so stage-to-stage traffic
stays on the fast links inside a node; or a replica group's), every order of device kinds
along a pipeline, micro-batch counts, schedules (GPipe, 1F1B, interleaved with v = 2), and
for replicas of different speeds, batch shares in proportion to speed (pipelines up to
MAX_PP deep). Each candidate is screened with a quick estimate; the best-screened variant
of the most promising families is split into stages (`planner.search.stage_problem`: proven
optimal by branch and bound while small and within the time budget, else the split that
balances work) and priced. Pure data parallel, pure pipeline parallel and one device alone
are always priced and listed, with the reason when they do not fit. The GAN (a model of
named sub-networks) is planned as data parallel or as `mp`, its networks on their own
devices.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from planner.cluster import Cluster
from planner.cost.price import Prediction, Pricer
from planner.cost.timing import DTYPE_BYTES, CostOptions
from planner.devices import device_kind
from planner.errors import PlannerError
from planner.plan import Plan
from planner.profile import Profile
from planner.schedules import schedule_error
from planner.search.build import make_plan, model_blocks
from planner.search.gc_threshold import fewer_collections
from planner.search.partition import min_bottleneck_cuts
from planner.search.stage_problem import StageProblem

STRATEGIES = ("auto", "dp", "pp", "hybrid", "mp")
MAX_UNITS = 512  # past this many blocks, cut only between groups of consecutive blocks
MAX_PP = 64  # deeper pipelines are not enumerated: their bubble and simulation cost grow with depth
EXACT_LIMIT = 4096  # blocks x stages up to which the split is proven optimal by branch and bound


@dataclass
class Candidate:
    strategy: str
    dp_degree: int
    pp_degree: int
    micro_batches: int
    schedule: str | None
    virtual_stages: int
    devices: list[int]
    coords: list[tuple[int, int]]
    shares: list[int]
    mesh: str = ""
    estimate: float = math.inf
    plan: Plan | None = None
    prediction: Prediction | None = None
    exact: bool = False
    reason: str = ""
    names: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.prediction is not None and self.prediction.feasible and not self.reason

    @property
    def label(self) -> str:
        sched = self.schedule or "-"
        if self.virtual_stages > 1:
            sched += f" v{self.virtual_stages}"
        text = (
            f"{self.strategy} dp{self.dp_degree}xpp{self.pp_degree} m{self.micro_batches} {sched} {self.mesh}"
        )
        return text.strip()

    def row(self) -> dict[str, Any]:
        p = self.prediction
        return {
            "strategy": self.strategy,
            "dp": self.dp_degree,
            "pp": self.pp_degree,
            "m": self.micro_batches,
            "schedule": (self.schedule or "-")
            + (f" v{self.virtual_stages}" if self.virtual_stages > 1 else ""),
            "mesh": self.mesh,
            "step_s": p.step_time_s if p else None,
            "samples_s": p.samples_per_s if p else None,
            "peak_mem": max((m.total for m in p.memory), default=0) if p else None,
            "bytes_sent": p.bytes_sent if p else None,
            "bubble": p.bubble_fraction if p else None,
            "exact": self.exact,
            "feasible": self.feasible,
            "reason": self.reason,
        }


@dataclass
class SearchResult:
    candidates: list[Candidate]
    """Priced candidates: feasible ones fastest first, then the infeasible with reasons."""
    screened: int
    """How many candidate layouts were screened before pricing."""
    units: int
    """Nodes actually partitioned (blocks, or groups of blocks for very long graphs)."""

    @property
    def best(self) -> Candidate | None:
        return next((c for c in self.candidates if c.feasible), None)


@fewer_collections
def search(
    graph: nx.DiGraph,
    cluster: Cluster,
    *,
    global_batch: int,
    strategy: str = "auto",
    schedule: str | None = None,
    micro_batches: int | None = None,
    training: dict[str, Any] | None = None,
    profile: Profile | None = None,
    options: CostOptions | None = None,
    max_priced: int = 8,
    max_evaluations: int = 32,
    max_nodes: int = 20000,
    exact_budget_s: float = 2.0,
) -> SearchResult:
    """Find the fastest plan that fits; return it with the alternatives that were priced.

    Splits are proven optimal (branch and bound on `price()`) while the search has spent
    less than ``exact_budget_s``; after that, and for problems past ``EXACT_LIMIT``, the
    split that balances work is priced once and the row says it is not proven.
    """
    started = time.perf_counter()
    if strategy not in STRATEGIES:
        raise PlannerError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if global_batch < 1:
        raise PlannerError(f"global batch must be >= 1, got {global_batch}")
    pricer = Pricer(graph, cluster, profile, options)
    blocks = model_blocks(graph)
    gan = {"generator", "discriminator"} <= set(blocks)
    training = dict(training or {})
    speeds = device_speeds(cluster, profile, blocks, training.get("dtype", "float32"))
    if gan:
        candidates = _gan_candidates(cluster, speeds, blocks, global_batch, strategy)
    else:
        if strategy == "mp":
            raise PlannerError(
                "mp places named sub-networks (a GAN's generator and discriminator); "
                "this model has none: use pp"
            )
        candidates = list(
            _layouts(cluster, speeds, len(blocks), global_batch, strategy, schedule, micro_batches)
        )
    if not candidates:
        raise PlannerError(_nothing_to_try(strategy, schedule, micro_batches, global_batch, len(blocks)))
    units = _units(graph, blocks)
    screen = _Screen(pricer, graph, blocks, training)
    for c in candidates:
        c.estimate = screen(cluster, c)
    candidates.sort(key=lambda c: c.estimate)
    chosen = _best_per_family(candidates)[:max_priced]  # the best-screened variant of each
    # Always compare against pure data parallel, pure pipeline parallel and one device alone.
    for must in (
        lambda c: c.strategy == "dp" and len(c.devices) > 1,
        lambda c: c.strategy == "pp",
        lambda c: len(c.devices) == 1,
    ):
        pure = next((c for c in candidates if must(c)), None)
        if pure is not None and pure not in chosen:
            chosen.append(pure)
    for c in chosen:
        prove = time.perf_counter() - started < exact_budget_s
        _partition_and_price(pricer, graph, cluster, c, training, units, max_evaluations, max_nodes, prove)
    # When memory rules out every candidate priced so far, keep going down the screened list.
    rest = [c for c in _best_per_family(candidates) if c not in chosen]
    while rest and not any(c.feasible for c in chosen) and len(chosen) < 4 * max_priced:
        c = rest.pop(0)
        _partition_and_price(pricer, graph, cluster, c, training, units, max_evaluations, max_nodes, False)
        chosen.append(c)
    chosen.sort(key=lambda c: (not c.feasible, c.prediction.step_time_s if c.prediction else math.inf))
    return SearchResult(_best_per_family(chosen), len(candidates), len(units) if units else len(blocks))


def _best_per_family(ranked: list[Candidate]) -> list[Candidate]:
    """One row per (strategy, devices used, dp, pp, schedule): the best of its variants."""
    seen, out = set(), []
    for c in ranked:
        family = (c.strategy, len(c.devices), c.dp_degree, c.pp_degree, c.schedule, c.virtual_stages)
        if family not in seen:
            seen.add(family)
            out.append(c)
    return out


# -- enumeration ---------------------------------------------------------------------------
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
    if profile is not None:
        for kind in kinds:
            times = [profile.block_time(b, kind, 1) for b in blocks]
            if all(t is not None for t in times) and sum(f + b for f, b in times) > 0:
                measured[kind] = 1.0 / sum(f + b for f, b in times)
    if measured.keys() != kinds:  # never mix measured and datasheet scales
        measured = {k: device_kind(k).peak_flops.get(dtype, 0.0) for k in kinds}
    return {d.id: measured[d.kind] * d.compute_share for d in cluster.devices}


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


def _orders(cluster: Cluster, devices: list[int]) -> list[tuple[str, list[int]]]:
    """Devices in placement order: by node, then by each order of kinds (at most 6 tried)."""
    kinds = sorted({cluster.device(d).kind for d in devices})
    out = []
    for perm in itertools.islice(itertools.permutations(kinds), 6):
        key = {k: i for i, k in enumerate(perm)}
        ordered = sorted(devices, key=lambda d: (cluster.device(d).node, key[cluster.device(d).kind], d))
        out.append(("" if len(kinds) == 1 else ">".join(perm), ordered))
    return out


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


def _layouts(cluster, speeds, n_blocks, batch, strategy, schedule, pinned_m):
    seen = set()
    # On one node with one kind of link every mesh order is the same plan.
    uniform = len(cluster.nodes()) == 1 and len(cluster.link_kinds()) <= 1
    for device_set in _device_sets(cluster, speeds):
        total = len(device_set)
        shapes = [(total // pp, pp) for pp in range(1, min(total, n_blocks, MAX_PP) + 1) if total % pp == 0]
        if total > MAX_PP and n_blocks >= MAX_PP:
            shapes.append((1, MAX_PP))  # the pure pipeline, as deep as it goes, on the first devices
        for dp, pp in shapes:
            n = dp * pp
            devices = device_set[:n]
            kind = "dp" if pp == 1 else ("pp" if dp == 1 else "hybrid")
            if strategy not in ("auto", kind):
                continue
            meshes = (
                ["pipelines in nodes", "replicas in nodes"]
                if dp > 1 and pp > 1 and uniform is False
                else [""]
            )
            for kinds, ordered in _orders(cluster, devices):
                for mesh in meshes:
                    coords = [
                        (r // pp, r % pp) if mesh != "replicas in nodes" else (r % dp, r // dp)
                        for r in range(n)
                    ]
                    replicas: list[list[int]] = [[] for _ in range(dp)]  # one pass: n is up to 10^5
                    for r in range(n):
                        replicas[coords[r][0]].append(ordered[r])
                    for m in _micro_batch_counts(pp, batch // dp, pinned_m):
                        for shares in _shares(speeds, replicas, batch, m):
                            for sched, v in _schedules(pp, m, n_blocks, schedule):
                                key = (tuple(ordered), tuple(coords), m, sched, v, tuple(shares))
                                if key in seen:
                                    continue
                                seen.add(key)
                                label = ", ".join(x for x in (mesh, kinds) if x)
                                yield Candidate(
                                    kind, dp, pp, m, sched, v, list(ordered), coords, shares, label
                                )


def _schedules(pp: int, m: int, n_blocks: int, pinned: str | None):
    if pp == 1:
        if pinned is None:
            yield None, 1
        return
    options = [("gpipe", 1), ("1f1b", 1)]
    if n_blocks >= 2 * pp:
        options.append(("interleaved_1f1b", 2))
    for sched, v in options:
        if pinned not in (None, sched):
            continue
        if schedule_error(sched, pp, m, v) is None:
            yield sched, v


def _gan_candidates(
    cluster: Cluster, speeds: dict[int, float], blocks: list[str], batch: int, strategy: str
) -> list[Candidate]:
    out = []
    devices = sorted((d.id for d in cluster.devices), key=lambda i: (-speeds[i], i))
    if strategy in ("auto", "dp"):
        for n in sorted({1, len(devices)}):
            if batch >= n:
                shares = [batch // n + (1 if i < batch % n else 0) for i in range(n)]
                out.append(Candidate("dp", n, 1, 1, None, 1, devices[:n], [(i, 0) for i in range(n)], shares))
    if strategy in ("auto", "mp") and len(devices) >= 2:
        names = blocks  # generator, discriminator (in execution order)
        for a, b in itertools.permutations(devices[:4], 2):
            out.append(Candidate("mp", 1, 2, 1, None, 1, [a, b], [(0, 0), (0, 1)], [batch], names=names))
    return out


def _nothing_to_try(strategy, schedule, m, batch, n_blocks) -> str:
    return (
        f"no {strategy} plan with schedule={schedule or 'any'}, micro-batches={m or 'any'} fits the "
        f"constraints: global batch {batch} must split into replicas and micro-batches, "
        f"and the model has {n_blocks} blocks"
    )


# -- screening, partitioning, pricing ------------------------------------------------------
def _template(graph, cluster, c: Candidate, training, digest: str) -> Plan:
    unused = {d.id for d in cluster.devices} - set(c.devices)
    return make_plan(
        graph,
        cluster,
        strategy=c.strategy,
        global_batch=sum(c.shares),
        dp_degree=c.dp_degree,
        pp_degree=c.pp_degree,
        schedule=c.schedule,
        micro_batches=c.micro_batches,
        virtual_stages=c.virtual_stages,
        devices=c.devices,
        coords=c.coords,
        shares=c.shares,
        stage_names=c.names or None,
        training=training,
        unused_reason="not used by this plan" if unused else "",
        digest=digest,
    )


def _units(graph: nx.DiGraph, blocks: list[str]) -> list[int] | None:
    """For very long graphs, group consecutive blocks into MAX_UNITS units of similar FLOPs."""
    if len(blocks) <= MAX_UNITS:
        return None
    flops = [max(1, graph.nodes[b]["fwd_flops"]) for b in blocks]
    total = sum(flops)
    starts, acc = [0], 0.0
    for i, f in enumerate(flops[:-1]):
        acc += f
        if acc >= total * len(starts) / MAX_UNITS and len(starts) < MAX_UNITS:
            starts.append(i + 1)
    return starts


class _Screen:
    """Quick step-time estimates for screening candidates, from cached per-kind totals."""

    def __init__(self, pricer: Pricer, graph: nx.DiGraph, blocks: list[str], training: dict[str, Any]):
        self.pricer, self.blocks = pricer, blocks
        self.dtype = training.get("dtype", "float32")
        self.scale = DTYPE_BYTES[self.dtype] / DTYPE_BYTES[graph.graph.get("dtype", "float32")]
        self.trace_batch = int(graph.graph.get("batch_size", 1))
        self.grad_bytes = sum(graph.nodes[b]["param_bytes"] for b in blocks) * self.scale
        self._totals: dict[tuple[str, float], tuple[float, float]] = {}
        self._links: dict[tuple[int, ...], float] = {}

    def slowest_link(self, cluster: Cluster, devices: tuple[int, ...]) -> float:
        """Least bandwidth between neighbours in this device order (many candidates share one)."""
        if devices not in self._links:
            self._links[devices] = min(cluster.path(a, b).bandwidth for a, b in itertools.pairwise(devices))
        return self._links[devices]

    def totals(self, kind: str, mb: float) -> tuple[float, float]:
        """(whole model, largest block) forward + backward seconds per micro-batch on ``kind``."""
        key = (kind, mb)
        if key not in self._totals:
            times = [
                sum(self.pricer.block_times(b, kind, self.dtype, mb, self.scale, self.trace_batch)[:2])
                for b in self.blocks
            ]
            self._totals[key] = (sum(times), max(times))
        return self._totals[key]

    def __call__(self, cluster: Cluster, c: Candidate) -> float:
        """The pipeline closed form on a split balanced by device speed, plus streaming the
        gradients once over the slowest link between neighbouring devices."""
        if c.strategy == "mp":
            return 0.0  # few enough to price them all
        worst = 0.0
        kinds_of: list[list[str]] = [[] for _ in range(c.dp_degree)]  # one pass, not one per replica
        for r, device in enumerate(c.devices):
            kinds_of[c.coords[r][0]].append(cluster.device(device).kind)
        for dp in range(c.dp_degree):
            mb = c.shares[dp] / c.micro_batches
            totals = [self.totals(k, mb) for k in kinds_of[dp]]
            balanced = 1 / sum(1 / t for t, _ in totals)  # work split in proportion to speed
            stage = max(balanced, max(b for _, b in totals))  # a block is never split
            fill = (c.pp_degree - 1) / c.virtual_stages
            worst = max(worst, (c.micro_batches + fill) * stage)
        if c.dp_degree > 1:
            worst += 2 * self.grad_bytes / c.pp_degree / self.slowest_link(cluster, tuple(c.devices))
        return worst


def _partition_and_price(
    pricer, graph, cluster, c: Candidate, training, units, max_evaluations, max_nodes, prove=True
) -> None:
    try:
        template = _template(graph, cluster, c, training, pricer.digest)
    except PlannerError as exc:
        c.reason = str(exc)
        return
    if c.strategy == "mp" or c.pp_degree * c.virtual_stages == 1:
        c.plan, c.prediction, c.exact = template, pricer(template, with_timeline=False), True
    else:
        problem = StageProblem(pricer, template, units)
        if prove and len(problem.work[0]) * problem.k <= EXACT_LIMIT:
            result = problem.solve(max_evaluations=max_evaluations, max_nodes=max_nodes)
            c.exact = result.exact and units is None
            cuts = result.cuts
        else:  # too large to prove: the split that balances work, priced once
            cuts = None
        cuts = cuts if cuts is not None else min_bottleneck_cuts(problem.work)
        c.plan = problem.plan(cuts)
        c.prediction = pricer(c.plan, with_timeline=False)
    if not c.prediction.feasible:
        c.reason = _over_memory(c.plan, c.prediction, cluster)
    else:
        c.plan = c.plan.model_copy(update={"predicted": c.prediction.to_predicted()})


def _over_memory(plan: Plan, pred: Prediction, cluster: Cluster) -> str:
    worst = max(pred.memory, key=lambda m: m.over_bytes)
    stages = [s.index for s in plan.stages if s.pp_rank == plan.ranks[worst.rank].pp_index]
    kind = cluster.device(worst.device).kind
    where = f"stage {stages[0]}" if len(stages) == 1 else f"stages {', '.join(map(str, stages))}"
    return (
        f"{where} on device {worst.device} ({kind}) needs {_gib(worst.total)}, "
        f"{_gib(worst.over_bytes)} over its {_gib(worst.capacity)}"
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.1f} MiB"
