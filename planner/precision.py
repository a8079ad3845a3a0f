"""Training precision: which dtype holds the weights and which one computes.

- ``fp32``: everything in float32.
- ``bf16-mixed``: float32 weights, gradients and optimizer state; matrix products (linear,
  matmul, convolution, attention) in bfloat16 under ``torch.autocast``; gradients reduced in
  float32. The same 16 bytes per parameter with AdamW as the ZeRO paper's 2 + 2 + 12
  (Rajbhandari et al. 2020), held as autocast holds them: 4 (weights) + 4 (gradients) + 8
  (the two moments), plus a bfloat16 copy of each weight an autocast op reads, made in the
  forward and kept by autograd until its backward (2 bytes per parameter for each
  micro-batch in flight).
- ``fp16-mixed``: the same in float16, with dynamic loss scaling (``torch.amp.GradScaler``):
  float16's 5-bit exponent underflows small gradients unless the loss is scaled up first.
- ``bf16``: everything in bfloat16, optimizer state included: 8 bytes per parameter with
  AdamW. The risk: an update smaller than a weight's bfloat16 spacing (2^-8 of it) is lost,
  so long runs at small learning rates stall; for those who accept it.

Plans of schema version 1 named a dtype instead: ``float32`` is ``fp32``; ``bfloat16`` and
``float16`` were priced as mixed precision, so they are ``bf16-mixed`` and ``fp16-mixed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DTYPE_BYTES = {"float32": 4, "tf32": 4, "bfloat16": 2, "float16": 2}


class Precision(StrEnum):
    FP32 = "fp32"
    BF16_MIXED = "bf16-mixed"
    FP16_MIXED = "fp16-mixed"
    BF16 = "bf16"

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self]


@dataclass(frozen=True)
class Recipe:
    weights: str
    """The dtype of the parameters, their gradients and the optimizer state (torch's name)."""
    compute: str
    """The dtype matrix products run in: the device's peak for it, its bytes for activations."""
    loss_scaling: bool = False
    """Dynamic loss scaling (``torch.amp.GradScaler``)."""

    @property
    def mixed(self) -> bool:
        """Weights in one dtype, compute in another: ``torch.autocast`` casts per op."""
        return self.weights != self.compute

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weights]

    @property
    def compute_bytes(self) -> int:
        return DTYPE_BYTES[self.compute]


RECIPES = {
    Precision.FP32: Recipe("float32", "float32"),
    Precision.BF16_MIXED: Recipe("float32", "bfloat16"),
    Precision.FP16_MIXED: Recipe("float32", "float16", loss_scaling=True),
    Precision.BF16: Recipe("bfloat16", "bfloat16"),
}

FROM_DTYPE = {"float32": Precision.FP32, "bfloat16": Precision.BF16_MIXED, "float16": Precision.FP16_MIXED}
"""A schema-1 plan's ``training.dtype`` (and ``--dtype``) as a precision."""


def optimizer_state_bytes(optimizer: str, momentum: float, precision: Precision) -> int:
    """Optimizer bytes per parameter beyond the parameter and its gradient, in the weights'
    dtype (torch keeps a parameter's state in its dtype): Adam's two moments, SGD's momentum
    buffer when momentum > 0. Mixed precision adds no master copy: the weights are already
    float32 (autocast casts them per op).

    >>> [optimizer_state_bytes("adamw", 0, p) for p in (Precision.BF16_MIXED, Precision.BF16)]
    [8, 4]
    """
    copies = 2 if optimizer in ("adam", "adamw") else (1 if momentum > 0 else 0)
    return copies * precision.recipe.weight_bytes


def model_state_bytes(optimizer: str, momentum: float, precision: Precision) -> int:
    """Bytes per parameter of the weight, its gradient and its optimizer state.

    >>> [model_state_bytes("adamw", 0, p) for p in Precision]
    [16, 16, 16, 8]
    """
    return 2 * precision.recipe.weight_bytes + optimizer_state_bytes(optimizer, momentum, precision)


def parse_precision(text: str) -> Precision:
    """A precision by name, or by the dtype names ``--dtype`` took.

    >>> parse_precision("bf16-mixed"), parse_precision("bfloat16")
    (<Precision.BF16_MIXED: 'bf16-mixed'>, <Precision.BF16_MIXED: 'bf16-mixed'>)
    """
    if text in FROM_DTYPE:
        return FROM_DTYPE[text]
    try:
        return Precision(text)
    except ValueError:
        words = ", ".join(p.value for p in Precision)
        raise ValueError(f"precision {text!r} is not one of {words}") from None
