"""A GAN for 8x8 digits whose generator and discriminator can live on different devices.

`forward(z)` is the generator step's path, D(G(z)); that is what is traced. The training
step (discriminator on real and generated samples, then the generator) is the runtime's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GANConfig:
    latent_dim: int = 16
    """Width of the noise vector z."""
    hidden: int = 128
    """Hidden width of both networks."""
    image_features: int = 64
    """Pixels per generated sample (8x8 digits)."""

    def __post_init__(self) -> None:
        if min(self.latent_dim, self.hidden, self.image_features) <= 0:
            raise ValueError("gan latent_dim, hidden and image_features must be positive")


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, cfg.image_features),
            nn.Tanh(),  # samples in [-1, 1], like the scaled digits
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, latent_dim)
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.image_features, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, image_features)
        return self.net(x)  # one logit per sample: (B, 1)


class GAN(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.discriminator(self.generator(z))
