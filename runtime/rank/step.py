"""What one training step of one rank reports, whatever the parallelism."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepResult:
    loss: float | None
    """This rank's replica loss (mean over its samples); None on ranks that compute none."""
    compute_s: float
    optimizer_s: float
    extra: dict[str, float] = field(default_factory=dict)
    """Further losses (the GAN's loss_d and loss_g)."""
    waits: dict[str, float] = field(default_factory=dict)
    """Seconds blocked by cause, "peer" and "communication" (`runtime.rank.timeline.Waits`);
    empty where the engine does not tell them apart."""
