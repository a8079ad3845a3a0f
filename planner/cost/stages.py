"""What each stage of a plan costs, whatever its step: sizes read off the traced graph.

Per stage: the parameters it holds (a tied weight owned by another stage's block is a
copy here), block by block (a sharded data-parallel group gathers them block by block), the
activations it keeps for backward (a block that recomputes keeps only its inputs, and
holds its own activations again while its backward runs), its last output (what the loss
keeps), and the sizes of its largest parameter and op (its temporaries). Per stage boundary: the
bytes each sample sends forward and its gradient back. The trace measured ``trace_batch``
samples in the traced dtype; everything here is per sample, weights in the training
precision's weight dtype and activations in its compute dtype (``weight_scale`` and
``scale`` convert).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import networkx as nx

from planner.cost.tensor_parallel import divisors


@dataclass(frozen=True)
class GraphSizes:
    """What every plan of one graph reads: computed once per graph, not once per plan."""

    owners: dict[str, str]
    """Parameter FQN -> the block that owns it."""
    param_bytes: dict[str, int]
    """Parameter FQN -> bytes in the traced dtype."""
    largest_param: dict[str, int]
    """Block -> its largest parameter's bytes."""
    largest_op: dict[str, int]
    """Block -> the most activation bytes one of its ops reads and writes (see planner.cost.memory)."""
    cast_params: frozenset[str] | None
    """Parameters an op on autocast's lower-precision list reads (None: not traced op by op)."""
    cast_bytes: dict[str, int]
    """Block -> bytes of its parameters in `cast_params` (all of them when that is None)."""
    input_bytes: dict[str, int]
    """Block -> bytes of its inputs (what a block that recomputes keeps for backward)."""
    position: dict[str, int]
    """Block -> its index in the model's block order (which blocks ``every-K`` recomputes)."""
    block_param_bytes: dict[str, int]
    """Block -> bytes of its own parameters, in the traced dtype."""
    block_param_tensors: dict[str, int]
    """Block -> how many parameter tensors it owns."""
    saved: dict[str, int]
    """Block -> bytes its ops keep for backward."""
    resaved: dict[str, dict[str, int]]
    """Block -> {earlier block: bytes of that block's tensors it keeps too}."""
    shared: dict[str, list[str]]
    """Block -> the tied parameters it uses."""
    output: dict[str, int]
    """Block -> bytes of its output."""

    @classmethod
    def of(cls, graph: nx.DiGraph, blocks: list[str], tp: int = 1, sp: bool = False) -> GraphSizes:
        """``blocks``: the model's blocks in execution order; ``tp``: the sizes on one rank of
        a tensor group of that many, ``sp``: with sequence parallelism (`TpShares`)."""
        share = TpShares(graph, tp, sp)
        traced = graph.graph.get("param_bytes", {})
        sizes = {p: share.param(p, n) for p, n in traced.items()}
        cast = frozenset(graph.graph["cast_params"]) if "cast_params" in graph.graph else None
        own = {b: share.block_params(data, traced) for b, data in graph.nodes(data=True)}
        return cls(
            owners={p: b for b in graph.nodes for p in graph.nodes[b].get("params", [])},
            param_bytes=sizes,
            largest_param={
                b: max((sizes.get(p, 0) for p in data.get("params", [])), default=0)
                for b, data in graph.nodes(data=True)
            },
            largest_op={b: share.largest_op(data) for b, data in graph.nodes(data=True)},
            cast_params=cast,
            cast_bytes={
                b: own[b]
                if cast is None
                else sum(sizes.get(p, 0) for p in data.get("params", []) if p in cast)
                for b, data in graph.nodes(data=True)
            },
            input_bytes={
                b: sum(d.get("bytes", 0) for _, _, d in graph.in_edges(b, data=True)) / share.sequence(data)
                for b, data in graph.nodes(data=True)
            },
            position={b: i for i, b in enumerate(blocks)},
            # Plain dicts: the search reads them for every block of every plan it prices.
            block_param_bytes=own,
            block_param_tensors={b: len(data.get("params", [])) for b, data in graph.nodes(data=True)},
            saved={b: share.saved(data) for b, data in graph.nodes(data=True)},
            resaved={b: data.get("resaved_from", {}) for b, data in graph.nodes(data=True)},
            shared={b: data.get("shared_params", []) for b, data in graph.nodes(data=True)},
            output={b: data.get("output_bytes", 0) for b, data in graph.nodes(data=True)},
        )


class TpShares:
    """What one rank of a tensor group of ``tp`` holds of each traced size
    (`planner.capture.tp_roles`): the split parameters' 1/tp; of a block with a layout, its
    ``split`` ops' saved tensors' 1/tp, its ``col`` ops' whole (their input), its ``seq``
    ops' whole, or 1/tp under sequence parallelism (``sp``), as are its inputs. Without
    tensor parallelism (``tp`` 1) every size is the traced one."""

    def __init__(self, graph: nx.DiGraph, tp: int, sp: bool) -> None:
        self.tp, self.sp = tp, sp
        self.split = frozenset(graph.graph.get("tp_params", [])) if tp > 1 else frozenset()

    def param(self, fqn: str, nbytes: int) -> float:
        return nbytes / self.tp if fqn in self.split else nbytes

    def block_params(self, data: dict, traced: dict[str, int]) -> float:
        """A block's own parameters' bytes on one rank; ``traced``: every parameter's bytes."""
        split = [traced.get(p, 0) for p in data.get("params", []) if p in self.split]
        return data.get("param_bytes", 0) - sum(split) + sum(split) / self.tp

    def sequence(self, data: dict) -> int:
        """What a block's whole activations (its inputs) are divided by: tp for a block with
        a layout under sequence parallelism, else 1."""
        return self.tp if self.sp and "tp" in data else 1

    def divides(self, role: str) -> bool:
        """Whether an op of ``role`` has its activations divided across the group."""
        return divisors(role, self.tp, self.sp)[1] > 1

    def saved(self, data: dict) -> float:
        tp = data.get("tp")
        total = data.get("saved_bytes", 0)
        if tp is None or self.tp == 1:
            return total
        divided = sum(n for role, n in tp["saved"].items() if self.divides(role))
        return total - divided + divided / self.tp

    def largest_op(self, data: dict) -> float:
        ops = data.get("ops", [])
        tp = data.get("tp")
        if tp is None or self.tp == 1:
            return max((op[1] for op in ops), default=0)
        return max(
            (
                op[1] / self.tp if self.divides(role) else op[1]
                for op, role in zip(ops, tp["roles"], strict=True)
            ),
            default=0,
        )


@dataclass
class StageCost:
    blocks: list[str]
    param_bytes: int  # the weights' training dtype, tied copies included
    param_count: int
    saved_per_sample: float  # own saved bytes + tensors also kept by earlier stages
    out_per_sample: float  # the last block's output (what the loss keeps on the last stage)
    largest_param_bytes: int = 0  # the largest single parameter (the size of its temporaries)
    largest_op_per_sample: float = 0.0  # the most activation bytes one op reads and writes
    cast_param_count: int = 0  # parameters autocast copies to 16 bits (mixed precision)
    block_param_counts: list[int] = field(default_factory=list)  # per block, tied copies included
    param_tensors: int = 0  # parameter tensors, tied copies included (counted when sharded)
    recomputed: list[str] = field(default_factory=list)  # its blocks that recompute in backward
    recompute_peak_per_sample: float = 0.0  # the most one recomputing block holds in its backward


class Boundaries(NamedTuple):
    """Per-sample bytes crossing each stage boundary k -> k+1."""

    forward: list[float]
    """Activations, sent from stage k to k+1."""
    backward: list[float]
    """Their gradients, sent back from stage k+1 to k."""


def stage_cost(
    sizes: GraphSizes,
    blocks: list[str],
    *,
    weight_scale: float,
    scale: float,
    element_bytes: int,
    trace_batch: int,
    recompute_every: int = 0,
    per_block: bool = False,
) -> StageCost:
    """The cost of the stage made of ``blocks``; ``weight_scale`` and ``scale`` are training /
    traced bytes per element of weights and of activations, ``element_bytes`` the traced
    dtype's; ``recompute_every``: K of its recomputation (`planner.sharding`), 0 for none;
    ``per_block``: list each block's parameters (a sharded group gathers block by block).

    A block that recomputes keeps its inputs, not what its ops save: a tensor an earlier
    stage's block also keeps is counted with the inputs, as it is in a checkpoint."""
    members, shared, own = set(blocks), sizes.shared, sizes.block_param_bytes
    # A tied weight used here but owned by a block of another stage is a copy here.
    copies = {p for b in blocks for p in shared[b] if sizes.owners.get(p) not in members}
    tied = sizes.param_bytes
    param_bytes = sum(own[b] for b in blocks) + sum(tied.get(p, 0) for p in copies)
    largest = max([sizes.largest_param[b] for b in blocks] + [tied.get(p, 0) for p in copies])
    cast = sizes.cast_params
    cast_bytes = sum(sizes.cast_bytes[b] for b in blocks)
    cast_bytes += sum(tied.get(p, 0) for p in copies if cast is None or p in cast)
    position = sizes.position
    recomputed = [b for b in blocks if position[b] % recompute_every == 0] if recompute_every else []
    kept = [b for b in blocks if position[b] % recompute_every] if recompute_every else blocks
    saved = sum(sizes.saved[b] for b in kept) + sum(sizes.input_bytes[b] for b in recomputed)
    saved += sum(n for b in kept for src, n in sizes.resaved[b].items() if src not in members)
    copy_of = defaultdict(int)  # a tied copy is gathered with the first block of the stage that uses it
    for p in copies:
        copy_of[next(b for b in blocks if p in shared[b])] += tied.get(p, 0)
    return StageCost(
        blocks=blocks,
        param_bytes=round(param_bytes * weight_scale),
        param_count=round(param_bytes / element_bytes),
        saved_per_sample=saved / trace_batch * scale,
        out_per_sample=sizes.output[blocks[-1]] / trace_batch * scale,
        largest_param_bytes=round(largest * weight_scale),
        largest_op_per_sample=max(sizes.largest_op[b] for b in blocks) / trace_batch * scale,
        cast_param_count=round(cast_bytes / element_bytes),
        block_param_counts=[round((own[b] + copy_of[b]) / element_bytes) for b in blocks]
        if per_block
        else [],
        param_tensors=sum(sizes.block_param_tensors[b] for b in blocks) + len(copies) if per_block else 0,
        recomputed=recomputed,
        recompute_peak_per_sample=_recompute_peak(sizes, blocks, recomputed) / trace_batch * scale,
    )


def _recompute_peak(sizes: GraphSizes, blocks: list[str], recomputed: list[str]) -> int:
    """What a stage holds above its kept activations while one of its blocks recomputes, at
    most: the block's own saved tensors, less what the blocks after it kept for this
    micro-batch, which their backwards, run before it, have freed by then."""
    if not recomputed:
        return 0
    again = set(recomputed)
    peak = after = 0
    for b in reversed(blocks):
        if b in again:
            peak = max(peak, sizes.saved[b] - after)
            after += sizes.input_bytes[b]
        else:
            after += sizes.saved[b]
    return peak


def boundary_bytes(
    graph: nx.DiGraph,
    stage_of: dict[str, int],
    stages: int,
    *,
    scale: float,
    trace_batch: int,
) -> Boundaries:
    """Per-sample bytes crossing each of the ``stages - 1`` boundaries, forward and backward,
    from one rank (each rank of a tensor group sends its own copy to its peer of the next
    stage, whole: under sequence parallelism the runtime gathers a stage's output before it
    sends it, `planner.cost.tensor_parallel.TensorGroups.run_edges`, where Megatron sends each
    rank's slice).

    A tensor that skips stages is sent across every boundary it crosses.
    """
    fwd, bwd = [0.0] * max(stages - 1, 0), [0.0] * max(stages - 1, 0)
    for u, v, d in graph.edges(data=True):
        su, sv = stage_of.get(u, 0), stage_of.get(v, 0)
        for k in range(su, sv):
            fwd[k] += d.get("bytes", 0) / trace_batch * scale
            bwd[k] += d.get("grad_bytes", 0) / trace_batch * scale
    return Boundaries(fwd, bwd)


def tied_stages(graph: nx.DiGraph, stage_of: dict[str, int]) -> dict[str, list[int]]:
    """Tied parameters held by more than one stage: their gradients are summed across them."""
    held: dict[str, set[int]] = defaultdict(set)
    for b, s in stage_of.items():
        for p in graph.nodes[b].get("shared_params", []):
            held[p].add(s)
    return {p: sorted(s) for p, s in held.items() if len(s) > 1}
