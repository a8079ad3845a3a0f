"""Weights that depend only on (seed, parameter FQN).

Every rank makes real only the parameters of its own stages (runtime.rank.materialise), so
a parameter must get the same value whichever process makes it and whatever else that
process made before: one generator per parameter, seeded from a stable hash of (seed, FQN),
not a global RNG stream.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def parameter_seed(seed: int, fqn: str) -> int:
    """A 63-bit generator seed for parameter ``fqn`` (stable across processes and runs)."""
    digest = hashlib.sha256(f"{seed}:{fqn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Initialise every parameter of ``model`` from (seed, FQN) alone.

    Linear and conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default bound);
    embeddings: N(0, 0.02) as in GPT-2; norm weights one, every bias zero. Tied parameters
    are initialised once, under their first FQN. Parameters on the meta device (the parts
    of the model another rank holds) are left alone.
    """
    seen: set[int] = set()
    for module_fqn, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.is_meta:
                continue
            fqn = f"{module_fqn}.{name}" if module_fqn else name
            gen = torch.Generator(device="cpu").manual_seed(parameter_seed(seed, fqn))
            # Drawn in place: a float32 CPU parameter is its own buffer, anything else gets one
            # float32 CPU buffer. Out-of-place arithmetic held three temporaries the size of
            # the parameter (4 MB weights: 12 MB more).
            direct = param.device.type == "cpu" and param.dtype == torch.float32
            value = param.detach() if direct else torch.empty(param.shape)
            draw_initial_value(module, name, value, gen)
            if not direct:
                param.copy_(value.to(device=param.device, dtype=param.dtype))


def draw_initial_value(module: nn.Module, name: str, out: torch.Tensor, gen: torch.Generator) -> None:
    shape = out.shape
    if name == "bias":
        out.zero_()
        return
    if isinstance(module, _NORMS):
        out.fill_(1.0)
        return
    # Embedding tables (and modules that declare `init_std`) get a normal init as in GPT-2.
    std = 0.02 if isinstance(module, nn.Embedding) else getattr(module, "init_std", None)
    if std is not None:
        torch.randn(shape, generator=gen, out=out).mul_(std)
        return
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    torch.rand(shape, generator=gen, out=out).mul_(2).sub_(1).mul_(bound)
