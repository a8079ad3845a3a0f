"""The plan's precision inside a rank: torch.autocast for compute, a GradScaler for fp16.

``bf16-mixed`` and ``fp16-mixed`` keep float32 weights, gradients and optimizer state
(`planner.precision`). ``torch.autocast`` runs the forward and the loss: ops on its
lower-precision list (matrix products, convolutions, attention) in the compute dtype, those
on its float32 list (the losses) in float32, the rest in the dtype of their inputs.
Backward runs outside it, each op in the dtype its forward chose, so gradients reach the
float32 weights as float32 and data parallel reduces them in float32. No layer is cast by
hand.

``fp16-mixed`` scales the loss (``torch.amp.GradScaler``). A step whose gradients overflowed
is skipped and the scale halved; with a pipeline, each rank sees only its own stages'
gradients, so the ranks agree first (one all-reduce of a flag) and every rank skips the
same steps, as one process would. ``fp32`` and pure ``bf16`` use neither (a ``bf16`` model's
weights are bfloat16 from the build: runtime.rank.model).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from planner.precision import Precision


class Amp:
    """Autocast and loss scaling for one rank, per the plan's precision."""

    def __init__(self, precision: Precision, device: torch.device) -> None:
        recipe = precision.recipe
        self.enabled = recipe.mixed
        self.device = device
        self.device_type = device.type
        self.dtype = getattr(torch, recipe.compute)
        self.scaler = torch.amp.GradScaler(device.type) if recipe.loss_scaling else None
        if self.scaler is not None:
            # The scale is made at the first scale(), which only the loss's rank calls; every
            # rank unscales its own gradients by it, so every rank makes it now, alike.
            self.scaler.scale(torch.ones((), device=device))

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's context: autocast to the compute dtype, or nothing."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run under `autocast` (a stage's forward, a loss function)."""
        if not self.enabled:
            return fn

        @functools.wraps(fn)
        def under_autocast(*args: Any, **kwargs: Any) -> Any:
            with self.autocast():
                return fn(*args, **kwargs)

        return under_autocast

    def wrap_stage(self, forward: Callable[..., Any], *, last: bool) -> Callable[..., Any]:
        """A pipeline stage's forward under autocast. Unless it is the ``last`` (whose output
        goes to the loss, as one process's does), its floating outputs are returned in the
        dtype the split traced them in (the weights' dtype), which the next stage's receive
        buffers were made for. The models here keep their residual stream in float32 under
        autocast, so for them this casts nothing."""
        if not self.enabled or last:
            return self.wrap(forward)
        run = self.wrap(forward)

        @functools.wraps(forward)
        def stage_forward(*args: Any, **kwargs: Any) -> Any:
            out = run(*args, **kwargs)
            return torch.utils._pytree.tree_map_only(
                torch.Tensor, lambda t: t.float() if t.is_floating_point() else t, out
            )

        return stage_forward

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss backward starts from (scaled under fp16-mixed)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscaled(self, loss: float) -> float:
        """A scaled loss as the model computed it (the scale is a power of two: exact)."""
        return loss / self.scaler.get_scale() if self.scaler is not None else loss

    def step(self, optimizers: Iterable[torch.optim.Optimizer], group: Any = None) -> None:
        """Step every optimizer; under loss scaling, only if no rank of ``group`` (None:
        all ranks) found an overflow, then update the scale."""
        optimizers = list(optimizers)
        if self.scaler is None:
            for optimizer in optimizers:
                optimizer.step()
            return
        self._agree_on_overflow(optimizers, group)
        for optimizer in optimizers:
            if _gradients(optimizer):
                self.scaler.step(optimizer)
        self.scaler.update()

    def _agree_on_overflow(self, optimizers: list[torch.optim.Optimizer], group: Any) -> None:
        """If any rank's gradients are not finite, make every rank's scaler see it: one
        non-finite element in each of this rank's optimizers' gradients (they are discarded
        with the step), so that every rank skips the step and halves its scale alike."""
        grads = [g for optimizer in optimizers for g in _gradients(optimizer)]
        bad = torch.tensor([float(any(not torch.isfinite(g).all() for g in grads))], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)
        if bad.item():
            for optimizer in optimizers:
                found = _gradients(optimizer)
                if found:
                    found[0].view(-1)[0] = float("inf")

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
