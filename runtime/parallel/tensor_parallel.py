"""Tensor parallel: each block with a layout split across its tensor group (Megatron's split).

`parallelize_module` on the tensor group's mesh, one block at a time, with `ColwiseParallel`
for the layout's column-split layers and `RowwiseParallel` for its row-split ones
(`planner.tensor_parallel`): their weights become DTensor shards (`Shard(0)` and
`Shard(1)`), a row-split layer's output is all-reduced, and everything else in the block
runs on local tensors. Blocks without a layout stay whole on every rank of the group,
computing the same thing on the same input.

This is the first of the plan's transformations (torchtitan's order: tensor parallel, then
recomputation, then sharded data parallel, then the pipeline): a block is made real, split,
then wrapped. Each rank takes its shard of the block's initial values from the whole block
it made (`src_data_rank=None`): every rank of the group made the same values from (seed,
FQN), so nothing is sent.

Gradients: a split layer's local gradient is the gradient of this rank's shard; the rest
(norms, replicated blocks, a row-split layer's bias) is computed alike on every rank of the
group. So nothing is summed across the tensor group; across replicas, the local gradients
are averaged over the dp group as DDP would (`runtime.parallel.grad_sync.average_local`): DDP holds DTensor
parameters only by turning them into plain local ones, which checkpoints would then save
without their placements.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from planner.capture.source import build_model, parse_source
from planner.capture.tp_layouts import tp_layouts
from planner.errors import PlanError
from planner.plan import Plan
from planner.tensor_parallel import TpLayout


def layouts_of(plan: Plan, model: nn.Module, blocks: list[str]) -> dict[str, TpLayout]:
    """The layouts of ``blocks`` under the plan's tensor degree (none without one); a
    `PlanError` names a block the degree cannot split."""
    if plan.tp_degree == 1:
        return {}
    try:
        return tp_layouts(model, blocks, plan.tp_degree)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def check_tensor_parallel(plan: Plan) -> None:
    """Refuse, before anything starts, a degree that a split block of the plan's model cannot
    take (a `PlanError` naming the block), from a build on the meta device. A ``py:`` model
    has no layout (its blocks run whole), so it is not built here: it runs only with consent."""
    if plan.tp_degree == 1 or parse_source(plan.model.source).kind == "py":
        return
    built = build_model(parse_source(plan.model.source, plan.model.overrides), device="meta")
    layouts_of(plan, built.module, plan.model.blocks)


def split_block(block: nn.Module, layout: TpLayout, mesh: DeviceMesh) -> None:
    """Split one real block across ``mesh`` (the tensor group) as ``layout`` says, in place."""
    styles = {name: ColwiseParallel() for name in layout.colwise}
    styles.update({name: RowwiseParallel() for name in layout.rowwise})
    parallelize_module(block, mesh, styles, src_data_rank=None)
