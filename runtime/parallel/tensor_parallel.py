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

Sequence parallelism (Megatron-SP, Korthikanti et al. 2022), an option of the plan: between
split blocks, and through a split block's norms and residual adds, each rank of the group
holds its slice of the sequence (dim 1). The first split block of a run takes its input
whole and keeps its own slice (nothing sent; its backward all-gathers the gradient), a
sub-layer holding split layers (attention, MLP) all-gathers its input's slices, its
row-split layers reduce-scatter their outputs in place of the all-reduce, the block's norms
run on their slice (`SequenceParallel`: their weights' gradients summed over the group by
DTensor), and the last split block of a run all-gathers its output for the blocks after it
(the final norm and the head, whole on every rank). The sequence length must divide by the
degree (the plan checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from planner.capture.source import build_model, parse_source
from planner.capture.tp_layouts import tp_layouts
from planner.errors import PlanError
from planner.plan import Plan
from planner.tensor_parallel import TpLayout
from runtime.parallel.conv1d_parallel import is_conv1d, split_columns, split_rows
from runtime.parallel.traced_split import divide_fused_cuts, drop_metadata_checks, hidden_state_index


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
    has no layout (its blocks run whole), so it is not built here: it runs only with
    consent."""
    kind = parse_source(plan.model.source).kind
    if plan.tp_degree == 1 or kind == "py":
        return
    built = build_model(parse_source(plan.model.source, plan.model.overrides), device="meta")
    layouts_of(plan, built.module, plan.model.blocks)


SEQUENCE = Shard(1)
"""A sequence-parallel activation: (batch, sequence, features), split along the sequence."""


@dataclass(frozen=True)
class BlockSplit:
    """How one block is split across its tensor group."""

    layout: TpLayout
    sequence_parallel: bool = False
    scatters_input: bool = False
    """Under sequence parallelism, the first split block of a run: its input comes whole."""
    gathers_output: bool = False
    """Under sequence parallelism, the last of a run: the blocks after it take it whole."""


def block_splits(plan: Plan, model: nn.Module, blocks: list[str]) -> dict[str, BlockSplit]:
    """The split of each block of ``blocks`` (in execution order) that has a layout under the
    plan's tensor degree; a `PlanError` names a block the degree cannot split."""
    layouts = layouts_of(plan, model, blocks)
    sp = plan.sequence_parallel
    out = {}
    for i, block in enumerate(blocks):
        if block in layouts:
            after_whole = i == 0 or blocks[i - 1] not in layouts
            before_whole = i == len(blocks) - 1 or blocks[i + 1] not in layouts
            out[block] = BlockSplit(layouts[block], sp, sp and after_whole, sp and before_whole)
    return out


class TracedColwise(ColwiseParallel):
    """`ColwiseParallel` for a linear layer as `pipeline()` traced it: a module holding
    ``weight`` (out, in) and ``bias`` whose graph calls ``aten.linear`` (torch's style takes
    only ``nn.Linear``). The same partition and hooks: the traced call computes on the
    DTensor weight as ``nn.Linear`` does."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return _as_linear(self, module, device_mesh)


class TracedRowwise(RowwiseParallel):
    """`RowwiseParallel` for a traced linear layer (`TracedColwise` says why)."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        self.desired_input_layouts = (Shard(-1),)  # as torch's style sets it for a linear layer
        return _as_linear(self, module, device_mesh)


class TracedSequenceParallel(SequenceParallel):
    """`SequenceParallel` for a norm as `pipeline()` traced it, which may return several
    tensors (Llama's RMSNorm returns its float32 input too, the residual the trace reuses):
    each made local."""

    @staticmethod
    def _prepare_output_fn(use_local_output, mod, outputs, device_mesh):
        if not isinstance(outputs, (list, tuple)):
            return SequenceParallel._prepare_output_fn(use_local_output, mod, outputs, device_mesh)
        return [o.to_local() if use_local_output and isinstance(o, DTensor) else o for o in outputs]


def _as_linear(style: ColwiseParallel | RowwiseParallel, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """``module`` distributed as ``style`` distributes an ``nn.Linear``, whatever its class."""
    return distribute_module(
        module,
        mesh,
        style._partition_linear_fn,
        partial(style._prepare_input_fn, style.input_layouts, style.desired_input_layouts),
        partial(style._prepare_output_fn, style.output_layouts, style.use_local_output),
    )


def _styles(block: nn.Module, paths: tuple[str, ...], style: type, traced: type, **options) -> dict:
    """``style`` for each of ``paths`` that is an ``nn.Linear``, ``traced`` for one that a
    trace turned into a module of its own (a pipeline stage's); none for a ``Conv1D``."""
    layers = {path: block.get_submodule(path) for path in paths}
    layers = {path: m for path, m in layers.items() if not is_conv1d(m)}
    pick = {path: style if isinstance(m, nn.Linear) else traced for path, m in layers.items()}
    return {path: chosen(**options) for path, chosen in pick.items()}


def _split_conv1d(block: nn.Module, layout: TpLayout, mesh: DeviceMesh, rows_out: Placement) -> None:
    """Split the block's ``Conv1D`` layers (runtime.parallel.conv1d_parallel) and divide the
    widths its layout names by the degree."""
    for path in layout.colwise:
        if is_conv1d(layer := block.get_submodule(path)):
            split_columns(layer, mesh, layout.parts(path))
    for path in layout.rowwise:
        if is_conv1d(layer := block.get_submodule(path)):
            split_rows(layer, mesh, rows_out)
    for width in layout.widths:
        owner, _, name = width.rpartition(".")
        module = block.get_submodule(owner) if owner else block
        if not hasattr(module, "graph"):  # a traced one has the width in its graph: below
            setattr(module, name, getattr(module, name) // mesh.size())
    divide_fused_cuts(block, layout, mesh.size())


def split_block(block: nn.Module, split: BlockSplit, mesh: DeviceMesh) -> None:
    """Split one real block across ``mesh`` (the tensor group) as ``split`` says, in place:
    a block of the model as built, or of a pipeline stage as `pipeline()` traced it."""
    layout = split.layout
    rows_out: Placement = SEQUENCE if split.sequence_parallel else Replicate()
    _split_conv1d(block, layout, mesh, rows_out)
    styles: dict[str, ParallelStyle] = _styles(block, layout.colwise, ColwiseParallel, TracedColwise)
    styles.update(_styles(block, layout.rowwise, RowwiseParallel, TracedRowwise, output_layouts=rows_out))
    if split.sequence_parallel:
        split_layers = (*layout.colwise, *layout.rowwise)
        norms = set()
        for name, child in block.named_children():
            inner = {p[len(name) + 1 :].partition(".")[0] for p in split_layers if p.startswith(name + ".")}
            if name in split_layers or inner:
                index = hidden_state_index(child, inner)
                child.register_forward_pre_hook(_gathers_input(mesh, index), with_kwargs=True)
            elif any(True for _ in child.parameters()):  # a norm: per token, on this rank's slice
                traced = hasattr(child, "graph")
                styles[name] = (TracedSequenceParallel if traced else SequenceParallel)(use_local_output=True)
                drop_metadata_checks(child)
                norms.add(name)
        if split.scatters_input:
            index = hidden_state_index(block, norms)
            block.register_forward_pre_hook(_scatters_input(mesh, index), with_kwargs=True)
        if split.gathers_output:
            block.register_forward_hook(lambda _m, _a, out: _redistribute(out, mesh, SEQUENCE, Replicate()))
    parallelize_module(block, mesh, styles, src_data_rank=None)


def _redistribute(x: torch.Tensor, mesh: DeviceMesh, held: Placement, wanted: Placement) -> torch.Tensor:
    """This rank's part of ``x`` (held as ``held`` across ``mesh``) as ``wanted`` places it;
    differentiable (a gather's backward keeps this rank's slice of the gradient, a slice's
    backward gathers it)."""
    return DTensor.from_local(x, mesh, [held], run_check=False).redistribute(mesh, [wanted]).to_local()


def _hidden_state_hook(mesh: DeviceMesh, held: Placement, wanted: Placement, index: int | None):
    """A forward pre-hook redistributing a module's hidden state: its positional argument
    ``index`` (a traced module's, `traced_split.hidden_state_index`), else its first, or its
    ``hidden_states`` keyword (a Hugging Face attention's)."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if args:
            i = index or 0
            return (*args[:i], _redistribute(args[i], mesh, held, wanted), *args[i + 1 :]), kwargs
        return args, {**kwargs, "hidden_states": _redistribute(kwargs["hidden_states"], mesh, held, wanted)}

    return hook


def _gathers_input(mesh: DeviceMesh, index: int | None = None):
    """A sub-layer with split layers computes on the whole sequence: all-gather its input."""
    return _hidden_state_hook(mesh, SEQUENCE, Replicate(), index)


def _scatters_input(mesh: DeviceMesh, index: int | None = None):
    """The first split block of a run keeps its slice of the whole input it is given."""
    return _hidden_state_hook(mesh, Replicate(), SEQUENCE, index)
