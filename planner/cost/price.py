"""`price(graph, cluster, plan, profile=None)`: the one cost function.

The search ranks candidates with it, the dashboard draws what it returns, and the
calibration bench checks it against measured runs. It builds one step's tasks for the
plan's strategy and schedule (forward and backward of every stage and micro-batch in
torch's order, a send for every stage boundary each micro-batch crosses, the tied-weight
and data-parallel all-reduces, the optimizer), simulates them rank by rank
(`planner.cost.simulate`), and adds up memory per device (`planner.cost.memory`).

Why simulate rather than use the closed form (sum of stages + (m - 1) x slowest): the
closed form is exact only for GPipe without communication; it over-estimates 1F1B with
uneven stages and ignores per-hop transfers (FACTS.md; `planner.schedules.closed_form_step`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import networkx as nx

from planner.capture.graph import graph_digest
from planner.cluster import Cluster
from planner.cost.memory import MemoryBreakdown, optimizer_state_bytes, optimizer_temporaries, rank_memory
from planner.cost.simulate import COMPUTE_KINDS, Interval, Task, simulate, timeline
from planner.cost.timing import (
    DTYPE_BYTES,
    CostOptions,
    block_times,
    optimizer_time,
    ring_all_reduce_time,
    transfer_time,
)
from planner.devices import device_kind
from planner.errors import PlanError
from planner.plan import Plan, Predicted
from planner.profile import Profile
from planner.schedules import Action, held_peak, in_flight, rank_actions

LOSS_COPIES = 2
"""Copies of the last stage's output held per micro-batch until its backward: the output
itself (the pipeline schedule keeps it for the loss) and the log-probabilities of the same
size that cross-entropy saves. For a 16384-way LM head they are the largest activations."""


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
        )


@dataclass
class _StageCost:
    blocks: list[str]
    param_bytes: int  # training dtype, tied copies included
    param_count: int
    saved_per_sample: float  # own saved bytes + tensors also kept by earlier stages
    out_per_sample: float  # the last block's output (what the loss keeps on the last stage)
    largest_param_bytes: int = 0  # the largest single parameter (the size of its temporaries)
    largest_op_per_sample: float = 0.0  # the most activation bytes one op reads and writes


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


class Pricer:
    """`price` for many plans of one graph and cluster: what does not depend on the plan is
    computed once (the graph's digest, parameter owners, links, block times)."""

    def __init__(
        self,
        graph: nx.DiGraph,
        cluster: Cluster,
        profile: Profile | None = None,
        options: CostOptions | None = None,
    ) -> None:
        self.graph, self.cluster, self.profile = graph, cluster, profile
        self.opts = options or CostOptions()
        self.digest = graph_digest(graph)
        if profile is not None and profile.graph_digest != self.digest:
            raise PlanError(
                f"profile.graph_digest: measured for graph {profile.graph_digest[:12]}, not this one"
            )
        self.owners = {p: b for b in graph.nodes for p in graph.nodes[b].get("params", [])}
        sizes = graph.graph.get("param_bytes", {})
        # Per block, priced once and not per plan: its largest parameter, and the model's.
        self.largest_param = {
            b: max((sizes.get(p, 0) for p in data.get("params", [])), default=0)
            for b, data in graph.nodes(data=True)
        }
        # The most activation bytes one op of each block reads and writes (see planner.cost.memory).
        self.largest_op = {
            b: max((op[1] for op in data.get("ops", [])), default=0) for b, data in graph.nodes(data=True)
        }
        self.model_param_bytes = sum(sizes.values())
        self.profile_digest = profile.digest() if profile is not None else ""
        self._links: dict[tuple[int, int, str], tuple[float, float, str]] = {}
        self._blocks: dict[tuple[str, str, str, float], tuple[float, float, str]] = {}

    def __call__(self, plan: Plan, *, with_timeline: bool = True) -> Prediction:
        """Price ``plan``; without the timeline (an empty list) when only the figures matter,
        as in the partitioner's inner loop."""
        if plan.model.graph_digest != self.digest:
            theirs = plan.model.graph_digest[:12]
            raise PlanError(f"model.graph_digest: this plan is for graph {theirs}, not {self.digest[:12]}")
        ctx = _Context(self, plan)
        gan = plan.strategy == "mp" and {s.name for s in plan.stages} == {"generator", "discriminator"}
        tasks, programs, actions = ctx.gan_tasks() if gan else ctx.pipeline_tasks()
        node_of = {r.rank: r.node for r in plan.ranks}
        times, step = simulate(tasks, programs, node_of, ctx.cores(), ctx.contention())
        # Busy compute time of every rank: the simulated ones count for their mirrors too.
        copies = plan.dp_degree / len(ctx.simulated)
        busy = copies * sum(times[t.id][1] - times[t.id][0] for t in tasks if t.kind in COMPUTE_KINDS)
        intervals = timeline(tasks, times, step) if with_timeline else []
        if with_timeline and len(ctx.simulated) < plan.dp_degree:  # copy the simulated replica's
            source = {r.rank: ctx.mirror_rank(r.rank) for r in plan.ranks if r.dp_index not in ctx.simulated}
            by_rank: dict[int, list[Interval]] = defaultdict(list)
            for i in intervals:
                by_rank[i.rank].append(i)
            for rank, src in source.items():
                intervals += [replace(i, rank=rank) for i in by_rank[src]]
            intervals.sort(key=lambda i: (i.rank, i.start, i.kind))
        return Prediction(
            step_time_s=step,
            samples_per_s=plan.training.global_batch / step if step > 0 else math.inf,
            bubble_fraction=1 - busy / (len(plan.ranks) * step) if step > 0 else 0.0,
            timeline=intervals,
            link_bytes={k: round(v) for k, v in ctx.link_bytes.items()},
            memory=ctx.memory(actions, gan),
            stage_times=ctx.stage_time_table,
            sources=ctx.sources(),
        )

    def block_times(
        self, block: str, kind_id: str, dtype: str, samples: float, scale: float, trace_batch: int
    ):
        """(forward, backward, source) of one block: cached, since the search asks often."""
        key = (block, kind_id, dtype, samples)
        if key not in self._blocks:
            self._blocks[key] = block_times(
                block,
                self.graph.nodes[block].get("ops", []),
                device_kind(kind_id),
                dtype,
                samples,
                trace_batch,
                scale,
                self.opts,
                self.profile,
            )
        return self._blocks[key]

    def link(self, a: int, b: int, op: str) -> tuple[float, float, str]:
        """(latency, bandwidth, source) between devices a and b: a profile's fit, else the catalog's."""
        key = (a, b, op)
        if key not in self._links:
            kind = self._link_kind(a, b)
            measured = self.profile.link(kind, op) if self.profile is not None and kind else None
            if measured:
                self._links[key] = (*measured, "profile")
            else:
                self._links[key] = (*self.cluster.path(a, b), "datasheet")
        return self._links[key]

    def _link_kind(self, a: int, b: int) -> str | None:
        """Kind of the direct link between a and b (explicit or its group's), if there is one."""
        direct = self.cluster.direct_link(a, b)
        return direct.kind if direct is not None else None

    def measured_all_reduce(self, hops: list[tuple[int, int]], ranks: int) -> tuple[float, float] | None:
        """A profile's (latency, bandwidth) fit for an all-reduce of ``ranks`` over one link kind."""
        if self.profile is None:
            return None
        kinds = {self._link_kind(a, b) for a, b in hops}
        if len(kinds) != 1 or None in kinds:
            return None
        return self.profile.all_reduce(kinds.pop(), ranks)


class _Context:
    """Everything about pricing one plan."""

    def __init__(self, pricer: Pricer, plan: Plan):
        self.pricer, self.plan = pricer, plan
        self.graph, self.cluster, self.profile, self.opts = (
            pricer.graph,
            pricer.cluster,
            pricer.profile,
            pricer.opts,
        )
        self.dtype = plan.training.dtype
        traced = self.graph.graph.get("dtype", "float32")
        self.scale = DTYPE_BYTES[self.dtype] / DTYPE_BYTES[traced]
        self.trace_batch = int(self.graph.graph.get("batch_size", 1))
        self.elsize = DTYPE_BYTES[traced]
        self.m = plan.training.micro_batches
        self.p = plan.pp_degree
        self.share = {r.dp_index: r.batch_share for r in plan.replicas}
        self.used_sources: dict[str, set[str]] = defaultdict(set)
        self.link_bytes: dict[tuple[int, int], float] = defaultdict(float)
        self.stage_time_table: dict[tuple[int, int], tuple[float, float]] = {}
        stage_blocks = plan.stage_blocks()
        self.stage_of = {b: i for i, blocks in enumerate(stage_blocks) for b in blocks}
        self.stages = [self._stage_cost(blocks) for blocks in stage_blocks]
        # The GAN runs its own step (runtime.parallel.gan), never torch's pipeline schedule.
        self.gan = {"generator", "discriminator"} <= set(self.stage_of)
        self.fwd_cross, self.bwd_cross = self._boundary_bytes()
        self.simulated = self._replicas_to_simulate()

    # -- static costs ---------------------------------------------------------------------
    def _stage_cost(self, blocks: list[str]) -> _StageCost:
        g, members, owners = self.graph, set(blocks), self.pricer.owners
        # A tied weight used here but owned by a block of another stage is a copy here.
        copies = {
            p for b in blocks for p in g.nodes[b].get("shared_params", []) if owners.get(p) not in members
        }
        sizes = g.graph.get("param_bytes", {})
        param_bytes = sum(g.nodes[b]["param_bytes"] for b in blocks) + sum(sizes.get(p, 0) for p in copies)
        largest = max([self.pricer.largest_param[b] for b in blocks] + [sizes.get(p, 0) for p in copies])
        saved = sum(g.nodes[b]["saved_bytes"] for b in blocks)
        saved += sum(
            n for b in blocks for src, n in g.nodes[b].get("resaved_from", {}).items() if src not in members
        )
        return _StageCost(
            blocks=blocks,
            param_bytes=round(param_bytes * self.scale),
            param_count=round(param_bytes / self.elsize),
            saved_per_sample=saved / self.trace_batch * self.scale,
            out_per_sample=g.nodes[blocks[-1]]["output_bytes"] / self.trace_batch * self.scale,
            largest_param_bytes=round(largest * self.scale),
            largest_op_per_sample=max(self.pricer.largest_op[b] for b in blocks)
            / self.trace_batch
            * self.scale,
        )

    def _boundary_bytes(self) -> tuple[list[float], list[float]]:
        """Per-sample bytes crossing each stage boundary k -> k+1, forward and backward.

        A tensor that skips stages is sent across every boundary it crosses.
        """
        n = len(self.stages)
        fwd, bwd = [0.0] * max(n - 1, 0), [0.0] * max(n - 1, 0)
        for u, v, d in self.graph.edges(data=True):
            su, sv = self.stage_of.get(u, 0), self.stage_of.get(v, 0)
            for k in range(su, sv):
                fwd[k] += d.get("bytes", 0) / self.trace_batch * self.scale
                bwd[k] += d.get("grad_bytes", 0) / self.trace_batch * self.scale
        return fwd, bwd

    def _replicas_to_simulate(self) -> list[int]:
        """Replicas whose timelines must be simulated; identical replicas run identically.

        Replicas are identical when they take equal shares on the same device kinds, with
        the same links between consecutive stages, and no CPU cores are shared between
        ranks (then replicas would slow each other down). One is simulated; the others'
        timelines are copies (a 512-GPU plan simulates one pipeline, not 64).
        """
        plan = self.plan
        if plan.dp_degree == 1 or any(self.cluster.device(r.device).kind == "cpu" for r in plan.ranks):
            return list(range(plan.dp_degree))

        def signature(dp: int) -> tuple:
            devices = [plan.rank_of(dp, q).device for q in range(self.p)]
            kinds = tuple(self.cluster.device(d).kind for d in devices)
            pairs = zip(devices, devices[1:] + devices[:1], strict=True) if self.p > 1 else []
            hops = tuple(self.pricer.link(a, b, "p2p")[:2] for a, b in pairs)
            return self.share[dp], kinds, hops

        first = signature(0)
        if all(signature(dp) == first for dp in range(1, plan.dp_degree)):
            return [0]
        return list(range(plan.dp_degree))

    def cores(self) -> dict[int, float]:
        """Cores per node for CPU ranks (their compute shares add up); GPUs never share."""
        cores: dict[int, float] = defaultdict(float)
        for d in self.cluster.devices:
            cores[d.node] = math.inf if d.kind != "cpu" else cores[d.node] + d.compute_share
        return dict(cores)

    def contention(self) -> dict[int, float]:
        """Measured slowdown of CPU ranks sharing a node while all compute (0 unmeasured)."""
        profile = self.pricer.profile
        if profile is None:
            return {}
        return {
            d.node: profile.contention[d.kind]
            for d in self.cluster.devices
            if d.kind == "cpu" and d.kind in profile.contention
        }

    def stage_time(self, rank: int, stage: int) -> tuple[float, float]:
        key = (rank, stage)
        if key not in self.stage_time_table:
            r = self.plan.ranks[rank]
            kind = self.cluster.device(r.device).kind
            samples = self.share[r.dp_index] / self.m
            profile = self.pricer.profile
            blocks = self.stages[stage].blocks
            # A replica of the whole model runs it uncut and eagerly; a pipeline stage runs
            # the pieces pipeline() cuts, which the block timings measured.
            whole = profile.whole_time(kind, samples) if profile and len(self.stages) == 1 else None
            if whole is not None and not self.gan:
                fwd, bwd = whole
                self.used_sources["compute"].add("profile")
            else:
                fwd = bwd = 0.0
                for block in blocks:
                    for times in self._passes(block, blocks):
                        f, b, src = self.pricer.block_times(
                            block, kind, self.dtype, samples * times, self.scale, self.trace_batch
                        )
                        fwd, bwd = fwd + f, bwd + b
                        self.used_sources["compute"].add(src)
            action = profile.pipeline_action_s.get(kind, 0.0) if profile and len(self.stages) > 1 else 0.0
            if action and not self.gan:  # torch's schedule, per action
                fwd, bwd = fwd + action, bwd + action
            self.stage_time_table[key] = (fwd, bwd)
        return self.stage_time_table[key]

    def _passes(self, block: str, stage_blocks: list[str]) -> tuple[int, ...]:
        """Each run of ``block`` in one step, as a multiple of the micro-batch's samples.

        A GAN replica that holds both networks (data parallel) runs D twice per step
        (runtime.parallel.gan.gan_step): on the real and the generated samples at once for D's loss,
        then on the generated ones again for G's. Everything else runs once.
        """
        return (2, 1) if block == "discriminator" and self._gan_replica(stage_blocks) else (1,)

    def _gan_replica(self, stage_blocks: list[str]) -> bool:
        """A stage holding both of the GAN's networks: a data-parallel replica's."""
        return self.gan and {"generator", "discriminator"} <= set(stage_blocks)

    def _reduced_bytes(self, cost: _StageCost) -> list[float]:
        """The all-reduces a replica's stage makes per step, in bytes. A GAN replica
        all-reduces D's gradients after D's loss, then G's and D's again after G's loss
        (DDP reduces every backward; D's second gradients are cleared unused)."""
        if self._gan_replica(cost.blocks):
            d_bytes = self.graph.nodes["discriminator"]["param_bytes"] * self.scale
            return [d_bytes, cost.param_bytes]
        return [cost.param_bytes]

    def link(self, a: int, b: int, op: str = "p2p") -> tuple[float, float]:
        latency, bandwidth, source = self.pricer.link(a, b, op)
        self.used_sources["communication"].add(source)
        return latency, bandwidth

    def _ring_bytes(self, devices: list[int], nbytes: float) -> None:
        """Each hop of a ring all-reduce carries 2(d-1)/d of the buffer."""
        d = len(devices)
        for a, b in zip(devices, devices[1:] + devices[:1], strict=True):
            self.link_bytes[(a, b)] += 2 * (d - 1) / d * nbytes

    def ring_time(self, devices: list[int], nbytes: float) -> float:
        """One all-reduce over ``devices``: a profile's measured fit for this link kind and
        group size where it has one, else the ring formula on the slowest hop."""
        d = len(devices)
        if d < 2 or nbytes <= 0:
            return 0.0
        hops = list(zip(devices, devices[1:] + devices[:1], strict=True))
        self._ring_bytes(devices, nbytes)
        measured = self.pricer.measured_all_reduce(hops, d)
        if measured is not None:
            self.used_sources["communication"].add("profile")
            return measured[0] + nbytes / measured[1]
        lat_bw = [self.link(a, b) for a, b in hops]
        latency = max(lat for lat, _ in lat_bw)
        bandwidth = min(bw for _, bw in lat_bw)
        return ring_all_reduce_time(nbytes, d, latency, bandwidth)

    # -- task graphs ----------------------------------------------------------------------
    def pipeline_tasks(self) -> tuple[list[Task], dict[int, list[int]], dict[int, Sequence[Action]]]:
        plan = self.plan
        schedule = plan.schedule or ("1f1b" if plan.strategy == "dp" else "gpipe")
        orders = rank_actions(schedule, self.p, self.m, plan.virtual_stages)
        tasks: list[Task] = []
        programs: dict[int, list[int]] = defaultdict(list)
        actions: dict[int, Sequence[Action]] = {}
        last_backward: dict[tuple[int, int], int] = {}  # (rank, stage) -> task id

        def add(*args, **kw) -> Task:
            t = Task(len(tasks), *args, **kw)
            tasks.append(t)
            return t

        for dp in self.simulated:
            ranks = [plan.rank_of(dp, q).rank for q in range(self.p)]
            compute: dict[tuple[str, int, int], Task] = {}
            for q, order in enumerate(orders):
                rank = ranks[q]
                actions[rank] = order
                program = programs[rank]
                for a in order:
                    fwd, bwd = self.stage_time(rank, a.stage)
                    forward = a.kind == "F"
                    # Positional: this runs once per micro-batch and stage (tens of thousands).
                    t = Task(
                        len(tasks),
                        "forward" if forward else "backward",
                        fwd if forward else bwd,
                        rank,
                        [],
                        None,
                        (),
                        a.stage,
                        a.micro_batch,
                    )
                    tasks.append(t)
                    compute[(a.kind, a.stage, a.micro_batch)] = t
                    program.append(t.id)
                    if not forward:
                        last_backward[(rank, a.stage)] = t.id
            samples = self.share[dp] / self.m
            # Every micro-batch crossing a boundary sends the same bytes over the same link:
            # work out each hop once.
            fwd_hops = [
                self._hop(ranks, j, j + 1, self.fwd_cross[j] * samples) for j in range(len(self.stages) - 1)
            ]
            bwd_hops = [
                self._hop(ranks, j + 1, j, self.bwd_cross[j] * samples) for j in range(len(self.stages) - 1)
            ]
            last = len(self.stages) - 1
            for (kind, s, i), t in compute.items():
                if kind == "F" and s > 0:
                    t.deps.append(self._hop_task(add, fwd_hops[s - 1], compute[("F", s - 1, i)], s - 1))
                if kind == "B":
                    t.deps.append(compute[("F", s, i)].id)
                    if s < last:
                        t.deps.append(self._hop_task(add, bwd_hops[s], compute[("B", s + 1, i)], s + 1))
        self._reductions(add, programs, last_backward)
        return tasks, dict(programs), actions

    def _hop(self, ranks: list[int], src: int, dst: int, nbytes: float) -> tuple:
        """(sender rank, work, channel, bytes) of one micro-batch's send from stage src to
        dst, with its bytes counted on every link it uses, the mirrored replicas' too."""
        a, b = ranks[src % self.p], ranks[dst % self.p]
        da, db = self.plan.ranks[a].device, self.plan.ranks[b].device
        latency, bandwidth = self.link(da, db)
        per_step = nbytes * self.m
        self.link_bytes[(da, db)] += per_step
        for other in self._mirrors():  # identical replicas send the same, on their own links
            oa = self.plan.rank_of(other, src % self.p).device
            ob = self.plan.rank_of(other, dst % self.p).device
            self.link_bytes[(oa, ob)] += per_step
        return a, transfer_time(nbytes, latency, bandwidth), f"p2p:{da}->{db}", round(nbytes)

    @staticmethod
    def _hop_task(add, hop: tuple, producer: Task, stage: int) -> int:
        rank, work, channel, nbytes = hop
        return add(
            "send", work, rank, [producer.id], channel, (rank,), stage, producer.micro_batch, nbytes
        ).id

    def _mirrors(self) -> list[int]:
        """Replicas not simulated because replica 0 stands for them."""
        return [] if len(self.simulated) > 1 else list(range(1, self.plan.dp_degree))

    def mirror_rank(self, rank: int) -> int:
        """The simulated rank that a mirrored rank's timeline copies."""
        r = self.plan.ranks[rank]
        if r.dp_index in self.simulated:
            return rank
        return self.plan.rank_of(self.simulated[0], r.pp_index).rank

    def _reductions(
        self, add, programs: dict[int, list[int]], last_backward: dict[tuple[int, int], int]
    ) -> None:
        """Tied-weight sums, then data-parallel all-reduces, then each rank's optimizer step."""
        plan = self.plan
        before_optimizer: dict[int, list[int]] = defaultdict(list)
        tied_of_stage: dict[tuple[int, int], list[int]] = defaultdict(list)  # (dp, stage) -> task ids
        for fqn, stages in self._tied_stages().items():
            nbytes = self.graph.graph.get("param_bytes", {}).get(fqn, 0) * self.scale
            for dp in self.simulated:
                ranks = sorted({plan.rank_of(dp, s % self.p).rank for s in stages})
                if len(ranks) < 2:
                    continue
                devices = [plan.ranks[r].device for r in ranks]
                for other in self._mirrors():
                    self._ring_bytes(
                        [plan.rank_of(other, plan.ranks[r].pp_index).device for r in ranks], nbytes
                    )
                t = add(
                    kind="all-reduce",
                    work=self.ring_time(devices, nbytes),
                    rank=ranks[0],
                    deps=[last_backward[(plan.rank_of(dp, s % self.p).rank, s)] for s in stages],
                    channel=f"tied:{dp}:{fqn}",
                    lanes=tuple(ranks),
                    nbytes=round(nbytes),
                )
                for s in stages:
                    tied_of_stage[(dp, s)].append(t.id)
                for r in ranks:
                    before_optimizer[r].append(t.id)
        for s, cost in enumerate(self.stages):
            group = [plan.rank_of(dp, s % self.p).rank for dp in range(plan.dp_degree)]
            simulated = [plan.rank_of(dp, s % self.p).rank for dp in self.simulated]
            done = [last_backward[(r, s)] for r in simulated] + [
                t for dp in self.simulated for t in tied_of_stage[(dp, s)]
            ]
            if plan.dp_degree > 1:
                devices = [plan.ranks[r].device for r in group]
                reduced = self._reduced_bytes(cost)
                t = add(
                    kind="all-reduce",
                    work=sum(self.ring_time(devices, nbytes) for nbytes in reduced),
                    rank=group[0],
                    deps=done,
                    channel=f"dp:{s % self.p}",
                    lanes=tuple(simulated),
                    stage=s,
                    nbytes=round(sum(reduced)),
                )
                done = [t.id]
            for r in simulated:
                before_optimizer[r].extend(done)
        self._optimizers(add, programs, before_optimizer)

    def _optimizers(self, add, programs: dict[int, list[int]], before: dict[int, list[int]]) -> None:
        opt = self.plan.training.optimizer
        for r in self.plan.ranks:
            if r.dp_index not in self.simulated:
                continue
            params = sum(
                self.stages[s].param_count for s in range(len(self.stages)) if s % self.p == r.pp_index
            )
            kind = device_kind(self.cluster.device(r.device).kind)
            work, src = optimizer_time(params, opt.name, opt.momentum, kind, self.opts, self.profile)
            self.used_sources["compute"].add(src)
            t = add(kind="optimizer", work=work, rank=r.rank, deps=sorted(set(before[r.rank])))
            programs[r.rank].append(t.id)

    def _tied_stages(self) -> dict[str, list[int]]:
        """Tied parameters held by more than one stage: their gradients are summed across them."""
        held: dict[str, set[int]] = defaultdict(set)
        for b, s in self.stage_of.items():
            for p in self.graph.nodes[b].get("shared_params", []):
                held[p].add(s)
        return {p: sorted(s) for p, s in held.items() if len(s) > 1}

    def gan_tasks(self) -> tuple[list[Task], dict[int, list[int]], dict[int, Sequence[Action]]]:
        """One GAN step as its phases (the runtime's hand-written schedule, runtime/parallel/gan.py).

        Discriminator step: D forward and backward on real samples; G forward, send the
        samples, D forward and backward on them; D's optimizer. Generator step: D forward
        on the same samples, backward to its input, send that gradient back, G backward,
        G's optimizer.
        """
        plan = self.plan
        g_stage = next(s.index for s in plan.stages if s.name == "generator")
        d_stage = next(s.index for s in plan.stages if s.name == "discriminator")
        g, d = plan.rank_of(0, g_stage).rank, plan.rank_of(0, d_stage).rank
        dg, dd = plan.ranks[g].device, plan.ranks[d].device
        g_f, g_b = self.stage_time(g, g_stage)
        d_f, d_b = self.stage_time(d, d_stage)
        batch = plan.training.global_batch
        sample_bytes = self.fwd_cross[min(g_stage, d_stage)] * batch
        grad_bytes = self.bwd_cross[min(g_stage, d_stage)] * batch
        tasks: list[Task] = []

        def add(*args, **kw) -> Task:
            t = Task(len(tasks), *args, **kw)
            tasks.append(t)
            return t

        d_real_f = add(kind="forward", work=d_f, rank=d, stage=d_stage, micro_batch=0)
        d_real_b = add(kind="backward", work=d_b, rank=d, stage=d_stage, micro_batch=0, deps=[d_real_f.id])
        g_fwd = add(kind="forward", work=g_f, rank=g, stage=g_stage, micro_batch=0)
        ranks = [plan.rank_of(0, q).rank for q in range(self.p)]
        samples = self._hop_task(add, self._hop(ranks, g_stage, d_stage, sample_bytes), g_fwd, g_stage)
        d_fake_f = add(kind="forward", work=d_f, rank=d, stage=d_stage, micro_batch=1, deps=[samples])
        d_fake_b = add(kind="backward", work=d_b, rank=d, stage=d_stage, micro_batch=1, deps=[d_fake_f.id])
        d_params = self.stages[d_stage].param_count
        opt = plan.training.optimizer
        d_kind = device_kind(self.cluster.device(dd).kind)
        g_kind = device_kind(self.cluster.device(dg).kind)
        d_opt = add(
            kind="optimizer",
            work=optimizer_time(d_params, opt.name, opt.momentum, d_kind, self.opts, self.profile)[0],
            rank=d,
            deps=[d_real_b.id, d_fake_b.id],
        )
        d_gen_f = add(kind="forward", work=d_f, rank=d, stage=d_stage, micro_batch=2, deps=[d_opt.id])
        d_gen_b = add(kind="backward", work=d_b, rank=d, stage=d_stage, micro_batch=2, deps=[d_gen_f.id])
        grad = self._hop_task(add, self._hop(ranks, d_stage, g_stage, grad_bytes), d_gen_b, d_stage)
        g_bwd = add(kind="backward", work=g_b, rank=g, stage=g_stage, micro_batch=0, deps=[grad])
        g_opt = add(
            kind="optimizer",
            work=optimizer_time(
                self.stages[g_stage].param_count, opt.name, opt.momentum, g_kind, self.opts, self.profile
            )[0],
            rank=g,
            deps=[g_bwd.id],
        )
        programs = {
            d: [d_real_f.id, d_real_b.id, d_fake_f.id, d_fake_b.id, d_opt.id, d_gen_f.id, d_gen_b.id],
            g: [g_fwd.id, g_bwd.id, g_opt.id],
        }
        actions = {
            d: [Action(d_stage, "F", 0), Action(d_stage, "B", 0)],
            g: [Action(g_stage, "F", 0), Action(g_stage, "B", 0)],
        }
        self.used_sources["compute"].add("datasheet" if self.profile is None else "profile")
        return tasks, programs, actions

    # -- memory ---------------------------------------------------------------------------
    def memory(self, actions: dict[int, Sequence[Action]], gan: bool) -> list[MemoryBreakdown]:
        plan, opt = self.plan, self.plan.training.optimizer
        per_param = optimizer_state_bytes(opt.name, opt.momentum, self.dtype)
        temporaries = optimizer_temporaries(opt.name, opt.weight_decay)
        model_bytes = round(self.pricer.model_param_bytes * self.scale)
        last = len(self.stages) - 1
        out = []
        held: dict[tuple[int, float], float] = {}  # replicas of a pipeline rank hold the same
        for r in plan.ranks:
            device = self.cluster.device(r.device)
            mine = [s for s in range(len(self.stages)) if s % self.p == r.pp_index]
            flight = in_flight(actions.get(r.rank, []))
            if gan:  # D's loss holds the real and the fake half of its batch at once
                doubled = {s for s in flight if plan.stages[s].name == "discriminator"}
                flight = {s: 2 * n if s in doubled else n for s, n in flight.items()}
            samples = plan.training.global_batch if gan else self.share[r.dp_index] / self.m
            key = (r.pp_index, samples)
            if not gan and key not in held:
                saved = {s: self.stages[s].saved_per_sample * samples for s in mine}
                held[key] = held_peak(actions.get(r.rank, []), saved)
            overhead = self.cluster.overhead_bytes.get(device.kind, 0)
            if self.profile is not None and device.kind in self.profile.overhead_bytes:
                overhead = self.profile.overhead_bytes[device.kind]
            measured = self.profile.runtime_bytes.get(device.kind, {}) if self.profile is not None else {}
            runtime = measured.get("pp" if self.p > 1 and not gan else "dp", 0)
            out.append(
                rank_memory(
                    rank=r.rank,
                    device=r.device,
                    capacity=device.memory_bytes,
                    param_bytes=sum(self.stages[s].param_bytes for s in mine),
                    param_count=sum(self.stages[s].param_count for s in mine),
                    optimizer_bytes_per_param=per_param,
                    saved_per_sample={s: self.stages[s].saved_per_sample for s in mine},
                    in_flight=flight,
                    micro_batch_size=samples,
                    loss_output_per_sample=LOSS_COPIES * self.stages[last].out_per_sample
                    if last in mine and not gan
                    else 0.0,
                    loss_in_flight=flight.get(last, 0),
                    overhead=overhead,
                    buffers=0.0 if gan else self._receive_buffers(mine, samples),
                    largest_param_bytes=max(self.stages[s].largest_param_bytes for s in mine),
                    largest_op_bytes=max(self.stages[s].largest_op_per_sample * samples for s in mine),
                    optimizer_temporaries=temporaries,
                    model_param_bytes=model_bytes,
                    runtime=runtime,
                    activations_held=None if gan else held[key],
                )
            )
        return out

    def _receive_buffers(self, stages: list[int], samples: float) -> float:
        """Bytes of the receive buffers of ``stages``: m per input activation (not on the
        first stage) and m per output gradient (not on the last)."""
        last = len(self.stages) - 1
        activations = sum(self.fwd_cross[s - 1] for s in stages if s > 0)
        gradients = sum(self.bwd_cross[s] for s in stages if s < last)
        per_sample = activations + gradients
        return self.m * samples * per_sample

    def sources(self) -> dict[str, str]:
        digest = self.pricer.profile_digest

        def name(kinds: set[str]) -> str:
            parts = [f"profile:{digest}"] if "profile" in kinds else []
            if "datasheet" in kinds or not kinds:
                parts.append("datasheet")
            return "+".join(parts)

        timing = name(self.used_sources["compute"] | self.used_sources["communication"])
        return {
            "step_time_s": timing,
            "samples_per_s": timing,
            "bubble_fraction": timing,
            "bytes_sent_per_step": "trace",
            "peak_memory": "trace",
        }
