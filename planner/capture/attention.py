"""Scaled-dot-product attention measured as the fused kernel runs it, not as meta would.

On meta, SDPA falls back to the math path, which saves the (T x T) attention matrix for
backward; the fused kernels that really run (flash on CPU and CUDA) save only q, k, v, the
output and the log-sum-exp. So the export tracer takes the output and saved tensors from
the CPU flash op's meta kernel, and FLOPs from the math path without grad (the flop counter
sees 0 in the fused CPU op).
"""

from __future__ import annotations

import math
from typing import Any


def is_sdpa(target: Any) -> bool:
    """True for `torch.nn.functional.scaled_dot_product_attention` in any of its ATen forms."""
    return "scaled_dot_product_attention" in str(target)


def run_attention(args: tuple, kwargs: dict) -> tuple[Any, int]:
    """Run SDPA's ``args``/``kwargs`` as the fused kernel does: ``(output, forward FLOPs)``."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    q, k, v = bound["query"], bound["key"], bound["value"]
    mask = bound.get("attn_mask")
    dropout_p = bound.get("dropout_p", 0.0)
    causal = bool(bound.get("is_causal", False))
    scale = bound.get("scale")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=causal,
            scale=scale,
            enable_gqa=bool(bound.get("enable_gqa", False)),
        )
    flops = counter.get_total_flops()
    if dropout_p:  # the flash op has no dropout: keep the math path's saved tensors
        return F.scaled_dot_product_attention(*args, **kwargs), flops
    if bound.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        reps = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(reps, dim=-3), v.repeat_interleave(reps, dim=-3)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -math.inf)
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale
    )
    return out[0], flops
