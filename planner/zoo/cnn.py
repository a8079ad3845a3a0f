"""A small convolutional classifier for 8x8 digits.

GroupNorm, not BatchNorm: batch statistics differ per data-parallel shard, and
SyncBatchNorm refuses CPU tensors, so BatchNorm would break parity with one process.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    image_size: int = 8
    """Height and width of the (square, single-channel) input."""
    channels: list[int] = field(default_factory=lambda: [16, 32])
    """Output channels of each conv block."""
    groups: int = 4
    """GroupNorm groups; must divide every channel count."""
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.groups <= 0 or not self.channels:
            raise ValueError("cnn image_size, groups and channels must be positive")
        bad = [c for c in self.channels if c <= 0 or c % self.groups]
        if bad:
            raise ValueError(f"cnn channels {bad} are not positive multiples of groups={self.groups}")


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(groups, c_out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        chans = [1, *cfg.channels]
        self.blocks = nn.ModuleList(ConvBlock(a, b, cfg.groups) for a, b in itertools.pairwise(chans))
        self.head = nn.Linear(chans[-1] * cfg.image_size**2, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, H, W)
        for block in self.blocks:
            x = block(x)
        return self.head(x.flatten(1))  # logits: (B, num_classes)
