"""Single-process training of a plan's model: the baseline every parallel plan must match.

Same model (from source and seed), same optimizer, same precision (runtime.rank.amp), same
global batches, one process, no parallelism at all. The parity tests compare every step's
loss and every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.plan import Plan
from runtime.parallel.gan import gan_step
from runtime.rank.amp import Amp
from runtime.rank.model import build_full_model, make_optimizer
from runtime.rank.task import Objective, plan_task


@dataclass
class ReferenceRun:
    losses: list[float]
    parameters: dict[str, torch.Tensor]
    extra: dict[str, list[float]]


def train_single(plan: Plan, steps: int) -> ReferenceRun:
    full = build_full_model(plan)
    task = plan_task(plan, full.config)
    model = full.materialise(full.module, "cpu")
    amp = Amp(plan.training.precision, torch.device("cpu"))
    losses: list[float] = []
    extra: dict[str, list[float]] = {"loss_d": [], "loss_g": []}
    if task.kind == Objective.GAN:
        opt_g = make_optimizer(plan, list(model.generator.parameters()))
        opt_d = make_optimizer(plan, list(model.discriminator.parameters()))
        for step in range(steps):
            z, real = task.batch(step)
            loss_d, loss_g = gan_step(
                model.generator, model.discriminator, opt_g, opt_d, z, real, autocast=amp.autocast
            )
            losses.append(loss_d + loss_g)
            extra["loss_d"].append(loss_d)
            extra["loss_g"].append(loss_g)
    else:
        optimizer = make_optimizer(plan, list(model.parameters()))
        for step in range(steps):
            inputs, targets = task.batch(step)
            optimizer.zero_grad(set_to_none=True)
            with amp.autocast():
                loss = task.loss_fn(model(inputs), targets)
            amp.scale(loss).backward()
            amp.step([optimizer])
            losses.append(loss.item())
    # Every name of a tied weight, since pipeline stages may hold it under either.
    params = {fqn: p.detach().clone() for fqn, p in model.named_parameters(remove_duplicate=False)}
    return ReferenceRun(losses, params, extra)
