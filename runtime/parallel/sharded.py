"""Sharded data parallel: FSDP2's `fully_shard` per block, then on the root it belongs to.

The plan's ``dp_mode`` (`planner.sharding`) says how: ``full_shard`` frees a block's gathered
parameters after its forward (``reshard_after_forward=True``), ``shard_grad_op`` keeps them
for its backward, and ``hybrid_shard`` shards over the group's ranks on one node and
replicates across nodes (a 2-D mesh: replicate x shard). Each block of the plan is one FSDP
unit (blocks sharing a tied weight form one unit together), so what is gathered at once is
what the price counts (`planner.cost.sharded`); the root's own unit holds what no block
does. `make_sharded` does this for a whole model (the engine below) and for each pipeline
stage (runtime.parallel.pipeline_parallel, where the stage module is the root and torch's
schedule drives FSDP: no gradient sync until the stage's last backward).

The model is made real unit by unit from the meta device, each unit sharded as soon as it
is real, with the values (seed, FQN) give it, the same on every rank
(runtime.rank.materialise): no broadcast, and a rank holds its shards and one unit whole at
a time, never the whole model (a model built on the CPU, which meta cannot build, is whole
from the start).

Precision: under mixed precision FSDP's `MixedPrecisionPolicy` gathers the parameters in the
compute dtype and reduces gradients in fp32, in place of autocast (the weights the forward
sees are already in the compute dtype); the loss is taken in fp32, as autocast takes it.
fp16-mixed is not run sharded (`runtime.supervise.launch.preflight` refuses it).

Averaging: the reduce-scatter divides by the group, as DDP's all-reduce does, so a replica's
loss is scaled by P b_i / B (runtime.parallel.data_parallel says why).
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

from planner.plan import Plan
from planner.precision import Precision
from planner.sharding import DpMode
from runtime.parallel.data_parallel import DataParallel
from runtime.parallel.mesh import Placement
from runtime.parallel.recompute import apply_recompute, recomputing_blocks
from runtime.parallel.tensor_parallel import block_splits, split_block
from runtime.rank import timeline
from runtime.rank.amp import Amp
from runtime.rank.clock import ComputeClock
from runtime.rank.model import FullModel
from runtime.rank.task import Task


@dataclass(frozen=True)
class ShardMeshes:
    """The mesh FSDP shards over and the tensor group's mesh, cut from one root mesh: FSDP2
    shards a tensor-parallel DTensor only over a mesh that shares its root with the tensor
    group's (2-D parameters: (dp, tp), or (replicate, shard, tp) for ``hybrid_shard``)."""

    fsdp: DeviceMesh
    tp: DeviceMesh


def shard_meshes(plan: Plan, where: Placement) -> ShardMeshes:
    """The meshes this rank's stages are sharded and split over: its dp group and its tensor
    group, or for ``hybrid_shard`` its dp group's ranks laid out (node, rank in node),
    replicated across the first dimension, each with its tensor group (a tensor group lies on
    one node, so every tensor index of a replica is on the same node). Every rank builds them
    (they create process groups), from the grid of every pipeline rank's group, so all ranks
    create the same groups in the same order."""
    if plan.dp_mode != DpMode.HYBRID_SHARD:
        return ShardMeshes(where.mesh["dp"], where.tp_mesh)
    tp = range(plan.tp_degree)
    grid = []
    for q in range(plan.pp_degree):
        by_node: dict[int, list[list[int]]] = defaultdict(list)
        for dp in range(plan.dp_degree):
            by_node[plan.rank_of(dp, q).node].append([plan.rank_of(dp, q, t).rank for t in tp])
        grid.append([by_node[node] for node in sorted(by_node)])
    # One shape for every group (the plan checks it: `planner.sharding.hybrid_shard_error`).
    mesh = DeviceMesh(
        where.device.type, torch.tensor(grid), mesh_dim_names=("pp", "replicate", "shard", "tp")
    )
    return ShardMeshes(mesh["replicate", "shard"], mesh["tp"])


def mixed_precision(precision: Precision, output_dtype: torch.dtype | None = None) -> MixedPrecisionPolicy:
    """Gather in the compute dtype and reduce in fp32 under mixed precision; else as held.
    ``output_dtype``: what the unit returns (a pipeline stage sends what the split traced)."""
    recipe = precision.recipe
    if not recipe.mixed:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(
        param_dtype=getattr(torch, recipe.compute), reduce_dtype=torch.float32, output_dtype=output_dtype
    )


def make_sharded(
    full: FullModel,
    module: nn.Module,
    blocks: list[str],
    plan: Plan,
    where: Placement,
    meshes: ShardMeshes,
    *,
    output_dtype: torch.dtype | None = None,
) -> None:
    """Make ``module`` (the whole model on meta, or a pipeline stage cut from it) real unit by
    unit, each sharded as soon as it is real: `fully_shard` on each FSDP unit of ``blocks``
    (`fsdp_units`), a block with a tensor-parallel layout split across its tensor group
    first (runtime.parallel.tensor_parallel; FSDP then shards each rank's shards over the dp
    group: ``meshes`` are axes of one root mesh), a recomputing block wrapped
    next (runtime.parallel.recompute), then on ``module``, the root that holds what no
    block does. A rank so holds its shards and one
    unit whole at a time, never the whole model: the values each unit gets are those of
    (seed, FQN), as everywhere (runtime.rank.materialise)."""
    options = {"mesh": meshes.fsdp, "reshard_after_forward": plan.dp_mode.reshards_after_forward}
    precision = plan.training.precision
    recomputing = set(recomputing_blocks(plan))
    splits = block_splits(plan, full.module, blocks)  # layouts read from the model as built
    for unit in fsdp_units(module, blocks):
        full.materialise_parts([(module.get_submodule(b), b) for b in unit], where.device)
        for b in unit:  # tensor parallel first: FSDP then shards each rank's DTensor shards
            if b in splits:
                split_block(module.get_submodule(b), splits[b], meshes.tp)
        apply_recompute(module, [b for b in unit if b in recomputing])
        parts = [module.get_submodule(b) for b in unit]  # a recomputing block's wrapper, under its FQN
        fully_shard(parts if len(parts) > 1 else parts[0], mp_policy=mixed_precision(precision), **options)
    full.materialise(module, where.device)  # what no block holds
    fully_shard(module, mp_policy=mixed_precision(precision, output_dtype), **options)


def fsdp_units(module: nn.Module, blocks: list[str]) -> list[list[str]]:
    """``blocks`` grouped into FSDP units: each block its own, except blocks that share a
    parameter (a tied embedding and head), which form one unit together. FSDP2 shards a
    tensor in the one unit that holds it; two units would each shard their own copy.

    >>> lin = nn.Linear(2, 2)
    >>> fsdp_units(nn.Sequential(lin, nn.ReLU(), nn.Linear(2, 2), lin), ["0", "1", "2", "3"])
    [['0', '3'], ['1'], ['2']]
    """
    owner: dict[int, int] = {}  # parameter -> the unit that holds it
    units: list[list[str]] = []
    for block in blocks:
        tensors = {id(p) for p in module.get_submodule(block).parameters()}
        shared = sorted({owner[t] for t in tensors if t in owner})
        if shared:  # join the first unit holding one of its tensors (and merge the others into it)
            into = units[shared[0]]
            for k in shared[1:]:
                into += units[k]
                units[k] = []
                owner.update({t: shared[0] for t, u in owner.items() if u == k})
            into.append(block)
            owner.update(dict.fromkeys(tensors, shared[0]))
        else:
            owner.update(dict.fromkeys(tensors, len(units)))
            units.append([block])
    return [u for u in units if u]


FSDP_WORK = ("unshard", "wait_for_unshard", "post_backward", "reshard", "finalize_backward")
"""FSDP2's per-unit work besides the model's own: gathers, reduce-scatters and their copies."""

_watched: list[ComputeClock] = []  # the clock FSDP's work is taken out of (one engine per process)


def watch_collectives(clock: ComputeClock) -> None:
    """On a CPU rank, time FSDP's work (`FSDP_WORK`, each unit's gathers and reduce-scatters
    with their copies) as communication, and take it out of ``clock``'s compute when it runs
    inside a forward or backward, as the price counts it (`planner.cost.sharded`: a CPU rank
    hides no collective). FSDP gives no hook for its collectives, so its unit class's methods
    are wrapped, once per process; a call made inside another (a prefetch inside a forward
    hook) counts once. A CUDA rank runs them on streams beside compute: not wrapped."""
    _watched[:] = [clock]
    if getattr(FSDPParamGroup, "_stagecraft_watched", False):
        return
    depth = [0]

    def timed(method):
        @functools.wraps(method)
        def run(*args, **kwargs):
            if depth[0]:
                return method(*args, **kwargs)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                end = time.perf_counter()
                timeline.waited("communication", t, end, desc=f"fsdp {method.__name__}")
                if _watched and _watched[0].counting():
                    _watched[0].exclude(end - t)

        return run

    for name in FSDP_WORK:
        setattr(FSDPParamGroup, name, timed(getattr(FSDPParamGroup, name)))
    FSDPParamGroup._stagecraft_watched = True


class ShardedDataParallel(DataParallel):
    """The whole model sharded over the dp group (FSDP2), one optimizer over the shards:
    data parallel's step (runtime.parallel.data_parallel) with FSDP in place of DDP."""

    def __init__(self, plan: Plan, full: FullModel, task: Task, where: Placement) -> None:
        super().__init__(plan, full, task, where)  # made real unit by unit, and sharded
        self.mixed = plan.training.precision.recipe.mixed
        if self.mixed:  # FSDP casts the gathered weights itself: autocast would have none to cast
            self.amp = Amp(Precision.FP32, where.device)
        if where.device.type == "cpu":
            watch_collectives(self.clock)

    def make_real(self, plan: Plan, full: FullModel, where: Placement) -> nn.Module:
        """The model real unit by unit, each sharded over the dp group as it is made
        (`make_sharded`): steps 4 and 5 of runtime.parallel.parallelize at once, so that no
        rank holds the whole model."""
        make_sharded(full, full.module, plan.model.blocks, plan, where, shard_meshes(plan, where))
        return full.module

    def replicate(self, where: Placement) -> None:
        """Nothing left to do: the model was sharded as it was made real (`make_real`)."""

    def loss_input(self, output: torch.Tensor) -> torch.Tensor:
        """The loss in fp32, as autocast takes it, when FSDP computed in 16 bits."""
        return output.float() if self.mixed else output

    def backward_returned(self) -> None:
        """FSDP's reduce-scatters end the backward and its hooks hide when the last gradient
        landed: the whole backward call is counted (the gathers it waited for with it)."""
        self.clock.grad_ready()
