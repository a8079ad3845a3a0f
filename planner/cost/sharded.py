"""Sharded data parallel in a plan's step (FSDP2, `fully_shard` per block): which ranks share
a shard, what each pass of a stage gathers and reduces, and how that overlaps its compute.

What FSDP2 does, and so what is priced:
- A plan of one stage (no pipeline) runs each micro-batch under FSDP2's own hooks: a block's
  parameters are all-gathered before its forward, the next block's gather issued while this
  one computes (two blocks gathered at most); ``full_shard`` and ``hybrid_shard`` free them
  after the forward and gather them again before the backward; after a block's backward
  its gradients are reduce-scattered while the blocks before it compute. Gradients stay
  sharded.
- A pipeline stage (`torch.distributed.pipelining`) runs every backward without gradient
  sync and keeps the parameters gathered after a backward, so its gradients accumulate
  unsharded (in the reduce dtype) and are reduce-scattered block after block once the last
  backward is done. So ``shard_grad_op`` gathers each block once a step; ``full_shard``
  gathers before each forward that does not follow a backward of the same stage, and before
  each backward.
- ``hybrid_shard``: the shards are then all-reduced across nodes (`planner.cost.reductions`).
Collective dtypes follow FSDP2's `MixedPrecisionPolicy` under mixed precision: parameters
gathered in the compute dtype, gradients reduced in the weights' (fp32).

A pass's collectives are folded into its compute task (`overlapped`), the part compute did
not hide noted per rank (`PlanPricing.comm_in_compute`): FSDP issues them on streams of
its own, so the simulator's rank-to-rank channels do not carry them. The group's replicas
are taken to be in step (they run the same blocks in the same order). CPU ranks hide
nothing: a CPU has no streams, and gloo runs the collective on the cores the ranks compute
on, so a block waits for its gather and a backward for its reduce-scatter (serial).

FSDP2's own work, where a profile measured it (`ShardGroups.fsdp_work`): a collective's
bookkeeping and buffers beyond the bytes it moves (with the collective), and the hooks
around each unit's forward and backward (with the block's compute).
"""

from __future__ import annotations

import itertools
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from planner.cost.collectives import count_ring_bytes, half_ring
from planner.devices import device_kind
from planner.schedules import Action
from planner.sharding import DpMode

if TYPE_CHECKING:
    from planner.cost.plan_pricing import PlanPricing
    from planner.cost.step import Step

Reduce = Literal["", "overlapped", "after"]
"""A backward pass's reduce-scatters: none, each block's beside the blocks before it
(FSDP2's hooks), or all after the pass (a pipeline's last backward)."""


GATHER, REDUCE = "all-gather", "reduce-scatter"
"""What the timeline calls a sharded group's collectives (`planner.cost.price`)."""

Span = tuple[str, float, float]
"""(GATHER or REDUCE, start, end) within a pass, from its start."""


def overlapped(
    compute: Sequence[float],
    gather: Sequence[float] | None = None,
    reduce: Sequence[float] | None = None,
    reduce_after: bool = False,
    spans: list[Span] | None = None,
    serial: bool = False,
) -> float:
    """Seconds of one pass over blocks, in the order given. Block i computes once its
    parameters are gathered and block i-1 is done; gathers run one after another, block i's
    starting once block i-2 is done (two blocks gathered at once); reduce-scatters run one
    after another beside compute, each after its block, or all after the pass. ``serial``:
    nothing runs beside compute (each gather starts once the block before is done, and the
    next block waits for a reduce-scatter). Each collective's span is appended to ``spans``
    when one is given.

    >>> overlapped([1, 1, 1], [0.5, 0.5, 0.5])  # only the first gather shows
    3.5
    >>> overlapped([1, 1], [2, 2])  # bound by communication
    5.0
    >>> overlapped([1, 1], reduce=[1, 1]), overlapped([1, 1], reduce=[1, 1], reduce_after=True)
    (3.0, 4.0)
    >>> overlapped([1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], serial=True)
    5.25
    """
    done = before = gathered = reduced = 0.0  # ends of: this block, the one before, gathers, reduces
    out = spans if spans is not None else []
    for i, seconds in enumerate(compute):
        ready = 0.0
        if gather:
            start = max(gathered, done if serial else before)
            gathered = start + gather[i]
            out.append((GATHER, start, gathered))
            ready = gathered
        before, done = done, max(done, ready) + seconds
        if reduce and not reduce_after:
            start = max(reduced, done)
            reduced = start + reduce[i]
            out.append((REDUCE, start, reduced))
            if serial:
                done = reduced
    if reduce and reduce_after:
        for seconds in reduce:
            out.append((REDUCE, done, done + seconds))
            done += seconds
    return max(done, reduced)


def pass_plan(mode: DpMode, one_stage: bool, order: Sequence[Action]) -> dict[Action, tuple[bool, Reduce]]:
    """For each action of a rank's order: does it gather its stage's parameters first, and
    how does it reduce-scatter its gradients (see the module docstring)."""
    out: dict[Action, tuple[bool, Reduce]] = {}
    if one_stage:
        for a in order:
            forward = a.kind == "F"
            out[a] = (True, "") if forward else (mode.reshards_after_forward, "overlapped")
        return out
    last_backward = {a.stage: a for a in order if a.kind == "B"}
    kept: dict[int, bool] = defaultdict(bool)  # stage -> its parameters are gathered
    for a in order:
        gather = not kept[a.stage]
        if a.kind == "F":
            out[a] = (gather, "")
            kept[a.stage] = not mode.reshards_after_forward
        else:
            out[a] = (gather, "after" if last_backward[a.stage] == a else "")
            kept[a.stage] = True
    return out


class ShardGroups:
    """Each rank's shard group (the devices its stages' state is sharded over) and, under
    ``hybrid_shard``, its replicate group (the ranks holding the same shard on other nodes)."""

    def __init__(self, pricing: PlanPricing) -> None:
        plan = pricing.plan
        # A weak reference back to the pricing that owns this: a strong one made every priced
        # plan a reference cycle, thousands of objects left to the cycle collector per search.
        self.pricing = weakref.proxy(pricing)
        self.mode = plan.dp_mode
        recipe = pricing.precision
        self.gather_bytes = recipe.compute_bytes
        """Bytes per parameter gathered: FSDP2 casts to the compute dtype before gathering."""
        self.reduce_bytes = recipe.weight_bytes
        """Bytes per gradient element reduced (fp32 under mixed precision)."""
        self.shard: dict[int, list[int]] = {}
        self.replicate: dict[int, list[int]] = {}
        self._memory_speed: dict[int, float] = {}  # rank -> bytes/s its copies move at
        self._fsdp_work: dict[int, tuple[float, float]] = {}  # rank -> (per collective, per pass)
        self._ring: dict[tuple[int, str], Callable[[float], float]] = {}  # (rank, op) -> time per bytes
        # Pipeline rank -> its shard groups' devices, every tensor index's.
        self._groups: dict[int, list[list[int]]] = {}
        if not self.mode.sharded:
            return  # every rank holds its stages whole: nothing to look up (the search prices many)
        for q, t in itertools.product(range(plan.pp_degree), range(plan.tp_degree)):
            members = [plan.rank_of(dp, q, t) for dp in range(plan.dp_degree)]
            if self.mode == DpMode.HYBRID_SHARD:
                by_node: dict[int, list] = defaultdict(list)
                for r in members:
                    by_node[r.node].append(r)
                groups = list(by_node.values())
            else:
                groups = [members]
            mine = [[r.device for r in g] for g in groups]
            self._groups.setdefault(q, []).extend(mine)  # every tensor index's groups
            across = [[other[j].device for other in groups] for j in range(len(groups[0]))]
            for g, devices in zip(groups, mine, strict=True):
                for j, r in enumerate(g):
                    self.shard[r.rank] = devices  # one list per group, shared by its ranks
                    self.replicate[r.rank] = across[j]

    def serial(self, rank: int) -> bool:
        """Whether ``rank``'s collectives run one after another with its compute (a CPU rank)."""
        device = self.pricing.plan.ranks[rank].device
        return self.pricing.cluster.device(device).kind == "cpu"

    def size(self, rank: int) -> int:
        """Ranks the state of ``rank``'s stages is sharded over (1: replicated)."""
        return len(self.shard[rank]) if self.mode.sharded else 1

    def gather_s(self, rank: int, params: int) -> float:
        """One all-gather of a block of ``params`` parameters in ``rank``'s shard group, with
        FSDP's copies around it (`copies_s`)."""
        nbytes = params * self.gather_bytes
        collective = self._collective(rank, "all_gather")(nbytes)
        return collective + self.copies_s(rank, nbytes) + self.fsdp_work(rank)[0]

    def reduce_s(self, rank: int, params: int) -> float:
        """One reduce-scatter of a block of ``params`` gradients in ``rank``'s shard group,
        with FSDP's copies around it (`copies_s`)."""
        nbytes = params * self.reduce_bytes
        collective = self._collective(rank, "reduce_scatter")(nbytes)
        return collective + self.copies_s(rank, nbytes) + self.fsdp_work(rank)[0]

    def fsdp_work(self, rank: int) -> tuple[float, float]:
        """FSDP2's own work on ``rank``, measured (`Profile.fsdp_collective_s` and
        `Profile.fsdp_pass_s`): seconds per collective beyond its fit and its copies,
        and per block forward or backward beyond the block's compute; 0 unmeasured."""
        if rank not in self._fsdp_work:
            profile = self.pricing.profile
            kind = self.pricing.cluster.device(self.pricing.plan.ranks[rank].device).kind
            self._fsdp_work[rank] = (
                (profile.fsdp_collective_s.get(kind, 0.0), profile.fsdp_pass_s.get(kind, 0.0))
                if profile is not None
                else (0.0, 0.0)
            )
        return self._fsdp_work[rank]

    def copies_s(self, rank: int, nbytes: float) -> float:
        """FSDP2 copies a unit into its collective's buffer and out of it (`foreach_all_gather`
        copies the shards in and `foreach_all_gather_copy_out` the gathered parameters out;
        the reduce-scatter copies the gradients in and its shard out): the whole unit's
        bytes and its shard's, each read and written once, at the device's memory speed.
        Next to a collective on NVLink this is small; on a CPU rank it is not (the MLP's
        4 MB units' FSDP work measured 40% above the bare collectives' fits, docs/cost_model.md)."""
        if rank not in self._memory_speed:
            device = self.pricing.cluster.device(self.pricing.plan.ranks[rank].device)
            kind = device_kind(device.kind)
            self._memory_speed[rank] = kind.memory_bandwidth * self.pricing.options.memory_efficiency
        return 2 * nbytes * (1 + 1 / self.size(rank)) / self._memory_speed[rank]

    def _collective(self, rank: int, op: str) -> Callable[[float], float]:
        if (rank, op) not in self._ring:
            self._ring[rank, op] = half_ring(self.pricing, self.shard[rank], op)
        return self._ring[rank, op]

    def count_bytes(self, stage: int, gathers: int, reduces: int) -> None:
        """Put a step's gathers and reduce-scatters of ``stage``'s blocks (each block
        ``gathers`` and ``reduces`` times) on the links of every shard group holding it."""
        cost = self.pricing.stages[stage]
        params = sum(cost.block_param_counts)
        nbytes = params * (gathers * self.gather_bytes + reduces * self.reduce_bytes)
        for devices in self._groups[stage % self.pricing.pp_degree]:
            count_ring_bytes(self.pricing, devices, nbytes, halves=1)


def pass_time(
    step: Step, rank: int, stage: int, forward: bool, gather: bool, reduce: Reduce
) -> tuple[float, float]:
    """(seconds, of which communication its compute did not hide) of one forward or backward
    of ``stage`` on ``rank``, gathering and reducing as told; cached per plan, with its
    collectives' spans (`PlanPricing.sharded_spans`)."""
    pricing = step.pricing
    key = (rank, stage, forward, gather, reduce)
    table = pricing.sharded_pass_table
    if key not in table:
        blocks = step.block_times(rank, stage)
        counts = pricing.stages[stage].block_param_counts
        groups = pricing.shard_groups
        hooks = groups.fsdp_work(rank)[1]  # FSDP's hooks around each unit, in its compute
        if forward:
            compute = [f + hooks for f, _ in blocks]
            order = counts
        else:  # backward runs the blocks last to first
            compute = [b + hooks for _, b in reversed(blocks)]
            order = counts[::-1]
        gathers = [groups.gather_s(rank, n) for n in order] if gather else None
        reduces = [groups.reduce_s(rank, n) for n in order] if reduce else None
        spans: list[Span] = []
        seconds = overlapped(compute, gathers, reduces, reduce == "after", spans, groups.serial(rank))
        table[key] = (seconds, seconds - sum(compute))
        pricing.sharded_spans[key] = spans
    return table[key]


def collectives_per_step(plan_of: dict[Action, tuple[bool, Reduce]]) -> Counter:
    """(stage, "gather" or "reduce") -> how many times a rank's order does it in a step."""
    count: Counter = Counter()
    for a, (gather, reduce) in plan_of.items():
        count[(a.stage, "gather")] += gather
        count[(a.stage, "reduce")] += bool(reduce)
    return count
