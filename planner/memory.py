"""Memory per device: the terms of the model, each kept separately so it can be shown.

    total = parameters + gradients + optimizer state
          + saved activations x micro-batch size x micro-batches in flight
          + the last stage's outputs kept for the loss (and the loss's log-probabilities)
          + what the runtime itself adds to train a model of no size (measured, per strategy)
          + a fixed per-process overhead

Micro-batches in flight are read off the schedule's real order (`planner.schedules.in_flight`):
m for GPipe, min(m, p - s) for 1F1B's stage s, torch's warm-up count for interleaved.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def optimizer_state_bytes(optimizer: str, momentum: float, dtype: str) -> int:
    """Optimizer bytes per parameter beyond the parameter and its gradient.

    Adam keeps two fp32 moments (8 B/param). Mixed precision (bf16/fp16 parameters) adds an
    fp32 master copy: 12 B, so 2 + 2 + 12 = 16 B/param in all (ZeRO, Rajbhandari et al.
    2020, section 3.1). SGD keeps a momentum buffer only when momentum > 0.

    >>> optimizer_state_bytes("adamw", 0, "float32"), optimizer_state_bytes("adamw", 0, "bfloat16")
    (8, 12)
    """
    master = 4 if dtype in ("bfloat16", "float16") else 0
    if optimizer in ("adam", "adamw"):
        return 8 + master
    return (4 if momentum > 0 else 0) + master


@dataclass(frozen=True)
class MemoryBreakdown:
    rank: int
    device: int
    capacity: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    loss_outputs: int
    overhead: int
    param_count: int
    micro_batch_size: float
    in_flight: dict[int, int] = field(default_factory=dict)
    """Stage -> micro-batches whose activations are held at once."""
    saved_per_sample: dict[int, float] = field(default_factory=dict)
    """Stage -> bytes kept for backward per sample."""
    runtime: int = 0
    """What training itself adds beyond the model's tensors (the pipeline tracer's and the
    autograd engine's state, communication buffers); measured by the profile, else 0."""

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.loss_outputs
            + self.runtime
            + self.overhead
        )

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def over_bytes(self) -> int:
        return max(0, self.total - self.capacity)

    def terms(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "loss_outputs": self.loss_outputs,
            "runtime": self.runtime,
            "overhead": self.overhead,
        }


def rank_memory(
    *,
    rank: int,
    device: int,
    capacity: int,
    param_bytes: int,
    param_count: int,
    optimizer_bytes_per_param: int,
    saved_per_sample: dict[int, float],
    in_flight: dict[int, int],
    micro_batch_size: float,
    loss_output_per_sample: float,
    loss_in_flight: int,
    overhead: int,
    runtime: int = 0,
) -> MemoryBreakdown:
    """Combine one rank's terms. Gradients are the size of the parameters they belong to."""
    activations = sum(saved_per_sample[s] * micro_batch_size * in_flight.get(s, 0) for s in saved_per_sample)
    return MemoryBreakdown(
        rank=rank,
        device=device,
        capacity=capacity,
        parameters=param_bytes,
        gradients=param_bytes,
        optimizer=param_count * optimizer_bytes_per_param,
        activations=round(activations),
        loss_outputs=round(loss_output_per_sample * micro_batch_size * loss_in_flight),
        overhead=overhead,
        param_count=param_count,
        micro_batch_size=micro_batch_size,
        in_flight=dict(in_flight),
        saved_per_sample=dict(saved_per_sample),
        runtime=runtime,
    )
