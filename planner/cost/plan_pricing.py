"""What the parts of the pricer share while they price one plan.

The plan's figures in the pricer's units (micro-batch sizes, dtype scale, each stage's
cost, the bytes crossing each stage boundary), which replicas are simulated and which
copy them, and the tallies the prediction reports: bytes per link, stage times, and where
each figure came from (a profile or the datasheet).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from planner.cost.sharded import ShardGroups
from planner.cost.stages import boundary_bytes, stage_cost
from planner.cost.tensor_parallel import TensorGroups, check_tp_degree
from planner.cost.timing import optimizer_time
from planner.devices import device_kind
from planner.plan import Plan
from planner.precision import DTYPE_BYTES
from planner.topology import LinkCost

if TYPE_CHECKING:
    from planner.cost.price import Pricer

LOSS_COPIES = 2
"""Copies of the last stage's output held per micro-batch until its backward: the output
itself (the pipeline schedule keeps it for the loss) and the log-probabilities of the same
size that cross-entropy saves. For a 16384-way LM head they are the largest activations."""


class PlanPricing:
    """Everything about pricing one plan."""

    def __init__(self, pricer: Pricer, plan: Plan):
        self.pricer, self.plan = pricer, plan
        self.graph, self.cluster, self.profile, self.options = (
            pricer.graph,
            pricer.cluster,
            pricer.profile,
            pricer.options,
        )
        self.precision = plan.training.precision.recipe
        self.dtype = self.precision.compute
        """The dtype matrix products run in: the devices' peak for it."""
        traced = DTYPE_BYTES[self.graph.graph.get("dtype", "float32")]
        self.weight_scale = self.precision.weight_bytes / traced
        """Bytes per element of weights and gradients in training / in the trace."""
        self.scale = self.precision.compute_bytes / traced
        """Bytes per element of activations in training / in the trace."""
        # The loss keeps the last output and its log-probabilities; under autocast the loss
        # (cross-entropy, on its float32 list) computes those in float32.
        compute = self.precision.compute_bytes
        self.loss_copies = 1 + DTYPE_BYTES["float32"] / compute if self.precision.mixed else LOSS_COPIES
        """Bytes the loss keeps per byte of the last stage's output."""
        self.trace_batch = int(self.graph.graph.get("batch_size", 1))
        self.element_bytes = traced
        self.micro_batches = plan.training.micro_batches
        self.pp_degree = plan.pp_degree
        self.batch_share = {r.dp_index: r.batch_share for r in plan.replicas}
        self.sources_used: dict[str, set[str]] = defaultdict(set)
        """"compute" or "communication" -> the sources ("profile", "datasheet") used."""
        self.link_bytes: dict[tuple[int, int], float] = defaultdict(float)
        self.stage_time_table: dict[tuple[int, int], tuple[float, float]] = {}
        """(rank, stage) -> (forward, backward) seconds per micro-batch."""
        self.block_time_table: dict[tuple[int, int], list[tuple[float, float]]] = {}
        """(rank, stage) -> each block's (forward, backward) seconds per micro-batch."""
        self.sharded_pass_table: dict[tuple, tuple[float, float]] = {}
        """A sharded stage's pass (`planner.cost.sharded.pass_time`) -> (seconds, not hidden)."""
        self.sharded_spans: dict[tuple, list] = {}
        """The same pass -> its collectives' spans from its start (`planner.cost.sharded.Span`)."""
        self.sharded_task: dict[int, tuple] = {}
        """A forward or backward task's id -> its sharded pass (the timeline draws its collectives)."""
        self.comm_in_compute: dict[int, float] = defaultdict(float)
        """Rank -> seconds of its forwards and backwards spent waiting for the sharded
        group's gathers and reduce-scatters (communication compute did not hide)."""
        self.host_per_action: dict[int, float] = {}
        """Rank -> seconds of each of its forwards and backwards that are host work (torch's
        schedule or DDP's step: posting, waiting, bookkeeping), not compute."""
        self.host_per_step: dict[int, float] = {}
        """Rank -> host seconds at the start of its step, before its first action (loading
        its batch; a pipeline rank's gradients zeroed and, after the step, scaled)."""
        self.tp_degree = plan.tp_degree
        self.sequence_parallel = plan.sequence_parallel and plan.tp_degree > 1
        if self.tp_degree > 1:
            check_tp_degree(self.graph, self.tp_degree)
        stage_blocks = plan.stage_blocks()
        self.stage_of = {b: i for i, blocks in enumerate(stage_blocks) for b in blocks}
        sizes = pricer.sizes_for(self.tp_degree, self.sequence_parallel)
        self.stages = [
            stage_cost(
                sizes,
                blocks,
                weight_scale=self.weight_scale,
                scale=self.scale,
                element_bytes=self.element_bytes,
                trace_batch=self.trace_batch,
                recompute_every=stage.recompute_every,
                per_block=plan.dp_mode.sharded,
            )
            for blocks, stage in zip(stage_blocks, plan.stages, strict=True)
        ]
        self.boundaries = boundary_bytes(
            self.graph,
            self.stage_of,
            len(self.stages),
            scale=self.scale,
            trace_batch=self.trace_batch,
        )
        self.shard_groups = ShardGroups(self)
        self.tensor_groups = TensorGroups(self)
        self.stands_for = self.replicas_to_simulate()
        """Replica -> the simulated replica whose timeline it copies (itself, if simulated)."""
        self.simulated = sorted(set(self.stands_for.values()))
        self.tp_comm: dict[tuple[int, int], tuple[float, float]] = {}
        """(rank, stage) -> (forward, backward) seconds of one micro-batch's tensor-parallel
        collectives, inside the stage's times (`planner.cost.tensor_parallel`)."""
        self.tp_spans: dict[tuple[int, int], tuple[list, list]] = {}
        """(rank, stage) -> those collectives' spans from the start of its forward and of its
        backward (`planner.cost.tensor_parallel.collective_spans`)."""
        self.tp_task: dict[int, tuple[int, int, bool]] = {}
        """A forward or backward task's id -> (rank, stage, forward): the timeline draws its
        tensor group's collectives."""

    def optimizer_time(self, params: int, device: int, sharded_tensors: int = 0) -> float:
        """One optimizer step over ``params`` parameters on ``device`` (its source tallied);
        ``sharded_tensors``: how many of its tensors are DTensor shards, each costing what the
        profile measured more (nothing without a profile: not known from datasheets)."""
        opt = self.plan.training.optimizer
        kind = device_kind(self.cluster.device(device).kind)
        seconds, source = optimizer_time(
            params, opt.name, opt.momentum, kind, self.options, self.profile, self.precision.weight_bytes
        )
        self.sources_used["compute"].add(source)
        if sharded_tensors and source == "profile":
            seconds += sharded_tensors * (
                self.profile.optimizer_sharded_s_per_tensor(kind.id, opt.name) or 0.0
            )
        return seconds

    def micro_batch_size(self, dp_index: int) -> float:
        """Samples per micro-batch of a replica."""
        return self.batch_share[dp_index] / self.micro_batches

    # -- replicas simulated once ----------------------------------------------------------
    def replicas_to_simulate(self) -> dict[int, int]:
        """Which replica's simulated timeline each replica's copies (itself, if simulated):
        identical replicas run identically.

        Replicas are identical when they take equal shares on the same device kinds, with
        the same links between consecutive stages and inside their tensor groups (and, under
        hybrid_shard, shard and replicate groups of the same sizes), and no CPU cores are
        shared between ranks (then replicas would slow each other down). One replica of each
        kind is simulated; the others' timelines are copies (a 512-GPU plan simulates one
        pipeline, not 64; pipelines of 6 on nodes of 8 cross a node boundary in three ways,
        so three are simulated).
        """
        plan = self.plan
        every = range(plan.dp_degree)
        if plan.dp_degree == 1 or any(self.cluster.device(r.device).kind == "cpu" for r in plan.ranks):
            return {dp: dp for dp in every}
        first_of: dict[tuple, int] = {}
        return {dp: first_of.setdefault(self._replica_signature(dp), dp) for dp in every}

    def _replica_signature(self, dp: int) -> tuple:
        """What makes a replica run as it does: its share, device kinds and links."""
        plan = self.plan
        ranks = [plan.rank_of(dp, q) for q in range(self.pp_degree)]
        devices = [r.device for r in ranks]
        kinds = tuple(self.cluster.device(d).kind for d in devices)
        pairs = zip(devices, devices[1:] + devices[:1], strict=True) if self.pp_degree > 1 else []
        hops = tuple(self.pricer.link(a, b, "p2p").cost for a, b in pairs)
        tensor = ()
        if plan.tp_degree > 1:  # each tensor group's ring
            tp = range(plan.tp_degree)
            rings = [[plan.rank_of(dp, q, t).device for t in tp] for q in range(self.pp_degree)]
            tensor = tuple(
                tuple(self.pricer.link(a, b, "p2p").cost for a, b in zip(g, g[1:] + g[:1], strict=True))
                for g in rings
            )
        shard, replicate = self.shard_groups.shard, self.shard_groups.replicate
        sizes = tuple((len(shard.get(r.rank, ())), len(replicate.get(r.rank, ()))) for r in ranks)
        return self.batch_share[dp], kinds, hops, tensor, sizes

    def mirrors(self, dp: int) -> list[int]:
        """The replicas that simulated replica ``dp`` stands for, itself left out."""
        return [other for other, rep in self.stands_for.items() if rep == dp and other != dp]

    def is_simulated(self, rank: int) -> bool:
        """Whether ``rank`` has tasks of its own: tensor index 0 of a simulated replica (the
        other ranks of a tensor group run the same, in step)."""
        r = self.plan.ranks[rank]
        return r.tp_index == 0 and r.dp_index in self.simulated

    def mirror_rank(self, rank: int) -> int:
        """The simulated rank whose timeline ``rank``'s copies (itself if simulated)."""
        r = self.plan.ranks[rank]
        return self.plan.rank_of(self.stands_for[r.dp_index], r.pp_index).rank

    def twins(self, ranks: list[int]) -> list[list[int]]:
        """The devices of each copy of simulated ``ranks`` (one replica's) that is not
        simulated: the same pipeline ranks in every mirrored replica, and every other tensor
        index of them; what they send is counted on their own links."""
        plan = self.plan
        dp = plan.ranks[ranks[0]].dp_index
        copies = [dp, *self.mirrors(dp)]
        return [
            [plan.rank_of(c, plan.ranks[r].pp_index, t).device for r in ranks]
            for c in copies
            for t in range(plan.tp_degree)
            if (c, t) != (dp, 0)
        ]

    # -- links and sources ----------------------------------------------------------------
    def link(self, a: int, b: int, op: str = "p2p") -> LinkCost:
        """What a message from device a to b pays; the figure's source is recorded."""
        priced = self.pricer.link(a, b, op)
        self.sources_used["communication"].add(priced.source)
        return priced.cost

    def sources(self) -> dict[str, str]:
        """Where each predicted figure comes from: the profile (by digest), the datasheet, or both."""
        digest = self.pricer.profile_digest

        def name(kinds: set[str]) -> str:
            parts = [f"profile:{digest}"] if "profile" in kinds else []
            if "datasheet" in kinds or not kinds:
                parts.append("datasheet")
            return "+".join(parts)

        timing = name(self.sources_used["compute"] | self.sources_used["communication"])
        return {
            "step_time_s": timing,
            "samples_per_s": timing,
            "bubble_fraction": timing,
            "bytes_sent_per_step": "trace",
            "peak_memory": "trace",
        }
