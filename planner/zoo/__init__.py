"""The model zoo: the built-in models, each with its config, example input and data set.

- `mlp`, `cnn`: classifiers of scikit-learn's 8x8 digits; `gan`: a generator and a
  discriminator of the same digits; `gpt`: a GPT-style decoder with named sizes (toy to 70b);
- `init`: weights that depend only on (seed, parameter FQN);
- here: `ZOO`, each model's entry, and `make_config` (a config from ``key=value`` overrides).

Every model is built so that parallel training can match one process exactly: no
BatchNorm, dropout 0, and weights that depend only on (seed, parameter FQN).

May import: torch, and the planner's documents; nothing else of the project (the capture
builds zoo models, the zoo knows nothing of it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from planner.zoo.cnn import CNN, CNNConfig
from planner.zoo.gan import GAN, GANConfig
from planner.zoo.gpt import GPT, SIZES, GPTConfig
from planner.zoo.mlp import MLP, MLPConfig


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    config_cls: type
    model_cls: Callable[[Any], nn.Module]
    example_inputs: Callable[[Any, int, torch.device], tuple[torch.Tensor, ...]]
    dataset: str
    """Id of the data set it trains on (see runtime.rank.data)."""
    sizes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Named sizes selectable with the `size=` override."""


def _tokens(cfg: GPTConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(batch, cfg.seq_len, dtype=torch.long, device=device),)


ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry(
        "mlp",
        "MLP on 8x8 digits (data parallel)",
        MLPConfig,
        MLP,
        lambda cfg, b, dev: (torch.zeros(b, cfg.in_features, device=dev),),
        "digits",
    ),
    "cnn": ZooEntry(
        "cnn",
        "CNN with GroupNorm on 8x8 digits (data parallel)",
        CNNConfig,
        CNN,
        lambda cfg, b, dev: (torch.zeros(b, 1, cfg.image_size, cfg.image_size, device=dev),),
        "digits",
    ),
    "gan": ZooEntry(
        "gan",
        "GAN on 8x8 digits: generator and discriminator (model parallel)",
        GANConfig,
        GAN,
        lambda cfg, b, dev: (torch.zeros(b, cfg.latent_dim, device=dev),),
        "digits",
    ),
    "gpt": ZooEntry(
        "gpt",
        "GPT decoder on a byte-level corpus (pipeline, hybrid)",
        GPTConfig,
        GPT,
        _tokens,
        "bytes:stdlib",
        sizes=SIZES,
    ),
}


def make_config(name: str, overrides: dict[str, Any]) -> Any:
    """Build the config of zoo model ``name`` from overrides (``size=`` picks a named size).

    Raises ``ValueError`` naming an unknown key and listing the valid ones.
    """
    entry = ZOO[name]
    values = dict(overrides)
    size = values.pop("size", None)
    if size is not None:
        if size not in entry.sizes:
            choices = ", ".join(entry.sizes) or "none"
            raise ValueError(f"{name} has no size {size!r}; sizes: {choices}")
        values = {**entry.sizes[size], **values}
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"{name} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(fields | ({'size'} if entry.sizes else set())))}"
        )
    return entry.config_cls(**values)
