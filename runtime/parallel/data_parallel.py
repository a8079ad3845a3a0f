"""Data parallel: `DistributedDataParallel` over the mesh's dp group.

DDP averages gradients: g = (1/P) sum_i g_i. Replica i's loss is a mean over its b_i
samples, so with unequal batch shares its loss is scaled by P * b_i / B: then
(1/P) sum_i (P b_i / B) g_i = sum_i (b_i / B) g_i, the gradient of the mean over all B
samples, exactly what one process computes on the whole batch.

With tensor parallelism (``tp_degree`` > 1) the blocks are split across each tensor group
as the model is made real (runtime.parallel.tensor_parallel), and the replicas' local
gradients are averaged after backward by one all-reduce over the dp group, with the same
loss scaling, instead of by DDP.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from planner.plan import Plan
from runtime.parallel.grad_sync import average_local
from runtime.parallel.mesh import Placement
from runtime.parallel.recompute import apply_recompute, plain_fqn, recomputing_blocks
from runtime.parallel.tensor_parallel import block_splits, split_block
from runtime.rank import timeline
from runtime.rank.amp import Amp
from runtime.rank.clock import ComputeClock
from runtime.rank.model import FullModel, OptimizerFactory
from runtime.rank.step import StepResult
from runtime.rank.task import Task


def replicate_first(module: torch.nn.Module, group) -> None:
    """Every replica starts from the weights of the group's first rank, as DDP's initial
    sync makes them, but broadcast tensor by tensor and in place. DDP's own sync flattens
    the whole model into one buffer, and on a random fifth of the ranks here that buffer
    stayed alive for the whole run: a second copy of the parameters at every peak."""
    source = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=source, group=group)


def wrap_ddp(module: torch.nn.Module, where: Placement) -> DistributedDataParallel:
    """DDP over the mesh's dp group, its replicas made equal by `replicate_first`."""
    replicate_first(module, where.dp_group)
    device_ids = [where.device.index] if where.device.type == "cuda" else None
    # Gradients live in DDP's buckets: without gradient_as_bucket_view, DDP keeps a second
    # copy of them.
    return DistributedDataParallel(
        module,
        device_ids=device_ids,
        process_group=where.dp_group,
        gradient_as_bucket_view=True,
        init_sync=False,
    )


class DataParallel:
    """The whole model on every rank: DDP over the dp group, one optimizer. The sharded
    engine (runtime.parallel.sharded) is this one with FSDP in place of DDP."""

    def __init__(self, plan: Plan, full: FullModel, task: Task, where: Placement) -> None:
        share = plan.replicas[where.rank.dp_index].batch_share
        self.loss_scale = plan.dp_degree * share / plan.training.global_batch
        self.task = task
        self.amp = Amp(plan.training.precision, where.device)
        self.clock = ComputeClock(where.device)
        self.tensor_parallel = plan.tp_degree > 1
        self.dp_group = None  # the group the local gradients are averaged over, if not DDP's
        self.module = self.make_real(plan, full, where)
        self.clock.attach_forward(self.module)
        self.model: nn.Module = self.module  # DDP around it, once replicated
        self.optimizer: torch.optim.Optimizer | None = None

    def make_real(self, plan: Plan, full: FullModel, where: Placement) -> nn.Module:
        """The whole model real on this rank, its blocks split across the tensor group
        (runtime.parallel.tensor_parallel), then its recomputing blocks wrapped (before DDP)."""
        module = full.materialise(full.module, where.device)
        for block, split in block_splits(plan, module, plan.model.blocks).items():
            split_block(module.get_submodule(block), split, where.tp_mesh)
        apply_recompute(module, recomputing_blocks(plan))
        return module

    def replicate(self, where: Placement) -> None:
        """DDP over the dp group (runtime.parallel.parallelize, step 5); with tensor
        parallelism, the local gradients averaged after backward instead
        (`runtime.parallel.grad_sync.average_local`)."""
        if self.tensor_parallel:
            self.dp_group = where.dp_group
        else:
            self.model = wrap_ddp(self.module, where)
        for p in self.module.parameters():
            p.register_post_accumulate_grad_hook(self.clock.grad_ready)

    def build_optimizers(self, make_optimizer: OptimizerFactory) -> None:
        """One optimizer over the whole model (runtime.parallel.parallelize, step 6)."""
        self.optimizer = make_optimizer(list(self.module.parameters()))

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast():
            output = self.model(inputs)
            with self.clock.span():
                loss = self.task.loss_fn(self.loss_input(output), targets)
        # Backward compute ends when the last gradient is accumulated; DDP's all-reduce
        # of the final buckets after that is communication, not compute.
        self.clock.backward_started()
        self.amp.scale(loss * self.loss_scale).backward()
        self.backward_returned()
        self.clock.backward_finished()
        if self.dp_group is not None:  # tensor parallel: no DDP to average the replicas
            t = time.perf_counter()
            average_local(list(self.module.parameters()), self.dp_group)
            timeline.waited("communication", t, time.perf_counter(), desc="dp all-reduce")
        t = time.perf_counter()
        self.amp.step([self.optimizer])
        optimizer_s = time.perf_counter() - t
        timeline.mark("optimizer", t, t + optimizer_s)
        return StepResult(loss.item(), self.clock.take(), optimizer_s, waits=timeline.WAITS.take())

    def loss_input(self, output: torch.Tensor) -> torch.Tensor:
        """What the loss is taken of: the model's output (autocast picks the loss's dtype)."""
        return output

    def backward_returned(self) -> None:
        """After the backward call: DDP's hooks have marked when each gradient landed."""

    def local_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {plain_fqn(name): p for name, p in self.module.named_parameters()}

    def state_parts(self):
        """What a checkpoint holds: (module, its optimizers) pairs keyed by full-model FQNs."""
        return [(self.module, [self.optimizer])]
