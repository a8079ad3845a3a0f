"""Apply a plan's parallelism to the full model: one function, one documented order.

1. Build the full model on this rank's device from source and seed (runtime.rank.model).
2. By strategy:
   - ``dp``: DDP over the dp group (runtime.parallel.data_parallel);
   - ``pp`` and ``hybrid``: pipeline stages cut at the plan's FQNs with torch's schedule,
     then tied-weight sums across stages and the explicit dp all-reduce across replicas
     (runtime.parallel.pipeline_parallel, runtime.parallel.grad_sync);
   - ``mp`` (GAN): generator and discriminator on their own ranks (runtime.parallel.gan).
3. The optimizer over the parameters this rank holds.
"""

from __future__ import annotations

from typing import Protocol

import torch

from planner.errors import PlanError
from planner.plan import Plan
from runtime.parallel.data_parallel import DataParallel
from runtime.parallel.gan import DataParallelGAN, ModelParallelGAN
from runtime.parallel.mesh import Placement
from runtime.parallel.pipeline_parallel import PipelineParallel
from runtime.rank.model import FullModel
from runtime.rank.step import StepResult
from runtime.rank.task import Task


class Engine(Protocol):
    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepResult: ...

    def local_parameters(self) -> dict[str, torch.nn.Parameter]: ...

    def state_parts(self) -> list[tuple[torch.nn.Module, list[torch.optim.Optimizer]]]: ...


def parallelize(plan: Plan, full: FullModel, task: Task, where: Placement) -> Engine:
    strategy = plan.strategy
    if task.kind == "gan":
        if strategy == "dp":
            return DataParallelGAN(plan, full, task, where)
        if strategy == "mp":
            return ModelParallelGAN(plan, full, task, where)
        raise PlanError(f"strategy: the GAN trains with dp or mp, not {strategy}")
    if strategy == "dp":
        return DataParallel(plan, full, task, where)
    if strategy in ("pp", "hybrid"):
        return PipelineParallel(plan, full, task, where)
    raise PlanError(
        f"strategy: mp is the GAN's (generator and discriminator); {plan.model.source} has no such split"
    )
