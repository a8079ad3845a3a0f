"""Memory per device: the terms of the model, each kept separately so it can be shown.

    total = parameters + gradients + optimizer state (per parameter: planner.precision;
            over the shard group under a sharded dp_mode, planner.sharding)
          + under mixed precision, the compute-dtype copies of the weights autocast makes in
            each micro-batch's forward and autograd keeps for its backward (the weights of
            matrix products and convolutions, as the trace saw them read: not embeddings
            or norms); none when sharded: FSDP gathers the weights in the compute dtype
          + sharded: the gathered parameters alive at once and the reduce-scatter's buffer
            (`sharded_terms`)
          + saved activations x micro-batch size x micro-batches in flight (a block that
            recomputes keeps its inputs), and a recomputing block's own activations while
            its backward runs
          + the last stage's outputs kept for the loss (and the loss's log-probabilities)
          + the pipeline schedule's receive buffers
          + temporaries: in backward, the gradients of an op's output and of its input, and
            of its weight (parameter-sized, before it is added to .grad), held at once: at
            most the largest op's activations plus the largest parameter; in the optimizer
            step (activations freed), its parameter-sized temporaries; whichever is higher
          + what the runtime itself adds to train a model of no size (measured, per strategy)
          + a fixed per-process overhead

Micro-batches in flight are read off the schedule's real order (`planner.schedules.in_flight`):
m for GPipe, min(m, p - s) for 1F1B's stage s, torch's warm-up count for interleaved. A rank
with several stages holds the most activations at the moment of that order when their sum
is highest (`planner.schedules.held_peak`), not the sum of each stage's most.

`plan_memory` gathers the terms of every rank of a plan; the step (`planner.cost.step`)
says which of them its schedule decides (`StepMemory`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from planner.precision import optimizer_state_bytes
from planner.sharding import DpMode

if TYPE_CHECKING:
    from planner.cost.plan_pricing import PlanPricing
    from planner.cost.step import Step
    from planner.schedules import Action


def optimizer_temporaries(optimizer: str, weight_decay: float) -> int:
    """Parameter-sized tensors the optimizer step allocates for a moment, for its largest
    parameter (torch's per-tensor loop, ``foreach=False``): Adam's denominator is
    ``exp_avg_sq.sqrt() / bias_correction``, two at once; Adam (not AdamW) and SGD add the
    weight decay to a copy of the gradient. Seen in torch's memory profile of the runs.

    >>> optimizer_temporaries("adamw", 0.01), optimizer_temporaries("sgd", 0.0)
    (2, 0)
    """
    decay = 1 if weight_decay and optimizer in ("adam", "sgd") else 0
    return (2 if optimizer in ("adam", "adamw") else 0) + decay


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
    temporaries: int = 0
    """Parameter-sized tensors that exist for a moment (see the module docstring)."""
    casts: int = 0
    """Mixed precision: the weights' compute-dtype copies, one per micro-batch in flight."""
    buffers: int = 0
    """The pipeline schedule's receive buffers: torch's stages allocate, once, one buffer per
    micro-batch for each activation a stage receives and each gradient it receives back."""
    runtime: int = 0
    """What training itself adds to a process's private pages beyond the model's tensors
    (autograd's and gloo's state), from the profile's run of a model of no size, else 0."""
    gathered: int = 0
    """Sharded data parallel: the all-gathered parameters alive at once and the reduce-scatter's
    buffer (`sharded_terms`)."""
    recomputed: int = 0
    """Recomputation: the activations a recomputing block holds again while its backward runs."""
    shard: int = 1
    """Ranks the parameters, gradients and optimizer state are sharded over (1: replicated)."""

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.optimizer
            + self.gathered
            + self.casts
            + self.activations
            + self.recomputed
            + self.loss_outputs
            + self.buffers
            + self.temporaries
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
            "gathered": self.gathered,
            "casts": self.casts,
            "activations": self.activations,
            "recomputed": self.recomputed,
            "loss_outputs": self.loss_outputs,
            "buffers": self.buffers,
            "temporaries": self.temporaries,
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
    buffers: float = 0.0,
    largest_param_bytes: int = 0,
    largest_op_bytes: float = 0.0,
    optimizer_temporaries: int = 0,
    cast_bytes: float = 0.0,
    runtime: int = 0,
    activations_held: float | None = None,
    shard: int = 1,
    gradient_bytes: int | None = None,
    gathered: float = 0.0,
    recomputed: float = 0.0,
) -> MemoryBreakdown:
    """Combine one rank's terms. Gradients are the size of the parameters they belong to.

    ``largest_param_bytes`` is the rank's largest parameter, ``largest_op_bytes`` the most
    activation bytes one of its ops reads and writes at its micro-batch size.
    Nothing counts the whole model: a rank makes only its own part real (the runtime builds
    the model on the meta device). ``activations_held`` is the activations' peak over the
    schedule's order, when known; else every stage is taken at its most micro-batches in
    flight at once. ``cast_bytes``: the weights' compute-dtype copies (mixed precision).
    ``shard``: the parameters and optimizer state are held over that many ranks, and the
    gradients too unless ``gradient_bytes`` says what is held; ``gathered`` and
    ``recomputed``: see `MemoryBreakdown`."""
    activations = sum(saved_per_sample[s] * micro_batch_size * in_flight.get(s, 0) for s in saved_per_sample)
    if activations_held is not None:
        activations = activations_held
    loss_outputs = round(loss_output_per_sample * micro_batch_size * loss_in_flight)
    held = round(activations) + loss_outputs
    return MemoryBreakdown(
        rank=rank,
        device=device,
        capacity=capacity,
        parameters=round(param_bytes / shard),
        gradients=round(param_bytes / shard) if gradient_bytes is None else gradient_bytes,
        optimizer=round(param_count * optimizer_bytes_per_param / shard),
        activations=round(activations),
        loss_outputs=loss_outputs,
        overhead=overhead,
        param_count=param_count,
        micro_batch_size=micro_batch_size,
        in_flight=dict(in_flight),
        saved_per_sample=dict(saved_per_sample),
        buffers=round(buffers),
        casts=round(cast_bytes),
        temporaries=max(
            largest_param_bytes + round(largest_op_bytes),
            optimizer_temporaries * largest_param_bytes - held,
        ),
        runtime=runtime,
        gathered=round(gathered),
        recomputed=round(recomputed),
        shard=shard,
    )


class StepMemory(NamedTuple):
    """The terms of one rank's memory that its step decides."""

    in_flight: dict[int, int]
    """Stage -> micro-batches whose activations are held at once."""
    micro_batch_size: float
    loss_output_per_sample: float
    """Bytes the loss keeps per sample (0 off the last stage)."""
    buffers: float
    """Receive buffers (see `MemoryBreakdown.buffers`)."""
    activations_held: float | None
    """The activations' peak over the schedule's order, when known."""
    runtime_strategy: str
    """Which of the profile's runtime measurements applies ("dp" or "pp")."""


def plan_memory(
    pricing: PlanPricing, step: Step, actions: dict[int, Sequence[Action]]
) -> list[MemoryBreakdown]:
    """Every rank's memory, the ranks of mirrored replicas included."""
    plan, opt, stages = pricing.plan, pricing.plan.training.optimizer, pricing.stages
    per_param = optimizer_state_bytes(opt.name, opt.momentum, plan.training.precision)
    recipe = pricing.precision
    cast = recipe.compute_bytes if recipe.mixed else 0
    temporaries = optimizer_temporaries(opt.name, opt.weight_decay)
    last = len(stages) - 1
    groups = pricing.shard_groups
    sharded = groups.mode.sharded
    if sharded:
        cast = 0  # FSDP gathers the compute dtype: autocast has nothing to copy
    gathered_of: dict[int, tuple[float, int | None]] = {}
    out = []
    for r in plan.ranks:
        device = pricing.cluster.device(r.device)
        mine = [s for s in range(len(stages)) if s % pricing.pp_degree == r.pp_index]
        if sharded and r.pp_index not in gathered_of:  # the same for every replica of a pipeline rank
            gathered_of[r.pp_index] = sharded_terms(pricing, mine)
        gathered, gradients = gathered_of[r.pp_index] if sharded else (0.0, None)
        # A mirrored replica's rank runs its simulated twin's order (only that one was built).
        held = step.held(r, mine, actions.get(pricing.mirror_rank(r.rank), []))
        overhead, runtime = _process_bytes(pricing, device.kind, held.runtime_strategy)
        out.append(
            rank_memory(
                rank=r.rank,
                device=r.device,
                capacity=device.memory_bytes,
                param_bytes=sum(stages[s].param_bytes for s in mine),
                param_count=sum(stages[s].param_count for s in mine),
                optimizer_bytes_per_param=per_param,
                saved_per_sample={s: stages[s].saved_per_sample for s in mine},
                in_flight=held.in_flight,
                micro_batch_size=held.micro_batch_size,
                loss_output_per_sample=held.loss_output_per_sample,
                loss_in_flight=held.in_flight.get(last, 0),
                overhead=overhead,
                buffers=held.buffers,
                largest_param_bytes=max(stages[s].largest_param_bytes for s in mine),
                largest_op_bytes=max(stages[s].largest_op_per_sample * held.micro_batch_size for s in mine),
                optimizer_temporaries=temporaries,
                cast_bytes=sum(cast * stages[s].cast_param_count * held.in_flight.get(s, 0) for s in mine),
                runtime=runtime,
                activations_held=held.activations_held,
                shard=groups.size(r.rank),
                gradient_bytes=gradients,
                gathered=gathered,
                recomputed=max(stages[s].recompute_peak_per_sample for s in mine) * held.micro_batch_size,
            )
        )
    return out


def sharded_terms(pricing: PlanPricing, stages: list[int]) -> tuple[float, int | None]:
    """(gathered bytes, gradient bytes held, or None for the shard's) of a rank holding
    ``stages`` under a sharded ``dp_mode`` (`planner.cost.sharded` says why):

    - one stage: ``shard_grad_op`` keeps every block gathered from its forward to its
      backward; ``full_shard`` and ``hybrid_shard`` hold two consecutive blocks at most (the
      one computing, the one prefetched); gradients are sharded;
    - a pipeline stage keeps its blocks gathered after a backward and accumulates its
      gradients unsharded until the step's reduce-scatters;
    and, in both, the reduce-scatter's input: one block's gradients in the reduce dtype."""
    groups = pricing.shard_groups
    counts = [n for s in stages for n in pricing.stages[s].block_param_counts]
    buffer = max(counts) * groups.reduce_bytes
    if len(pricing.stages) > 1:
        return sum(counts) * groups.gather_bytes + buffer, sum(counts) * groups.reduce_bytes
    if groups.mode == DpMode.SHARD_GRAD_OP or len(counts) == 1:
        alive = sum(counts)
    else:
        alive = max(a + b for a, b in itertools.pairwise(counts))
    return alive * groups.gather_bytes + buffer, None


def _process_bytes(pricing: PlanPricing, kind: str, strategy: str) -> tuple[int, int]:
    """(overhead, runtime) of one process on a device kind: the profile's measurements,
    else the cluster's overhead and no runtime."""
    profile = pricing.profile
    overhead = pricing.cluster.overhead_bytes.get(kind, 0)
    if profile is not None and kind in profile.overhead_bytes:
        overhead = profile.overhead_bytes[kind]
    measured = profile.runtime_bytes.get(kind, {}) if profile is not None else {}
    return overhead, measured.get(strategy, 0)
