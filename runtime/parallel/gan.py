"""The GAN's training step, in one process, data parallel, and model parallel (mp).

One step (Goodfellow et al. 2014, non-saturating generator loss):
  fake = G(z)
  loss_d = BCE(D(real), 1) + BCE(D(fake.detach()), 0)   -> update D
  loss_g = BCE(D(fake), 1), through the updated D      -> update G
D sees real and generated samples in one forward (one batch, concatenated): the same
numbers as two calls for a per-sample D, and one forward per backward as DDP requires.

In the mp strategy G and D live on their own ranks. torch has no schedule for adversarial
steps, so this is the one hand-written one: G's rank sends the generated samples, D's rank
runs both losses and sends back the gradient of loss_g with respect to those samples, and
G's rank finishes the backward through G with it. D's parameters never exist on G's rank.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from planner.errors import PlanError
from planner.networks import ADVERSARIAL, DISCRIMINATOR, GENERATOR
from planner.plan import Plan
from runtime.parallel.data_parallel import wrap_ddp
from runtime.parallel.mesh import Placement
from runtime.rank import timeline
from runtime.rank.amp import Amp
from runtime.rank.clock import ComputeClock
from runtime.rank.model import FullModel, OptimizerFactory, keep_gradients
from runtime.rank.step import StepResult


def discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    logits = D(torch.cat([real, fake]))  # (2B, 1): real samples first
    n = real.shape[0]
    real_loss = F.binary_cross_entropy_with_logits(logits[:n], torch.ones_like(logits[:n]))
    fake_loss = F.binary_cross_entropy_with_logits(logits[n:], torch.zeros_like(logits[n:]))
    return real_loss + fake_loss


def generator_loss(D: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    logits = D(fake)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def gan_step(
    G, D, opt_g, opt_d, z, real, backward=torch.Tensor.backward, autocast=contextlib.nullcontext
) -> tuple[float, float]:
    """One adversarial step on modules that each hold a whole network (or DDP replicas);
    forwards and losses under ``autocast`` (runtime.rank.amp), backwards outside it."""
    with autocast():
        fake = G(z)
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        loss_d = discriminator_loss(D, real, fake.detach())
    backward(loss_d)
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        loss_g = generator_loss(D, fake)
    backward(loss_g)  # also leaves gradients in D; opt_d clears them before its next backward
    opt_g.step()
    return loss_d.item(), loss_g.item()


def _result(loss_d: float, loss_g: float, compute_s: float, optimizer_s: float) -> StepResult:
    # "loss" for a GAN is the sum of both players' losses; each is kept on its own too.
    return StepResult(loss_d + loss_g, compute_s, optimizer_s, {"loss_d": loss_d, "loss_g": loss_g})


class _TimedOptimizer:
    """An optimizer whose `step` time is added to ``seconds``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.seconds = optimizer, 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        t = time.perf_counter()
        self.optimizer.step()
        self.seconds += time.perf_counter() - t

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class DataParallelGAN:
    """Both networks on every rank, each wrapped in DDP; losses scaled as in data_parallel."""

    def __init__(self, plan: Plan, full: FullModel, where: Placement) -> None:
        share = plan.replicas[where.rank.dp_index].batch_share
        self.scale = plan.dp_degree * share / plan.training.global_batch
        gan = full.materialise(full.module, where.device)
        self.module = gan
        self.amp = Amp(plan.training.precision, where.device)
        self.clock = ComputeClock(where.device)
        for net in (gan.generator, gan.discriminator):
            self.clock.attach_forward(net)
            for p in net.parameters():
                p.register_post_accumulate_grad_hook(self.clock.grad_ready)
        self.G: nn.Module = gan.generator  # DDP around each network, once replicated
        self.D: nn.Module = gan.discriminator

    def replicate(self, where: Placement) -> None:
        """DDP over the dp group around each network (runtime.parallel.parallelize, step 5)."""
        self.G = wrap_ddp(self.module.generator, where)
        self.D = wrap_ddp(self.module.discriminator, where)

    def build_optimizers(self, make_optimizer: OptimizerFactory) -> None:
        """One optimizer per network: each player steps its own (runtime.parallel.parallelize, step 6)."""
        self.opt_g = _TimedOptimizer(make_optimizer(list(self.module.generator.parameters())))
        self.opt_d = _TimedOptimizer(make_optimizer(list(self.module.discriminator.parameters())))

    def _backward(self, loss: torch.Tensor) -> None:
        self.clock.backward_started()
        (loss * self.scale).backward()
        self.clock.backward_finished()

    def train_step(self, z: torch.Tensor, real: torch.Tensor) -> StepResult:
        loss_d, loss_g = gan_step(
            self.G, self.D, self.opt_g, self.opt_d, z, real, self._backward, self.amp.autocast
        )
        return _result(loss_d, loss_g, self.clock.take(), self.opt_g.take() + self.opt_d.take())

    def local_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())

    def state_parts(self):
        return [(self.module, [self.opt_g.optimizer, self.opt_d.optimizer])]


class ModelParallelGAN:
    """G on one rank, D on another; samples forward and their gradient back."""

    def __init__(self, plan: Plan, full: FullModel, where: Placement) -> None:
        roles = {stage.name: plan.rank_of(0, stage.pp_rank).rank for stage in plan.stages}
        if set(roles) != set(ADVERSARIAL):
            raise PlanError(
                f"stages: the GAN's mp plan needs a generator and a discriminator stage, got {roles}"
            )
        self.device = where.device
        self.role = GENERATOR if where.rank.rank == roles[GENERATOR] else DISCRIMINATOR
        other = DISCRIMINATOR if self.role == GENERATOR else GENERATOR
        self.peer = roles[other]
        self.gan = full.module
        # The other network is dropped; keeping the GAN as the parent keeps this half's
        # FQNs ("generator.net.0.weight") for checkpoints.
        setattr(self.gan, other, nn.Module())
        self.module = getattr(full.materialise(self.gan, where.device), self.role)
        self.params = list(self.module.parameters())
        self.clock = ComputeClock(where.device)
        self.clock.attach_forward(self.module)
        self.optimizer: torch.optim.Optimizer | None = None
        self.sample_shape = (plan.training.global_batch, int(full.config["image_features"]))
        # Samples cross in the weights' dtype: under autocast G's output is bf16, and one
        # process's D, concatenating it with the real samples, promotes it to float32.
        self.dtype = next(self.module.parameters()).dtype
        self.amp = Amp(plan.training.precision, where.device)

    def replicate(self, where: Placement) -> None:
        """Nothing: an mp plan has one replica (the plan checks dp_degree 1)."""

    def build_optimizers(self, make_optimizer: OptimizerFactory) -> None:
        """One optimizer over this rank's network (runtime.parallel.parallelize, step 6)."""
        self.optimizer = make_optimizer(self.params)

    def train_step(self, z: torch.Tensor, real: torch.Tensor) -> StepResult:
        keep_gradients(self.params)  # at the step, not here: see PipelineParallel
        if self.role == GENERATOR:
            return self._generator_step(z)
        return self._discriminator_step(real)

    def _generator_step(self, z: torch.Tensor) -> StepResult:
        self.optimizer.zero_grad(set_to_none=False)
        with self.amp.autocast():
            fake = self.module(z)
        dist.send(fake.detach().to(self.dtype).contiguous(), self.peer)
        grad = torch.empty_like(fake, dtype=self.dtype)  # sent back as the samples were sent
        dist.recv(grad, self.peer)
        with self.clock.span():
            fake.backward(grad)
        t = time.perf_counter()
        self.optimizer.step()
        optimizer_s = time.perf_counter() - t
        timeline.mark("optimizer", t, t + optimizer_s)
        return StepResult(None, self.clock.take(), optimizer_s)

    def _discriminator_step(self, real: torch.Tensor) -> StepResult:
        fake = torch.empty(self.sample_shape, dtype=self.dtype, device=self.device)
        dist.recv(fake, self.peer)
        optimizer_s = 0.0
        self.optimizer.zero_grad(set_to_none=False)
        with self.amp.autocast():
            loss_d = discriminator_loss(self.module, real, fake)
        with self.clock.span():
            loss_d.backward()
        t = time.perf_counter()
        self.optimizer.step()
        optimizer_s += time.perf_counter() - t
        fake.requires_grad_(True)
        with self.amp.autocast():
            loss_g = generator_loss(self.module, fake)
        with self.clock.span():
            loss_g.backward()  # D's gradients from this pass are cleared before the next D step
        dist.send(fake.grad.contiguous(), self.peer)
        return _result(loss_d.item(), loss_g.item(), self.clock.take(), optimizer_s)

    def local_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.gan.named_parameters())

    def state_parts(self):
        return [(self.gan, [self.optimizer])]
