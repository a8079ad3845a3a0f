"""The profile: numbers measured on real devices, which replace datasheet figures in `price`.

Filled by ``python -m runtime profile`` (a later part of the runtime); the planner only reads
it and never imports the runtime. A profile belongs to one coarsened graph (its digest):
block timings of another model would silently misprice this one.

Link timings are fitted as ``time = latency + bytes / bandwidth`` (the alpha-beta model of
Hockney, 1994), separately for point-to-point and all-reduce. The all-reduce is the one a
step makes after its backward: the runtime's profile times it after compute on every rank,
where it was slower than back to back.

Block timings are of one rank computing alone. CPU ranks on one machine share its memory
bandwidth and caches (and on many machines a core's hyper-threads), so they compute slower
while the others compute too; ``contention`` is that slowdown, measured with every core
busy, and the simulation applies it to the compute tasks that overlap in time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeFloat

from planner.errors import PlannerError
from planner.precision import Precision
from planner.strict import StrictModel, parse_document, read_document
from planner.topology import LinkCost

SCHEMA_VERSION = 1


class BlockTiming(StrictModel):
    block: str = Field(description="Block FQN in the coarsened graph.")
    device_kind: str = Field(description="Device kind id it was measured on.")
    micro_batch_size: int = Field(ge=1, description="Samples per micro-batch.")
    forward_s: float = Field(ge=0, description="Median forward time.")
    backward_s: float = Field(ge=0, description="Median backward time (input and weight gradients).")
    saved_bytes: int | None = Field(default=None, ge=0, description="Bytes kept for backward.")


class ModelTiming(StrictModel):
    device_kind: str
    micro_batch_size: int = Field(ge=1)
    forward_s: float = Field(ge=0, description="Median forward of the whole, uncut model.")
    backward_s: float = Field(ge=0, description="Median backward of the whole, uncut model.")


class BatchTiming(StrictModel):
    samples: int = Field(ge=1)
    seconds: float = Field(
        ge=0, description="Median time one rank takes to load that many samples of a step."
    )


class LinkTiming(StrictModel):
    link_kind: str = Field(description="Link kind id (see planner.devices).")
    op: Literal["p2p", "all_reduce", "all_gather", "reduce_scatter"] = Field(
        description="p2p: one way; the collectives: of a buffer of that many bytes whole (all_gather "
        "gathers it from its shards, reduce_scatter reduces it into them)."
    )
    ranks: int = Field(default=2, ge=2, description="Group size it was measured with.")
    latency_s: float = Field(ge=0)
    bandwidth: float = Field(gt=0, description="Bytes/s fitted from the slope.")


class OptimizerTiming(StrictModel):
    device_kind: str
    optimizer: str
    seconds_per_param: float = Field(ge=0)
    sharded_s_per_tensor: float | None = Field(
        default=None,
        ge=0,
        description="What a step takes more per parameter tensor when the parameters are FSDP2's "
        "DTensor shards (each tensor's update dispatched through DTensor).",
    )


DDP_STEP = "ddp"
"""`Profile.schedule_action_s`'s key for a data-parallel replica's step."""


class Profile(StrictModel):
    schema_version: int = SCHEMA_VERSION
    graph_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    host: str = ""
    torch_version: str = ""
    blocks: list[BlockTiming] = Field(default_factory=list)
    links: list[LinkTiming] = Field(default_factory=list)
    optimizers: list[OptimizerTiming] = Field(default_factory=list)
    overhead_bytes: dict[str, int] = Field(
        default_factory=dict, description="Per device kind: memory a rank's process holds before the model."
    )
    # Lax: a Python caller may pass the value ("bf16-mixed"); JSON documents carry the value.
    precision: Precision = Field(
        default=Precision.FP32,
        strict=False,
        description="The precision blocks, the whole model and the optimizer were timed in: their "
        "figures price only plans that compute in its dtype.",
    )
    whole: list[ModelTiming] = Field(
        default_factory=list,
        description="The uncut model run eagerly, as a data-parallel replica runs it (blocks are "
        "timed as the pieces a pipeline cut makes, which run at another speed).",
    )
    pipeline_action_s: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Per device kind: what one forward or backward action of a pipeline schedule "
        "costs beyond its compute (torch's schedule bookkeeping, posting and waiting for its "
        "sends and receives), from a 2-stage pipeline of a model too small to compute trained "
        "by the runtime's engines: its step less compute, optimizer step and waits.",
    )
    schedule_action_s: dict[str, dict[str, NonNegativeFloat]] = Field(
        default_factory=dict,
        description="Per device kind, then per pipeline schedule ('gpipe', '1f1b', "
        "'interleaved_1f1b'): pipeline_action_s measured under that schedule, which posts and "
        "waits in its own way (a schedule not here is priced at pipeline_action_s); and 'ddp': "
        "the same for a data-parallel replica's step of one forward and one backward.",
    )
    runtime_bytes: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per device kind, then 'pp' (torch's pipeline schedule) or 'dp' (DDP): how much "
        "a rank's peak memory grows to train a model too small to count, over two ranks.",
    )
    grad_s_per_byte: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Per device kind: host seconds a step per byte of gradients a pipeline rank "
        "holds (zeroed in place before the step, scaled by 1/m after it by torch's schedule), "
        "from the tiny 1F1B pipeline trained at two widths.",
    )
    fsdp_collective_s: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Per device kind: FSDP2's own work per all-gather or reduce-scatter of a unit "
        "beyond what the price charges for it (this profile's collective fits and FSDP's "
        "copies), from a model too small to compute trained full_shard by the runtime's "
        "engine, as the runtime counts FSDP's work; where a rank's FSDP work is not timed "
        "apart (a GPU's streams), none.",
    )
    fsdp_pass_s: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Per device kind: what one forward or backward of a block takes more when "
        "the block is an FSDP2 unit (its hooks around the block and the autograd functions it "
        "adds), from the same tiny model's compute full_shard against DDP.",
    )
    tp_pass_s: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Per device kind: what one forward or backward of a block split across a "
        "tensor group of two takes more than its share of compute and its all-reduces "
        "(DTensor's dispatch around each split layer, the redistributions of its inputs and "
        "outputs), from a tiny GPT trained at tp 2 against the same model under DDP, its "
        "all-reduces timed plain in the same processes.",
    )
    batch_load: list[BatchTiming] = Field(
        default_factory=list,
        description="Loading a step's samples of the model's data set on one rank (the step's "
        "sample order, then gathering them): every rank loads its replica's share at the start "
        "of every step.",
    )
    contention: dict[str, float] = Field(
        default_factory=dict,
        description="Per device kind that shares a node's cores (CPU ranks): how much slower a rank "
        "computes when every core of its node computes at once, minus 1 (0.3: 30% slower).",
    )

    def action_s(self, kind: str, schedule: str) -> float:
        """Host seconds per forward or backward action of ``schedule`` (a pipeline schedule,
        or `DDP_STEP`) on ``kind``; 0 unmeasured."""
        by_schedule = self.schedule_action_s.get(kind, {})
        if schedule in by_schedule:
            return by_schedule[schedule]
        return 0.0 if schedule == DDP_STEP else self.pipeline_action_s.get(kind, 0.0)

    def batch_load_s(self, samples: float) -> float:
        """Seconds one rank takes to load ``samples`` of a step, as `block_time` interpolates;
        0 unmeasured."""
        found = _interpolate([(b.samples, b.seconds, 0.0) for b in self.batch_load], samples)
        return found[0] if found is not None else 0.0

    def digest(self) -> str:
        """sha256 of the canonical JSON: what a plan cites as its figures' source."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def timed_in(self, compute_dtype: str) -> bool:
        """Whether its compute figures were timed computing in ``compute_dtype`` (a bf16 plan
        is not priced with fp32 timings)."""
        return self.precision.recipe.compute == compute_dtype

    def block_time(self, block: str, device_kind: str, micro_batch_size: float) -> tuple[float, float] | None:
        """(forward, backward) seconds per micro-batch, or None if this block was not measured.

        Between measured sizes the time is interpolated linearly; outside them it is scaled
        in proportion to the nearest measured size.
        """
        return _interpolate(
            [
                (b.micro_batch_size, b.forward_s, b.backward_s)
                for b in self.blocks
                if b.block == block and b.device_kind == device_kind
            ],
            micro_batch_size,
        )

    def whole_time(self, device_kind: str, micro_batch_size: float) -> tuple[float, float] | None:
        """(forward, backward) of the uncut model, as `block_time`; None if not measured."""
        points = [
            (w.micro_batch_size, w.forward_s, w.backward_s)
            for w in self.whole
            if w.device_kind == device_kind
        ]
        return _interpolate(points, micro_batch_size)

    def link(self, link_kind: str, op: str) -> LinkCost | None:
        """The measured fit for a link kind and op, or None if not measured."""
        for t in self.links:
            if t.link_kind == link_kind and t.op == op:
                return LinkCost(t.latency_s, t.bandwidth)
        return None

    def all_reduce(self, link_kind: str, ranks: int) -> LinkCost | None:
        """The fit of a whole all-reduce of ``ranks`` over ``link_kind``: its time
        is latency + bytes / bandwidth. None unless measured over that link kind.

        A group size not measured is scaled from the nearest one measured as a ring scales
        (`planner.cost.timing.ring_all_reduce_time`): 2(d - 1) steps, each rank sending
        2(d - 1)/d of the buffer. A measurement with 2 ranks thus prices 4 at 3x its
        latency and 1.5x its bytes.

        >>> p = Profile(graph_digest="0" * 64, links=[LinkTiming(link_kind="shm", op="all_reduce",
        ...     latency_s=1e-4, bandwidth=1e9)])
        >>> p.all_reduce("shm", 4)
        LinkCost(latency_s=0.00030000000000000003, bandwidth=666666666.6666666)
        """
        return self.collective("all_reduce", link_kind, ranks)

    def collective(self, op: str, link_kind: str, ranks: int) -> LinkCost | None:
        """The fit of one ``op`` (all_reduce, all_gather, reduce_scatter) of ``ranks`` over
        ``link_kind``, scaled from the nearest group size measured as a ring scales: an
        all-gather or a reduce-scatter takes d - 1 steps, each rank sending (d - 1)/d of the
        buffer, half an all-reduce's, so the same ratios scale all three."""
        measured = [t for t in self.links if t.link_kind == link_kind and t.op == op]
        if not measured:
            return None
        t = min(measured, key=lambda t: (abs(t.ranks - ranks), t.ranks))
        steps = (ranks - 1) / (t.ranks - 1)
        sent = (2 * (ranks - 1) / ranks) / (2 * (t.ranks - 1) / t.ranks)
        return LinkCost(t.latency_s * steps, t.bandwidth / sent)

    def optimizer_seconds_per_param(self, device_kind: str, optimizer: str) -> float | None:
        for t in self.optimizers:
            if t.device_kind == device_kind and t.optimizer == optimizer:
                return t.seconds_per_param
        return None

    def optimizer_sharded_s_per_tensor(self, device_kind: str, optimizer: str) -> float | None:
        for t in self.optimizers:
            if t.device_kind == device_kind and t.optimizer == optimizer:
                return t.sharded_s_per_tensor
        return None


def _interpolate(points: list[tuple[int, float, float]], x: float) -> tuple[float, float] | None:
    """Linear between measured sizes; in proportion to the nearest one outside them."""
    points = sorted(points)
    if not points:
        return None
    for (x0, f0, b0), (x1, f1, b1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            w = (x - x0) / (x1 - x0)
            return f0 + w * (f1 - f0), b0 + w * (b1 - b0)
    size, f, b = points[0] if x < points[0][0] else points[-1]
    return f * x / size, b * x / size


def profile_from_json(text: str, origin: str = "profile") -> Profile:
    return parse_document(Profile, text, origin, PlannerError, "profile")


def load_profile(path: str | Path) -> Profile:
    return read_document(Profile, path, PlannerError, "profile")
