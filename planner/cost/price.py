"""`price(graph, cluster, plan, profile=None)`: the one cost function.

The search ranks candidates with it, the dashboard draws what it returns, and the
calibration bench checks it against measured runs. It builds one step's tasks for the
plan's step (`step_for`: torch's pipeline schedules, `planner.cost.pipeline`, or a GAN's
own step, `planner.cost.gan`), simulates them rank by rank (`planner.cost.simulate`), and
adds up memory per device (`planner.cost.memory`).

Why simulate rather than use the closed form (sum of stages + (m - 1) x slowest): the
closed form is exact only for GPipe without communication; it over-estimates 1F1B with
uneven stages and ignores per-hop transfers (docs/facts.md; `planner.schedules.closed_form_step`).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import networkx as nx

from planner.capture.graph import graph_digest, model_blocks
from planner.cluster import Cluster
from planner.cost.collectives import ring_time
from planner.cost.gan import GanReplicaStep, GanStep
from planner.cost.memory import MemoryBreakdown, plan_memory
from planner.cost.pipeline import PipelineStep
from planner.cost.plan_pricing import PlanPricing
from planner.cost.simulate import COMPUTE_KINDS, Interval, TaskKind, simulate, timeline
from planner.cost.stages import GraphSizes
from planner.cost.step import Step
from planner.cost.tensor_parallel import block_share
from planner.cost.timing import CostOptions, block_times
from planner.devices import device_kind
from planner.errors import PlanError
from planner.plan import Plan, Predicted, Strategy
from planner.profile import Profile
from planner.topology import LinkCost


@dataclass
class Prediction:
    """What a plan is predicted to do in one optimizer step."""

    step_time_s: float
    samples_per_s: float
    bubble_fraction: float
    """1 - (compute busy time of all ranks) / (ranks x step time)."""
    timeline: list[Interval]
    link_bytes: dict[tuple[int, int], int]
    """Bytes sent per step from device a to device b."""
    memory: list[MemoryBreakdown]
    stage_times: dict[tuple[int, int], tuple[float, float]]
    """(rank, stage) -> (forward, backward) seconds per micro-batch."""
    sources: dict[str, str] = field(default_factory=dict)
    host_s: dict[int, float] = field(default_factory=dict)
    """Rank -> seconds of its forward and backward intervals that are host work, not compute:
    torch's schedule's or DDP's per action (`planner.profile.Profile.schedule_action_s`), and
    its step's own before its first action (its batch loaded, its gradients zeroed)."""
    comm_s: dict[int, float] = field(default_factory=dict)
    """Rank -> seconds of its forward and backward intervals spent waiting for a sharded
    group's gathers and reduce-scatters (`planner.cost.sharded`) or in its tensor group's
    collectives (`planner.cost.tensor_parallel`), not computing."""
    mfu: float = 0.0
    """Model FLOPs utilisation (`model_flops_utilisation`)."""

    @property
    def bytes_sent(self) -> int:
        return sum(self.link_bytes.values())

    @property
    def feasible(self) -> bool:
        return all(m.fits for m in self.memory)

    def peak_memory(self) -> dict[int, int]:
        return {m.device: m.total for m in self.memory}

    def to_predicted(self) -> Predicted:
        return Predicted(
            step_time_s=self.step_time_s,
            samples_per_s=self.samples_per_s,
            bubble_fraction=min(1.0, max(0.0, self.bubble_fraction)),
            bytes_sent_per_step=self.bytes_sent,
            peak_memory=[{"device": d, "bytes": b} for d, b in self.peak_memory().items()],
            sources=self.sources,
            mfu=self.mfu,
        )


class PricedLink(NamedTuple):
    """What a message pays between two devices, and whose figure it is."""

    latency_s: float
    bandwidth: float
    """Bytes/s."""
    source: str
    """"profile" (a measured fit for the link's kind) or "datasheet" (the cluster's path)."""

    @property
    def cost(self) -> LinkCost:
        return LinkCost(self.latency_s, self.bandwidth)


def price(
    graph: nx.DiGraph,
    cluster: Cluster,
    plan: Plan,
    profile: Profile | None = None,
    options: CostOptions | None = None,
) -> Prediction:
    """Predict step time, timeline, traffic and memory of ``plan`` on ``cluster``.

    Raises
    ------
    PlanError
        The plan was made for another graph, or the profile was measured for another one.
    """
    return Pricer(graph, cluster, profile, options)(plan)


def step_for(pricing: PlanPricing) -> Step:
    """The step the runtime runs for this plan: a GAN's own (runtime.parallel.gan), with
    each network on its own rank (mp) or both on every replica; else torch's pipeline
    schedule and DDP (a data-parallel plan is a pipeline of one stage)."""
    plan = pricing.plan
    if not plan.adversarial:
        return PipelineStep(pricing)
    if plan.strategy == Strategy.MP:
        return GanStep(pricing)
    return GanReplicaStep(pricing)


BlockTimes = dict[tuple[str, str, str, float, int, bool], tuple[float, float, str]]
_BLOCK_TIMES: OrderedDict[tuple[str, str, CostOptions], BlockTimes] = OrderedDict()
_BLOCK_TIMES_KEPT = 4


def _block_times_of(digest: str, profile_digest: str, options: CostOptions) -> BlockTimes:
    """The block times already priced for this graph, profile and options, whatever the
    cluster: sizing searches dozens of clusters of the same few device kinds, and the
    dashboard searches the same model again. The last few graphs' are kept."""
    key = (digest, profile_digest, options)
    if key in _BLOCK_TIMES:
        _BLOCK_TIMES.move_to_end(key)
    else:
        _BLOCK_TIMES[key] = {}
        while len(_BLOCK_TIMES) > _BLOCK_TIMES_KEPT:
            _BLOCK_TIMES.popitem(last=False)
    return _BLOCK_TIMES[key]


class Pricer:
    """`price` for many plans of one graph and cluster: what does not depend on the plan is
    computed once (the graph's digest and sizes, links, block times, cores per node)."""

    def __init__(
        self,
        graph: nx.DiGraph,
        cluster: Cluster,
        profile: Profile | None = None,
        options: CostOptions | None = None,
    ) -> None:
        self.graph, self.cluster, self.profile = graph, cluster, profile
        self.options = options or CostOptions()
        self.digest = graph_digest(graph)
        if profile is not None and profile.graph_digest != self.digest:
            raise PlanError(
                f"profile.graph_digest: measured for graph {profile.graph_digest[:12]}, not this one"
            )
        self.blocks = model_blocks(graph)
        self.sizes = GraphSizes.of(graph, self.blocks)
        self._tp_sizes: dict[tuple[int, bool], GraphSizes] = {(1, False): self.sizes}
        self.profile_digest = profile.digest() if profile is not None else ""
        self.cores = _cores(cluster)
        self.contention = _contention(cluster, profile)
        self._links: dict[tuple[int, int, str], PricedLink] = {}
        self._rings: dict[tuple[tuple[int, ...], str], tuple[Callable[[float], float], frozenset]] = {}
        self._blocks = _block_times_of(self.digest, self.profile_digest, self.options)

    def __call__(self, plan: Plan, *, with_timeline: bool = True) -> Prediction:
        """Price ``plan``; without the timeline (an empty list) when only the figures matter,
        as in the partitioner's inner loop."""
        pricing, step = self._step(plan)
        tasks, programs, actions = step.tasks()
        node_of = {r.rank: r.node for r in plan.ranks}
        # A simulated tensor-parallel rank's compute stands for its group's, on shared cores.
        times, step_s = simulate(tasks, programs, node_of, self.cores, self.contention, plan.tp_degree)
        pricing.tensor_groups.count_bytes()
        # Busy compute time of every rank: the simulated ones count for their copies too.
        copies = Counter(pricing.stands_for.values())  # simulated replica -> replicas it stands for
        busy = plan.tp_degree * sum(
            copies[plan.ranks[t.rank].dp_index] * (times[t.id][1] - times[t.id][0])
            for t in tasks
            if t.kind in COMPUTE_KINDS
        )
        intervals = []
        if with_timeline:
            intervals = _with_mirrors(
                pricing, _with_collectives(pricing, tasks, times, timeline(tasks, times, step_s))
            )
        host: dict[int, float] = {}  # the host work inside each rank's forwards and backwards
        for rank, per_action in pricing.host_per_action.items():
            actions_run = sum(1 for tid in programs[rank] if tasks[tid].kind != TaskKind.OPTIMIZER)
            host[rank] = per_action * actions_run
        for rank, before in pricing.host_per_step.items():
            host[rank] = host.get(rank, 0.0) + before
        return Prediction(
            step_time_s=step_s,
            samples_per_s=plan.training.global_batch / step_s if step_s > 0 else math.inf,
            bubble_fraction=1 - busy / (len(plan.ranks) * step_s) if step_s > 0 else 0.0,
            timeline=intervals,
            link_bytes={k: round(v) for k, v in pricing.link_bytes.items()},
            memory=plan_memory(pricing, step, actions),
            stage_times=pricing.stage_time_table,
            sources=pricing.sources(),
            host_s={r.rank: host.get(pricing.mirror_rank(r.rank), 0.0) for r in plan.ranks},
            comm_s={
                r.rank: pricing.comm_in_compute.get(pricing.mirror_rank(r.rank), 0.0) for r in plan.ranks
            },
            mfu=model_flops_utilisation(pricing, step_s),
        )

    def fits(self, plan: Plan) -> bool:
        """Whether every device holds its part of ``plan``: its memory as `__call__` prices
        it, without simulating the step where the step's schedule says what each rank holds
        (the search asks this of each lever before it prices the step)."""
        pricing, step = self._step(plan)
        actions = step.actions()
        if actions is None:
            return self(plan, with_timeline=False).feasible
        return all(m.fits for m in plan_memory(pricing, step, actions))

    def _step(self, plan: Plan) -> tuple[PlanPricing, Step]:
        """``plan``'s pricing state and step; a plan made for another graph is refused."""
        if plan.model.graph_digest != self.digest:
            theirs = plan.model.graph_digest[:12]
            raise PlanError(f"model.graph_digest: this plan is for graph {theirs}, not {self.digest[:12]}")
        pricing = PlanPricing(self, plan)
        return pricing, step_for(pricing)

    def sizes_for(self, tp: int, sp: bool) -> GraphSizes:
        """The graph's sizes on one rank of a tensor group of ``tp`` (`GraphSizes.of`)."""
        key = (tp, sp and tp > 1)
        if key not in self._tp_sizes:
            self._tp_sizes[key] = GraphSizes.of(self.graph, self.blocks, tp, sp)
        return self._tp_sizes[key]

    def block_times(
        self,
        block: str,
        kind_id: str,
        dtype: str,
        samples: float,
        scale: float,
        trace_batch: int,
        tp: int = 1,
        sp: bool = False,
    ) -> tuple[float, float, str]:
        """(forward, backward, source) of one block on one rank of a tensor group of ``tp``
        (`planner.cost.tensor_parallel.block_share`): cached, since the search asks often."""
        data = self.graph.nodes[block]
        if "tp" not in data:
            tp = 1
        key = (block, kind_id, dtype, samples, tp, sp and tp > 1)
        if key not in self._blocks:
            kind = device_kind(kind_id)
            if tp > 1:  # the whole block's time, times the share of it one rank computes
                f, b, source = self.block_times(block, kind_id, dtype, samples, scale, trace_batch)
                share = block_share(data, tp, sp, kind, dtype, samples / trace_batch, scale, self.options)
                self._blocks[key] = (f * share, b * share, source)
            else:
                ops = data.get("ops", [])
                self._blocks[key] = block_times(
                    block, ops, kind, dtype, samples, trace_batch, scale, self.options, self.profile
                )
        return self._blocks[key]

    def ring(self, devices: tuple[int, ...], op: str) -> tuple[Callable[[float], float], frozenset]:
        """`planner.cost.collectives.ring_time` of ``op`` over ``devices``: cached."""
        key = (devices, op)
        if key not in self._rings:
            self._rings[key] = ring_time(self, devices, op)
        return self._rings[key]

    def link(self, a: int, b: int, op: str) -> PricedLink:
        """Between devices a and b: a profile's fit for the link's kind, else the catalog's path."""
        key = (a, b, op)
        if key not in self._links:
            kind = self._link_kind(a, b)
            measured = self.profile.link(kind, op) if self.profile is not None and kind else None
            if measured is not None:
                self._links[key] = PricedLink(*measured, "profile")
            else:
                self._links[key] = PricedLink(*self.cluster.path(a, b), "datasheet")
        return self._links[key]

    def _link_kind(self, a: int, b: int) -> str | None:
        """Kind of the direct link between a and b (explicit or its group's), if there is one."""
        direct = self.cluster.direct_link(a, b)
        return direct.kind if direct is not None else None

    def measured_all_reduce(self, hops: list[tuple[int, int]], ranks: int) -> LinkCost | None:
        """A profile's fit for an all-reduce of ``ranks`` over one link kind."""
        return self.measured_collective("all_reduce", hops, ranks)

    def measured_collective(self, op: str, hops: list[tuple[int, int]], ranks: int) -> LinkCost | None:
        """A profile's fit for one ``op`` of ``ranks`` over one link kind (`Profile.collective`)."""
        if self.profile is None:
            return None
        kinds = {self._link_kind(a, b) for a, b in hops}
        if len(kinds) != 1 or None in kinds:
            return None
        return self.profile.collective(op, kinds.pop(), ranks)


def _with_collectives(pricing: PlanPricing, tasks, times, intervals: list[Interval]) -> list[Interval]:
    """The intervals, and the collectives inside each forward and backward: the sharded
    group's gathers and reduce-scatters, the tensor group's all-reduces (drawn for a plan
    that is not sharded: a sharded pass interleaves them with its gathers)."""
    spans_of = [(tid, pricing.sharded_spans[key]) for tid, key in pricing.sharded_task.items()]
    spans_of += [
        (tid, pricing.tp_spans[(rank, stage)][0 if forward else 1])
        for tid, (rank, stage, forward) in pricing.tp_task.items()
    ]
    for tid, spans in spans_of:
        start, task = times[tid][0], tasks[tid]
        intervals += [
            Interval(task.rank, start + a, start + b, kind, task.stage, task.micro_batch)
            for kind, a, b in spans
            if b > a
        ]
    return sorted(intervals, key=lambda i: (i.rank, i.start, i.kind))


def model_flops_utilisation(pricing: PlanPricing, step_s: float) -> float:
    """The model's training FLOPs per second over the plan's devices' dense peak for its
    compute dtype: 3 x the traced forward FLOPs per sample x the global batch per step
    (forward, and backward's two products per forward one; recomputation does not count:
    MFU, not hardware FLOPs utilisation, Chowdhery et al. 2022). 0 when a device kind has
    no peak for the dtype or the step takes no time."""
    graph, plan = pricing.graph, pricing.plan
    flops = 3 * sum(d.get("fwd_flops", 0) for _, d in graph.nodes(data=True)) / pricing.trace_batch
    peaks = [
        device_kind(pricing.cluster.device(r.device).kind).peak_flops.get(pricing.dtype) for r in plan.ranks
    ]
    if step_s <= 0 or not all(peaks):
        return 0.0
    return flops * plan.training.global_batch / step_s / sum(peaks)


def _with_mirrors(pricing: PlanPricing, intervals: list[Interval]) -> list[Interval]:
    """The simulated ranks' intervals, and a copy of them for each rank that is not simulated
    (a mirrored replica's, another tensor index's)."""
    plan = pricing.plan
    source = {r.rank: pricing.mirror_rank(r.rank) for r in plan.ranks if not pricing.is_simulated(r.rank)}
    if not source:
        return intervals
    by_rank: dict[int, list[Interval]] = defaultdict(list)
    for i in intervals:
        by_rank[i.rank].append(i)
    for rank, src in source.items():
        intervals += [replace(i, rank=rank) for i in by_rank[src]]
    intervals.sort(key=lambda i: (i.rank, i.start, i.kind))
    return intervals


def _cores(cluster: Cluster) -> dict[int, float]:
    """Cores per node for CPU ranks (their compute shares add up); GPUs never share."""
    cores: dict[int, float] = defaultdict(float)
    for d in cluster.devices:
        cores[d.node] = math.inf if d.kind != "cpu" else cores[d.node] + d.compute_share
    return dict(cores)


def _contention(cluster: Cluster, profile: Profile | None) -> dict[int, float]:
    """Measured slowdown of CPU ranks sharing a node while all compute (0 unmeasured)."""
    if profile is None:
        return {}
    return {
        d.node: profile.contention[d.kind]
        for d in cluster.devices
        if d.kind == "cpu" and d.kind in profile.contention
    }
