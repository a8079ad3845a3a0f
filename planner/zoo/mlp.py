"""A multi-layer perceptron for scikit-learn's 8x8 digits (64 inputs, 10 classes).

Data parallel is its natural fit; the hidden layers are a `ModuleList` of blocks so that it
can also be cut into pipeline stages.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 64
    """Input width: 64 pixels of an 8x8 digit."""
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    """Width of each hidden block."""
    num_classes: int = 10

    def __post_init__(self) -> None:
        widths = [self.in_features, *self.hidden, self.num_classes]
        if any(not isinstance(w, int) or w <= 0 for w in widths):
            raise ValueError(f"mlp widths must be positive integers, got {widths}")


class MLPBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        widths = [cfg.in_features, *cfg.hidden]
        self.blocks = nn.ModuleList(MLPBlock(a, b) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, in_features)
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # logits: (B, num_classes)
