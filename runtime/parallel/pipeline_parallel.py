"""Pipeline parallel with `torch.distributed.pipelining`: the plan's cuts, schedule and m.

Every rank traces the full model with `pipeline()`, split at the first block of every
stage after the first (`SplitPoint.BEGINNING` at that module's FQN). The stage modules
keep the full model's FQNs (checkpoints rely on it). A rank builds the stages it runs:
stage i runs on pipeline rank i % pp_degree, so interleaved schedules get v stages each.
The schedules are torch's; `scale_grads` (its default) turns the sum over micro-batches
into their mean.

A stage's blocks the plan recomputes are wrapped (runtime.parallel.recompute) as the stage is
made real; under a sharded ``dp_mode`` the stage is made real unit by unit, each unit sharded
over its dp group at once, the stage module the root (runtime.parallel.sharded), before
torch builds the stage around it, as torchtitan composes FSDP and pipelining. torch's schedules run every
backward of a step without gradient sync or resharding, and reduce-scatter after the stage's
last (`PipelineStage.backward_maybe_with_nosync`, `perform_reduce_grad`). FSDP2 was correct
so with GPipe, 1F1B and interleaved 1F1B, and wrong with the zero-bubble schedules
(docs/facts.md), which plans do not name. Unreplicated pipelines and replicated ones keep
their own all-reduce of the gradients (runtime.parallel.grad_sync).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.distributed.pipelining import (
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    SplitPoint,
    pipeline,
)

from planner.errors import PlanError
from planner.plan import Plan
from planner.precision import Precision
from planner.schedules import Schedule
from runtime.parallel.grad_sync import average_local, average_replicas, sum_tied
from runtime.parallel.mesh import Placement
from runtime.parallel.recompute import apply_recompute, plain_fqn, recomputing_blocks
from runtime.parallel.sharded import make_sharded, shard_meshes, watch_collectives
from runtime.parallel.tensor_parallel import block_splits, split_block
from runtime.parallel.traced_split import eager_conv1d, heads_left_to_the_tensor
from runtime.rank import timeline
from runtime.rank.amp import Amp
from runtime.rank.clock import ComputeClock
from runtime.rank.model import (
    FullModel,
    OptimizerFactory,
    flat_gradients,
    keep_gradients,
    shared_parameter_groups,
)
from runtime.rank.step import StepResult
from runtime.rank.task import Task

SCHEDULES = {Schedule.GPIPE: ScheduleGPipe, Schedule.ONE_F_ONE_B: Schedule1F1B}  # one stage per rank


def load_tracer() -> None:
    """Trace a two-layer model once: imports what `pipeline()` needs (torch.export, dynamo,
    sympy, networkx: 70-90 MB of a process here) and fills its caches. A rank does this
    before its memory baseline, so the tracer counts as the process's footprint, like torch
    itself, and the memory measured after it is what the plan's model adds."""
    tiny = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    pipeline(tiny, mb_args=(torch.zeros(1, 2),), split_spec={"1": SplitPoint.BEGINNING})


def split_model(plan: Plan, full: FullModel, micro_batch: int, device: torch.device):
    """`pipeline()` over the full model, cut where the plan's stages begin.

    Traced without autograd: a module that turns it off (Hugging Face's rotary embedding,
    under ``torch.no_grad``) is otherwise recorded as a higher-order op whose inputs torch's
    unflattening does not pass (the stage failed at its first forward). The trace records
    the ops alone; the stages run them with autograd on. The trace's devices are then moved
    off meta (`_unpin_meta`). Grouped-query attention is traced with its key/value head
    count left to the tensor (`runtime.parallel.traced_split`), so that a stage split across
    a tensor group computes on its share of the heads."""
    split_spec = {stage.first: SplitPoint.BEGINNING for stage in plan.stages[1:]}
    example = tuple(a.expand(micro_batch, *a.shape[1:]).contiguous() for a in full.example_args)
    try:
        with torch.no_grad(), heads_left_to_the_tensor():  # a tensor group's shapes
            pipe = pipeline(full.module, mb_args=example, split_spec=split_spec)
    except Exception as exc:
        raise PlanError(f"stages: torch.distributed.pipelining could not cut the model there: {exc}") from exc
    _unpin_meta(pipe.split_gm, device)
    if pipe.num_stages != len(plan.stages):
        raise PlanError(
            f"stages: cutting at {sorted(split_spec)} gave {pipe.num_stages} stages, not {len(plan.stages)}"
        )
    return pipe


def _unpin_meta(root: torch.nn.Module, device: torch.device) -> None:
    """Point every device the trace wrote into the stages' graphs at ``device``: the model
    is traced on the meta device, and an op that moves a tensor to its input's device
    (Hugging Face's rotary embedding: ``inv_freq.to(x.device)``) is recorded as a move to
    meta, which would turn the real tensor back into a shapeless one."""
    meta = torch.device("meta")

    def fix(value):
        if isinstance(value, torch.device) and value == meta:
            return device
        if isinstance(value, (list, tuple)):
            return type(value)(fix(v) for v in value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    for module in root.modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            node.args, node.kwargs = fix(node.args), fix(node.kwargs)
        if isinstance(module, torch.fx.GraphModule):
            module.recompile()


class PipelineParallel:
    """One pipeline rank: its stages, torch's schedule, then tied and replica gradients."""

    def __init__(self, plan: Plan, full: FullModel, task: Task, where: Placement) -> None:
        p, m = plan.pp_degree, plan.training.micro_batches
        share = plan.replicas[where.rank.dp_index].batch_share
        self.weight = share / plan.training.global_batch
        self.dp_degree = plan.dp_degree
        self.dp_group = None  # set by `replicate` when there are replicas to average
        self.sharded = plan.dp_mode.sharded
        self.tensor_parallel = plan.tp_degree > 1
        # FSDP averages over the group as DDP does: a replica's loss is scaled by P b_i / B
        # (runtime.parallel.data_parallel says why), and the losses reported are unscaled.
        self.loss_scale = plan.dp_degree * self.weight if self.sharded else 1.0
        pipe = split_model(plan, full, share // m, where.device)
        num_stages = pipe.num_stages
        mine = [i for i in range(num_stages) if i % p == where.rank.pp_index]
        self.holds_first, self.holds_last = 0 in mine, num_stages - 1 in mine
        self.clock = ComputeClock(where.device)
        precision = plan.training.precision
        # Under FSDP's mixed precision the gathered weights are already in the compute dtype:
        # autocast would have nothing to cast, and stages return float32, as traced.
        self.amp = Amp(Precision.FP32 if self.sharded else precision, where.device)
        recomputing = set(recomputing_blocks(plan))
        meshes = shard_meshes(plan, where) if self.sharded else None
        if meshes is not None and where.device.type == "cpu":
            watch_collectives(self.clock)
        for i, blocks in enumerate(plan.stage_blocks()):
            if i not in mine:  # only this rank's stages become real; the others stay on meta
                continue
            module = pipe.get_stage_module(i)
            splits = block_splits(plan, full.module, blocks)
            for block, split in splits.items():  # while on meta: a traced Conv1D fixes its width
                eager_conv1d(module, full.module, block, split.layout)
            if meshes is not None:  # made real unit by unit, each sharded at once
                make_sharded(full, module, blocks, plan, where, meshes, output_dtype=torch.float32)
                continue
            full.materialise(module, where.device)
            # Tensor parallel first: the layouts read from the model as built, applied to the
            # stage's traced blocks (runs of split blocks end at the stage's edges: a stage
            # sends and receives its activations whole).
            for block, split in splits.items():
                split_block(module.get_submodule(block), split, where.tp_mesh)
            apply_recompute(module, [b for b in blocks if b in recomputing])
        self.stages = [pipe.build_stage(i, where.device, where.pp_group) for i in mine]
        timeline.watch_pipeline_p2p()  # which waits are for a peer's data, which for sends
        for stage in self.stages:
            stage.submod.forward = self.amp.wrap_stage(stage.submod.forward, last=stage.is_last)
            self.clock.attach_forward(stage.submod)
            # Backward of one micro-batch, without its sends and receives (the schedule
            # posts those separately): the stage's backward compute.
            stage.backward_one_chunk = self.clock.wrap(stage.backward_one_chunk)
        loss_fn = self.clock.wrap(
            self.amp.wrap(lambda out, target: self.amp.scale(task.loss_fn(out, target) * self.loss_scale))
        )
        if plan.schedule == Schedule.INTERLEAVED_1F1B:
            self.schedule = ScheduleInterleaved1F1B(self.stages, n_microbatches=m, loss_fn=loss_fn)
        else:
            self.schedule = SCHEDULES[plan.schedule](self.stages[0], n_microbatches=m, loss_fn=loss_fn)
        self.tied = _tied_copies(plan, pipe, full, self.stages, where)
        self.params = _distinct([param for stage in self.stages for param in stage.submod.parameters()])
        self.flat_grads: torch.Tensor | None = None  # the replicas' gradients, one buffer
        self.optimizers: list[torch.optim.Optimizer] = []
        _release_other_stages(pipe, mine)
        del pipe

    def replicate(self, where: Placement) -> None:
        """Average the replicas' gradients over the dp group after every backward, by an
        explicit all-reduce (runtime.parallel.grad_sync; runtime.parallel.parallelize, step 5).
        One replica (``pp``) has nothing to average; sharded stages are averaged by FSDP."""
        self.dp_group = where.dp_group if self.dp_degree > 1 and not self.sharded else None

    def build_optimizers(self, make_optimizer: OptimizerFactory) -> None:
        """One optimizer per stage, so that a checkpoint pairs each stage module with its
        own state; a tensor two local stages share is stepped by the first one only
        (runtime.parallel.parallelize, step 6)."""
        owned: set[int] = set()
        for stage in self.stages:
            params = [p for p in stage.submod.parameters() if id(p) not in owned]
            owned.update(id(p) for p in params)
            self.optimizers.append(make_optimizer(params))

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepResult:
        # Here, not at construction: loading a checkpoint initialises the optimizer state only
        # while no parameter has a gradient (torch.distributed.checkpoint), and frees them.
        if self.dp_group is not None and not self.tensor_parallel:
            self.flat_grads = flat_gradients(self.params, self.flat_grads)
        else:  # a DTensor's gradient cannot be a view of a flat buffer
            keep_gradients(self.params)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=False)
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.holds_first else ()
        kwargs = {"target": targets, "losses": losses} if self.holds_last else {}
        self.schedule.step(*args, return_outputs=False, **kwargs)
        t = time.perf_counter()
        for copies, group in self.tied:
            sum_tied(copies, group)
        if self.dp_group is not None and self.tensor_parallel:
            average_local(self.params, self.dp_group, self.weight)
        elif self.dp_group is not None:
            average_replicas(self.flat_grads, self.weight, self.dp_group)
        if self.tied or self.dp_group is not None:
            timeline.waited("communication", t, time.perf_counter(), desc="tied and replica gradients")
        t = time.perf_counter()
        self.amp.step(self.optimizers)
        optimizer_s = time.perf_counter() - t
        timeline.mark("optimizer", t, t + optimizer_s)
        loss = self.amp.unscaled(torch.stack(losses).mean().item()) / self.loss_scale if losses else None
        return StepResult(loss, self.clock.take(), optimizer_s, waits=timeline.WAITS.take())

    def local_parameters(self) -> dict[str, torch.nn.Parameter]:
        out: dict[str, torch.nn.Parameter] = {}
        for stage in self.stages:
            for fqn, param in stage.submod.named_parameters():
                out.setdefault(plain_fqn(fqn), param)
        return out

    def state_parts(self):
        return [(stage.submod, [opt]) for stage, opt in zip(self.stages, self.optimizers, strict=True)]


def _release_other_stages(pipe, mine: list[int]) -> None:
    """Drop the modules of the stages other ranks run. torch's stages keep the split graph
    (``stage.pipe_info.graph``), whose owning module holds every stage's module: without
    this, each pipeline rank kept the whole model's parameters for the length of the run."""
    others = {id(pipe.get_stage_module(i)) for i in range(pipe.num_stages) if i not in mine}
    for name, module in list(pipe.split_gm.named_children()):
        if id(module) in others:
            setattr(pipe.split_gm, name, torch.nn.Module())


def _distinct(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


def _tied_copies(plan: Plan, pipe, full: FullModel, stages, where: Placement):
    """For each set of pipeline ranks sharing tied weights: this rank's copies and a group.

    Every rank computes the same list from the full pipe, and creates the same groups in
    the same order (`new_group` is collective over the whole world).
    """
    p = plan.pp_degree
    alias = {fqn: k for k, fqns in enumerate(shared_parameter_groups(full.module)) for fqn in fqns}
    holders: dict[int, set[int]] = {}
    for i in range(pipe.num_stages):
        for fqn, _ in pipe.get_stage_module(i).named_parameters():
            if plain_fqn(fqn) in alias:
                holders.setdefault(alias[plain_fqn(fqn)], set()).add(i % p)
    by_ranks: dict[tuple[int, ...], list[int]] = {}
    for k, pp_ranks in sorted(holders.items()):
        by_ranks.setdefault(tuple(sorted(pp_ranks)), []).append(k)
    out = []
    for pp_ranks, tied in by_ranks.items():
        group = None
        if len(pp_ranks) > 1:
            for d in range(plan.dp_degree):
                for t in range(plan.tp_degree):  # a tied weight is whole on its tensor group
                    ranks = [plan.rank_of(d, q, t).rank for q in pp_ranks]
                    made = dist.new_group(ranks)
                    if (d, t) == (where.rank.dp_index, where.rank.tp_index):
                        group = made
        if where.rank.pp_index not in pp_ranks:
            continue
        copies = []
        for k in tied:
            local = [
                param
                for stage in stages
                for fqn, param in stage.submod.named_parameters()
                if alias.get(plain_fqn(fqn)) == k
            ]
            copies.append(_distinct(local))
        out.append((copies, group))
    return out
