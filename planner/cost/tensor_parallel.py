"""Tensor parallelism in a plan's price: each rank's share of a block, and the group's collectives.

Every rank of a tensor group runs every block on the same micro-batch. Of a block with a
layout (`planner.capture.tp_roles`), a rank computes its share of each op: a ``split`` op's
FLOPs, bytes and weights over the degree, a ``col`` op's FLOPs and weights (it reads the
whole input), a ``seq`` op's FLOPs and bytes only under sequence parallelism. The roofline
prices each op at its share, so a matrix product small enough to become memory-bound is
priced so; a block's measured time is scaled by the same share (`block_share`).

Megatron's collectives, per block and micro-batch, on the group's links (Shoeybi et al. 2019;
Korthikanti et al. 2022 for sequence parallelism):
- forward: one all-reduce of each row-split layer's output; under sequence parallelism an
  all-gather of each column-split layer's input and a reduce-scatter of each row-split
  layer's output instead;
- backward: one all-reduce of the gradient of each column-split layer's input (torch's
  `ColwiseParallel` makes each layer's input a DTensor apart: q, k and v all-reduce three,
  where Megatron's fused QKV makes one); under sequence parallelism a reduce-scatter of it
  and an all-gather of the row-split layers' output gradients;
- under sequence parallelism, at the edges of each run of split blocks in a stage, as the
  runtime does: an all-gather of the run's output (forward) and of its input's gradient
  (backward). A stage sends and receives whole activations (Megatron sends each rank's
  slice; the runtime's stages are traced with whole shapes).
They sit between the block's ops, each waiting on the op before and each op after waiting on
it, so they are priced in series with the block's compute (not overlapped). Where a profile
measured it, each split block's forward and backward also pay tensor parallelism's own work
(`Profile.tp_pass_s`: DTensor's dispatch and redistributions around the split layers).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from planner.cost.collectives import all_reduce_fn, count_ring_bytes, half_ring
from planner.cost.timing import CostOptions, op_time
from planner.devices import DeviceKind
from planner.errors import PlanError
from planner.tensor_parallel import TpLayout, split_error

if TYPE_CHECKING:
    import networkx as nx

    from planner.cost.plan_pricing import PlanPricing


def heads_error(graph: nx.DiGraph, tp: int) -> str | None:
    """Why ``tp`` cannot split the traced blocks with a layout (`planner.tensor_parallel.split_error`),
    or None."""
    layouts = graph.graph.get("tp_layouts", {})
    return split_error({b: TpLayout.from_doc(doc) for b, doc in layouts.items() if b in graph}, tp)


def check_tp_degree(graph: nx.DiGraph, tp: int) -> None:
    """Raise PlanError naming the first block whose heads ``tp`` does not divide."""
    why = heads_error(graph, tp)
    if why is not None:
        raise PlanError(f"tp_degree: {why}")


TP_COLLECTIVE = "tensor collective"
"""What the timeline calls a tensor group's all-reduces (all-gathers and reduce-scatters under
sequence parallelism) inside a forward or backward (`planner.cost.price`)."""


def collective_spans(
    blocks: list[tuple[float, float]], comm: list[tuple[float, float]], recomputed: list[bool]
) -> tuple[list[tuple[str, float, float]], list[tuple[str, float, float]]]:
    """Where each block's collectives fall in a stage's forward and in its backward, from
    the start of each: ``blocks`` the blocks' (forward, backward) compute, ``comm`` their
    collectives' (forward, backward), in order; a recomputing block runs its forward (and
    its collectives) again before its backward.

    >>> collective_spans([(1, 2), (1, 2)], [(0.5, 0.25), (0.5, 0.25)], [False, False])[0]
    [('tensor collective', 1.0, 1.5), ('tensor collective', 2.5, 3.0)]
    """
    forward, t = [], 0.0
    for (f, _), (cf, _) in zip(blocks, comm, strict=True):
        t += f
        forward.append((TP_COLLECTIVE, t, t + cf))
        t += cf
    backward, t = [], 0.0
    for (f, b), (cf, cb), again in reversed(list(zip(blocks, comm, recomputed, strict=True))):
        if again:
            t += f
            backward.append((TP_COLLECTIVE, t, t + cf))
            t += cf
        t += b
        backward.append((TP_COLLECTIVE, t, t + cb))
        t += cb
    return forward, backward


def divisors(role: str, tp: int, sp: bool) -> tuple[int, int, int]:
    """What an op of ``role`` divides its (FLOPs, activation bytes, weight bytes) by."""
    if role == "split":
        return tp, tp, tp
    if role == "col":
        return tp, 1, tp
    if role == "seq" and sp:
        return tp, tp, 1
    return 1, 1, 1


def block_share(
    data: dict[str, Any],
    tp: int,
    sp: bool,
    kind: DeviceKind,
    dtype: str,
    per: float,
    scale: float,
    opts: CostOptions,
) -> float:
    """The fraction of a block's forward one rank of a tensor group of ``tp`` computes, by the
    roofline op by op; ``per``: samples / traced samples, ``scale``: training / traced bytes."""
    whole = mine = 0.0
    for (f, a, w), role in zip(data["ops"], data["tp"]["roles"], strict=True):
        df, da, dw = divisors(role, tp, sp)
        whole += op_time(f * per, (a * per + w) * scale, kind, dtype, opts)
        mine += op_time(f * per / df, (a * per / da + w / dw) * scale, kind, dtype, opts)
    return mine / whole if whole else 1.0


class TensorGroups:
    """The tensor groups of a plan: their devices, and what their collectives cost."""

    def __init__(self, pricing: PlanPricing) -> None:
        plan = pricing.plan
        self.pricing = weakref.proxy(pricing)  # owned by it: no reference cycle (see ShardGroups)
        self.tp = plan.tp_degree
        self.sp = plan.sequence_parallel and self.tp > 1
        self._times: dict[tuple[int, str], Callable[[float], float]] = {}
        self.per_step: dict[tuple[int, int], float] = {}
        """(rank, stage) -> the bytes of one micro-batch's collectives of the stage, per sample,
        counted on each group's links once the step's micro-batches are known (`count_bytes`)."""

    def devices(self, rank: int) -> list[int]:
        """The devices of ``rank``'s tensor group."""
        r = self.pricing.plan.ranks[rank]
        return [g.device for g in self.pricing.plan.tensor_group(r.dp_index, r.pp_index)]

    def _op(self, rank: int, op: str) -> Callable[[float], float]:
        if (rank, op) not in self._times:
            devices = self.devices(rank)
            self._times[rank, op] = (
                all_reduce_fn(self.pricing, devices)
                if op == "all_reduce"
                else half_ring(self.pricing, devices, op)
            )
        return self._times[rank, op]

    def pass_work(self, rank: int) -> float:
        """Tensor parallelism's own work per split block and pass on ``rank``, where the profile
        measured it (`Profile.tp_pass_s`: DTensor's dispatch around the split layers), else 0."""
        profile = self.pricing.profile
        if profile is None:
            return 0.0
        kind = self.pricing.cluster.device(self.pricing.plan.ranks[rank].device).kind
        return profile.tp_pass_s.get(kind, 0.0)

    def dtensor_count(self, blocks: list[str]) -> int:
        """How many of ``blocks``' parameter tensors a rank holds as DTensors: its split
        layers' (weights and biases), and under sequence parallelism every other one of a
        split block (its norms: `SequenceParallel`). The optimizer steps each through DTensor's
        dispatch, which the profile measured (`Profile.optimizers`' ``sharded_s_per_tensor``)."""
        if self.tp == 1:
            return 0
        layouts = self.pricing.graph.graph.get("tp_layouts", {})
        count = 0
        for block in blocks:
            if block not in layouts:
                continue
            params = self.pricing.graph.nodes[block].get("params", [])
            layers = [f"{block}.{p}" for p in (*layouts[block]["colwise"], *layouts[block]["rowwise"])]
            count += sum(self.sp or any(f.startswith(layer + ".") for layer in layers) for f in params)
        return count

    def block_comm(self, rank: int, block: str, samples: float) -> tuple[float, float]:
        """(forward, backward) seconds of ``block``'s collectives for ``samples`` on ``rank``."""
        if self.tp == 1:
            return 0.0, 0.0
        tp = self.pricing.graph.nodes[block].get("tp")
        if tp is None:
            return 0.0, 0.0
        per = samples / self.pricing.trace_batch * self.pricing.scale
        gathered = [n * per for n in tp["gathered"]]
        reduced = [n * per for n in tp["reduced"]]
        if self.sp:
            gather, scatter = self._op(rank, "all_gather"), self._op(rank, "reduce_scatter")
            forward = sum(map(gather, gathered)) + sum(map(scatter, reduced))
            backward = sum(map(scatter, gathered)) + sum(map(gather, reduced))
        else:
            reduce = self._op(rank, "all_reduce")
            forward, backward = sum(map(reduce, reduced)), sum(map(reduce, gathered))
        return forward, backward

    def run_edges(self, blocks: list[str]) -> list[tuple[bool, bool]]:
        """Per block of a stage, in order: (it ends a run of split blocks, it starts one). Under
        sequence parallelism the runtime gathers the sequence's slices after a run's last block
        (its forward) and, as the backward of the first block keeping its slice, before the
        run's first (`runtime.parallel.tensor_parallel`); a stage's edges end its runs (a stage
        sends and receives whole activations)."""
        split = [self.sp and "tp" in self.pricing.graph.nodes[b] for b in blocks]
        before, after = [False, *split[:-1]], [*split[1:], False]
        return [(s and not a, s and not b) for s, a, b in zip(split, after, before, strict=True)]

    def edge_bytes(self, block: str, samples: float) -> float:
        """The hidden state a run's edge gathers at ``block``, for ``samples``: the size of its
        row-split layers' outputs (the residual stream's)."""
        reduced = self.pricing.graph.nodes[block]["tp"]["reduced"]
        per = samples / self.pricing.trace_batch * self.pricing.scale
        return sum(reduced) / len(reduced) * per if reduced else 0.0

    def stage_comm(self, rank: int, blocks: list[str], samples: float) -> list[tuple[float, float]]:
        """(forward, backward) seconds of each block's collectives (`block_comm`), with a run's
        edge gathers under sequence parallelism (`run_edges`)."""
        comm = [self.block_comm(rank, b, samples) for b in blocks]
        for i, (ends, starts) in enumerate(self.run_edges(blocks)):
            if ends or starts:
                gather = self._op(rank, "all_gather")(self.edge_bytes(blocks[i], samples))
                f, b = comm[i]
                comm[i] = (f + gather * ends, b + gather * starts)
        return comm

    def block_bytes(self, block: str, samples: float) -> tuple[float, float]:
        """(forward, backward) bytes ``block``'s collectives move for ``samples``, as whole
        buffers of all-gathers and reduce-scatters (an all-reduce counts as one of each)."""
        tp = self.pricing.graph.nodes[block].get("tp")
        if self.tp == 1 or tp is None:
            return 0.0, 0.0
        per = samples / self.pricing.trace_batch * self.pricing.scale
        gathered, reduced = sum(tp["gathered"]) * per, sum(tp["reduced"]) * per
        if self.sp:
            return gathered + reduced, gathered + reduced
        return 2 * reduced, 2 * gathered

    def count_bytes(self) -> None:
        """Put every tensor group's collectives of the step on its links: each group runs its
        stages' blocks once per micro-batch, forward and backward, and a recomputing block's
        forward again in its backward."""
        if self.tp == 1:
            return
        pricing = self.pricing
        for r in pricing.plan.ranks:
            if r.tp_index:
                continue
            samples = pricing.micro_batch_size(r.dp_index)
            nbytes = 0.0
            for s in range(r.pp_index, len(pricing.stages), pricing.pp_degree):
                cost = pricing.stages[s]
                again = set(cost.recomputed)
                for b, (ends, starts) in zip(cost.blocks, self.run_edges(cost.blocks), strict=True):
                    forward, backward = self.block_bytes(b, samples)
                    edge = self.edge_bytes(b, samples) if ends or starts else 0.0
                    forward, backward = forward + edge * ends, backward + edge * starts
                    nbytes += forward * (2 if b in again else 1) + backward
            count_ring_bytes(pricing, self.devices(r.rank), nbytes * pricing.micro_batches, halves=1)
