"""Apply a plan's parallelism to its model: one function, one documented order.

`parallelize` composes the techniques in a fixed order, each step working on what the one
before it left, as torchtitan's ``parallelize_*`` functions do:

1. Build the full model on the meta device from source and seed (runtime.rank.model), and
   the task it trains (runtime.rank.task). Each engine below makes real only the part this
   rank holds (runtime.rank.materialise).
2. Tensor parallel: each block with a layout split across its tensor group as the engine
   makes it real (runtime.parallel.tensor_parallel), before anything wraps it; in a
   pipeline, the stage's traced block.
3. Pipeline stages, if pp > 1: the model cut at the plan's FQNs, this rank keeping its own
   stages, with torch's schedule (runtime.parallel.pipeline_parallel); a GAN's stages are its
   two networks, each on its own rank, with the hand-written adversarial step
   (runtime.parallel.gan). With pp = 1 the rank holds the whole model.
4. Recomputation: the blocks the plan recomputes wrapped in `checkpoint_wrapper`
   (runtime.parallel.recompute) as the engine makes them real, before step 5 wraps them.
5. Data parallel over the dp group: DDP around a whole model (runtime.parallel.data_parallel),
   or FSDP2's `fully_shard` per block and on the root under a sharded ``dp_mode``
   (runtime.parallel.sharded; a pipeline's stages are sharded so as they are made real, each
   stage module its own root, because torch builds its stages around them), or, after a
   replicated pipeline's backward, an explicit all-reduce of its gradients across replicas
   (runtime.parallel.grad_sync).
6. The optimizer over the parameters this rank holds, built by one function
   (`runtime.rank.model.make_optimizer`) that every engine is handed.

A GAN is recognised by its plan (`Plan.adversarial`, planner.networks), whatever its source.
"""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass
from typing import Protocol

import torch

from planner.errors import PlanError
from planner.plan import Plan, Strategy
from runtime.parallel.data_parallel import DataParallel
from runtime.parallel.gan import DataParallelGAN, ModelParallelGAN
from runtime.parallel.mesh import Placement
from runtime.parallel.pipeline_parallel import PipelineParallel
from runtime.parallel.sharded import ShardedDataParallel
from runtime.rank.amp import Amp
from runtime.rank.model import OptimizerFactory, build_full_model, make_optimizer
from runtime.rank.step import StepResult
from runtime.rank.task import Task, plan_task


class Engine(Protocol):
    """One rank's share of the model, and how it takes a training step."""

    amp: Amp
    """The plan's precision: autocast and loss scaling (runtime.rank.amp)."""

    def replicate(self, where: Placement) -> None:
        """Data parallel over the dp group (step 5)."""

    def build_optimizers(self, make_optimizer: OptimizerFactory) -> None:
        """The optimizers over the parameters this rank holds (step 6)."""

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepResult: ...

    def local_parameters(self) -> dict[str, torch.nn.Parameter]: ...

    def state_parts(self) -> list[tuple[torch.nn.Module, list[torch.optim.Optimizer]]]: ...


@dataclass
class Parallelized:
    """What a rank trains with: its engine, and the task that gives it batches and losses."""

    engine: Engine
    task: Task


def check_strategy(plan: Plan) -> None:
    """The GAN trains with dp or mp, and only the GAN with mp (a `PlanError` otherwise)."""
    strategy = plan.strategy
    if plan.adversarial and strategy not in (Strategy.DP, Strategy.MP):
        raise PlanError(f"strategy: the GAN trains with dp or mp, not {strategy}")
    if not plan.adversarial and strategy == Strategy.MP:
        raise PlanError(
            f"strategy: mp is the GAN's (generator and discriminator); {plan.model.source} has no such split"
        )


def check_levers(plan: Plan) -> None:
    """What this runtime does not train of the memory levers (`planner.sharding`): loss
    scaling over sharded gradients. A `PlanError` names it."""
    mode = plan.dp_mode
    if mode.sharded and plan.training.precision.recipe.loss_scaling:
        raise PlanError(
            f"training.precision: {plan.training.precision} is not trained sharded (its loss "
            "scaling over sharded gradients is not built); use bf16-mixed"
        )


def parallelize(plan: Plan, where: Placement) -> Parallelized:
    """Build this rank's part of the plan's model, parallelised in the module's order."""
    # 1. The full model on the meta device; each engine makes its own part real, with
    #    values from (seed, FQN) alone, so no broadcast is needed before the cut.
    full = build_full_model(plan)
    task = plan_task(plan, full.config)
    check_strategy(plan)
    check_levers(plan)

    # 2. Tensor parallel: each block with a layout split across its tensor group as the
    #    engine makes it real (runtime.parallel.tensor_parallel), before it is wrapped.

    # 3. Pipeline stages, if pp > 1: this rank keeps its own (a GAN's stages are its two
    #    networks); with pp = 1 the whole model stays on this rank.
    engine: Engine
    if plan.pp_degree > 1 and plan.adversarial:
        engine = ModelParallelGAN(plan, full, where)
    elif plan.pp_degree > 1:
        engine = PipelineParallel(plan, full, task, where)
    elif plan.adversarial:
        engine = DataParallelGAN(plan, full, where)
    elif plan.dp_mode.sharded:
        engine = ShardedDataParallel(plan, full, task, where)
    else:
        engine = DataParallel(plan, full, task, where)

    # 4. Recomputation: the engine has wrapped the blocks the plan recomputes
    #    (runtime.parallel.recompute) as it made them real, before step 5 wraps them.

    # 5. Data parallel over the dp group.
    engine.replicate(where)

    # 6. The optimizer over the parameters this rank holds, from one function.
    engine.build_optimizers(functools.partial(make_optimizer, plan))

    # Only the engine keeps the model from here on: a pipeline rank needs its stages, not
    # the whole model for the length of the run. torch's split graph is full of reference
    # cycles, so the other stages are freed by the cycle collector, which otherwise may
    # not run for the whole run (every rank held every stage's weights).
    del full
    gc.collect()
    return Parallelized(engine, task)
