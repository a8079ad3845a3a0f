"""Time of one block, one transfer, one all-reduce, one optimizer step: the formulas.

Datasheet figures by default; a measured `Profile` replaces them where it has the entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.devices import DeviceKind
from planner.errors import PlannerError
from planner.profile import Profile

# Bytes an optimizer step reads and writes per parameter (fp32 state; half in pure bf16):
# AdamW reads the parameter, its gradient and both moments (16 B) and writes the parameter
# and moments (12 B).
OPTIMIZER_TRAFFIC = {"adamw": 28, "adam": 28, "sgd": 12, "sgd_momentum": 20}


@dataclass(frozen=True)
class CostOptions:
    compute_efficiency: float = 0.5
    """Fraction of peak FLOP/s a dense op reaches; Megatron-LM reports 52% of A100 peak for
    GPT training (Narayanan et al., SC'21)."""
    memory_efficiency: float = 0.8
    """Fraction of peak memory bandwidth a streaming op reaches (STREAM-like kernels)."""
    backward_factor: float = 2.0
    """Backward time / forward time without a profile: input and weight gradients each cost
    about one forward's FLOPs (Kaplan et al. 2020, "6N" training FLOPs per token)."""


def op_time(flops: float, moved: float, kind: DeviceKind, dtype: str, opts: CostOptions) -> float:
    """Roofline time of one op: the larger of its compute time and its memory time.

    >>> from planner.devices import device_kind
    >>> op_time(2e12, 0, device_kind("a100-80gb"), "bfloat16", CostOptions())  # 2 TFLOP at 156 TFLOP/s
    0.01282051282051282
    """
    peak = kind.peak_flops.get(dtype)
    if peak is None:
        raise PlannerError(f"{kind.id} has no {dtype} peak; it supports {', '.join(kind.peak_flops)}")
    return max(
        flops / (peak * opts.compute_efficiency), moved / (kind.memory_bandwidth * opts.memory_efficiency)
    )


def block_forward_time(
    ops: list[list[int]],
    kind: DeviceKind,
    dtype: str,
    samples: float,
    trace_batch: int,
    scale: float,
    opts: CostOptions,
) -> float:
    """Forward time of a block for ``samples`` samples, op by op.

    ``ops`` holds ``[flops, activation bytes moved, weight bytes read]`` per op for
    ``trace_batch`` samples; activations scale with the batch, weights do not. ``scale``
    converts the traced dtype's bytes into the training dtype's.
    """
    per = samples / trace_batch
    return sum(op_time(f * per, (a * per + w) * scale, kind, dtype, opts) for f, a, w in ops)


def block_times(
    block: str,
    ops: list[list[int]],
    kind: DeviceKind,
    dtype: str,
    samples: float,
    trace_batch: int,
    scale: float,
    opts: CostOptions,
    profile: Profile | None,
) -> tuple[float, float, str]:
    """(forward, backward, source) seconds of one block on one device kind; a profile's
    figures where it timed the block computing in ``dtype``."""
    if profile is not None and profile.timed_in(dtype):
        measured = profile.block_time(block, kind.id, samples)
        if measured is not None:
            return measured[0], measured[1], "profile"
    fwd = block_forward_time(ops, kind, dtype, samples, trace_batch, scale, opts)
    return fwd, opts.backward_factor * fwd, "datasheet"


def transfer_time(nbytes: float, latency: float, bandwidth: float) -> float:
    """Point-to-point: latency + bytes / bandwidth (the alpha-beta model, Hockney 1994)."""
    return latency + nbytes / bandwidth if nbytes > 0 else 0.0


def ring_all_reduce_time(nbytes: float, members: int, latency: float, bandwidth: float) -> float:
    """Ring all-reduce: 2(d-1) steps, each moving bytes/d (Patarasuk and Yuan 2009; NCCL's ring).

    >>> ring_all_reduce_time(8e9, 4, 1e-5, 100e9)  # 2*3 latencies + 1.5 x 8 GB / 100 GB/s
    0.12006
    """
    if members < 2 or nbytes <= 0:
        return 0.0
    return 2 * (members - 1) * latency + 2 * (members - 1) / members * nbytes / bandwidth


def optimizer_time(
    params: int,
    optimizer: str,
    momentum: float,
    kind: DeviceKind,
    opts: CostOptions,
    profile: Profile | None,
    weight_bytes: int = 4,
) -> tuple[float, str]:
    """One optimizer step over ``params`` parameters: memory-bound streaming of its state,
    held in ``weight_bytes`` per element."""
    if profile is not None and profile.precision.recipe.weight_bytes == weight_bytes:
        measured = profile.optimizer_seconds_per_param(kind.id, optimizer)
        if measured is not None:
            return measured * params, "profile"
    key = "sgd_momentum" if optimizer == "sgd" and momentum > 0 else optimizer
    traffic = OPTIMIZER_TRAFFIC[key] * weight_bytes / 4
    return params * traffic / (kind.memory_bandwidth * opts.memory_efficiency), "datasheet"
