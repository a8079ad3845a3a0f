"""The plan: the contract between the planner, the runtime and the dashboard.

A versioned JSON document (``schema_version`` 4; the JSON Schema is committed as
``planner/plan.schema.json``). Older documents still load and are written back as version 4:
a version-1 document's ``training.dtype`` becomes a precision (`planner.precision`); version 1
and 2 documents replicate their data-parallel groups and recompute nothing
(`planner.sharding`: ``dp_mode`` and each stage's ``recompute``, new in version 3); documents
before version 4 have no tensor parallelism (``tp_degree`` 1, every rank's ``tp_index`` 0). Loading is
strict: unknown keys, NaN, negative ids, devices that do not exist, stages that do not cover
the model once and in order, degrees that do not multiply to the ranks, shares that do not
sum to the batch, and schedules torch would refuse are errors that name the field. No
pickle anywhere.

Rank layout: every global rank has coordinates ``(dp_index, pp_index, tp_index)`` on the
mesh's three axes (`MESH_AXES`). Ranks with the same ``(dp_index, pp_index)`` form one tensor
group: they hold the same stages, each block with a tensor-parallel layout split across them
(`planner.tensor_parallel`), and compute every micro-batch together. Ranks with the same
``dp_index`` form one pipeline (a replica of the model); ranks with the same ``pp_index`` and
``tp_index`` hold the same shards of the same stages and average their gradients (or, under
a sharded ``dp_mode``, shard them). Stage ``i`` runs on pipeline rank ``i % pp_degree``
(``virtual_stages`` stages per rank for interleaved schedules).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from planner.capture.overrides import check_overrides
from planner.cluster import Cluster
from planner.errors import PlanError, SourceError
from planner.limits import (
    MAX_GLOBAL_BATCH,
    MAX_OVERRIDE_INT,
    MAX_PG_TIMEOUT_S,
    MAX_SEED,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    MIN_PG_TIMEOUT_S,
)
from planner.networks import is_adversarial
from planner.precision import FROM_DTYPE, Precision
from planner.schedules import Schedule, schedule_error
from planner.sharding import DpMode, hybrid_shard_error, recompute_every
from planner.strict import StrictModel, parse_document, read_document

SCHEMA_VERSION = 4
SCHEMA_PATH = Path(__file__).with_name("plan.schema.json")
MESH_AXES = ("dp", "pp", "tp")
"""The mesh's axes, outermost first: data parallel, pipeline, tensor parallel."""


class Strategy(StrEnum):
    """How a plan places the model on its ranks (written into the document as the value)."""

    DP = "dp"
    """Replicas of the whole model, gradients all-reduced (DDP)."""
    PP = "pp"
    """One pipeline: stages on ranks, torch's pipeline schedule."""
    HYBRID = "hybrid"
    """Replicas of a pipeline: dp x pp."""
    MP = "mp"
    """Named sub-networks on their own ranks (a GAN's generator and discriminator)."""


class ModelRef(StrictModel):
    source: str = Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="Model source: zoo name, hf:<type> or py:pkg.mod:fn.",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="Size overrides it was built with.")
    graph_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the coarsened graph.")
    blocks: list[str] = Field(min_length=1, description="Coarsened blocks (module FQNs) in execution order.")
    input_shapes: list[list[int]] = Field(description="Shapes of the example inputs used for tracing.")
    trace_batch_size: int = Field(
        default=1, ge=1, le=MAX_OVERRIDE_INT, description="Samples in the traced input."
    )
    seq_len: int | None = Field(
        default=None,
        ge=1,
        le=MAX_OVERRIDE_INT,
        description="Tokens per sample the model was traced and planned at (a Hugging Face model: "
        "its context length unless overridden); none for models without a sequence.",
    )

    @field_validator("overrides")
    @classmethod
    def _sizes_within_limits(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_overrides(overrides)
        except SourceError as exc:
            raise ValueError(str(exc)) from None


class Optimizer(StrictModel):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    # Lax: a JSON array is a tuple only outside strict mode (documents are read strictly).
    betas: tuple[float, float] = Field(default=(0.9, 0.999), strict=False)
    eps: float = Field(default=1e-8, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1, description="SGD only.")


class Training(StrictModel):
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="torch.manual_seed takes 64 bits.")
    global_batch: int = Field(
        ge=1, le=MAX_GLOBAL_BATCH, description="Samples per optimizer step, all replicas together."
    )
    micro_batches: int = Field(default=1, ge=1, description="Micro-batches per step in each replica.")
    optimizer: Optimizer = Field(default_factory=Optimizer)
    # Lax: a Python caller may pass the value ("bf16-mixed"); JSON documents carry the value.
    precision: Precision = Field(
        default=Precision.FP32,
        strict=False,
        description="fp32, bf16-mixed (fp32 weights, bf16 compute), fp16-mixed (with loss scaling) or bf16.",
    )
    dataset: str = Field(min_length=1, description="Data set id, e.g. digits or bytes:stdlib.")
    steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    checkpoint_every: int = Field(
        default=0, ge=0, le=MAX_STEPS, description="Steps between checkpoints; 0: only on stop."
    )
    pg_timeout_s: float = Field(
        default=60.0,
        ge=MIN_PG_TIMEOUT_S,
        le=MAX_PG_TIMEOUT_S,
        description="Process-group timeout: a hung peer fails after it.",
    )


class UnusedDevice(StrictModel):
    device: int = Field(ge=0)
    reason: str = Field(min_length=1)


class Stage(StrictModel):
    index: int = Field(ge=0)
    first: str = Field(description="FQN of the first block in this stage.")
    last: str = Field(description="FQN of the last block in this stage.")
    pp_rank: int = Field(ge=0, description="Pipeline rank that runs it: index % pp_degree.")
    name: str = Field(default="", description="Sub-network name (mp strategy).")
    recompute: str = Field(
        default="none",
        max_length=24,
        description="Activation recomputation: none, full (every block) or every-K (the blocks "
        "whose position in the model is a multiple of K).",
    )

    @field_validator("recompute")
    @classmethod
    def _known_recompute(cls, text: str) -> str:
        recompute_every(text)  # raises, naming the value
        return text

    @property
    def recompute_every(self) -> int:
        """K of the setting: 0 none, 1 full (`planner.sharding.recompute_every`)."""
        return recompute_every(self.recompute)


class RankAssignment(StrictModel):
    rank: int = Field(ge=0)
    device: int = Field(ge=0)
    node: int = Field(ge=0)
    dp_index: int = Field(ge=0)
    pp_index: int = Field(ge=0)
    tp_index: int = Field(default=0, ge=0, description="Position in its tensor group (0 without tp).")

    @property
    def coords(self) -> tuple[int, int, int]:
        """``(dp_index, pp_index, tp_index)``: the rank's place on the mesh's axes (`MESH_AXES`)."""
        return (self.dp_index, self.pp_index, self.tp_index)


class Replica(StrictModel):
    dp_index: int = Field(ge=0)
    batch_share: int = Field(ge=1, description="Samples of the global batch this replica takes per step.")


class DeviceMemory(StrictModel):
    device: int = Field(ge=0)
    bytes: int = Field(ge=0)


class Predicted(StrictModel):
    step_time_s: float = Field(ge=0)
    samples_per_s: float = Field(ge=0)
    bubble_fraction: float = Field(ge=0, le=1)
    bytes_sent_per_step: int = Field(ge=0)
    peak_memory: list[DeviceMemory]
    sources: dict[str, str] = Field(
        description="Per figure: 'datasheet', 'profile:<sha256>', or both joined by '+'."
    )
    mfu: float | None = Field(
        default=None,
        ge=0,
        description="Model FLOPs utilisation: the model's training FLOPs per second (3 x forward, "
        "recomputation not counted) over the devices' dense peak for the compute dtype.",
    )


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 document as version 2: ``training.dtype`` named what ``precision`` names
    now (bfloat16 and float16 plans were priced as mixed precision)."""
    data = {**data, "schema_version": 2}
    training = data.get("training")
    if isinstance(training, dict) and "dtype" in training:
        training = dict(training)
        dtype = training.pop("dtype")
        if not isinstance(dtype, str) or dtype not in FROM_DTYPE:  # a list is not hashable
            raise ValueError(f"training.dtype: {dtype!r:.60} is not one of {', '.join(FROM_DTYPE)}")
        training["precision"] = FROM_DTYPE[dtype].value
        data["training"] = training
    return data


class Plan(StrictModel):
    schema_version: int = SCHEMA_VERSION
    model: ModelRef
    cluster: Cluster
    unused_devices: list[UnusedDevice] = Field(default_factory=list)
    training: Training
    # Lax: a Python caller may pass the value ("dp"); JSON documents carry the value anyway.
    strategy: Strategy = Field(strict=False)
    schedule: Schedule | None = Field(default=None, strict=False, description="pp and hybrid only.")
    virtual_stages: int = Field(default=1, ge=1, description="Stages per pipeline rank (interleaved).")
    # Lax like strategy: the value in documents, the enum from Python callers.
    dp_mode: DpMode = Field(
        default=DpMode.REPLICATE,
        strict=False,
        description="How each stage's data-parallel group holds it: replicate, shard_grad_op, "
        "full_shard or hybrid_shard (planner.sharding).",
    )
    dp_degree: int = Field(ge=1)
    pp_degree: int = Field(ge=1)
    tp_degree: int = Field(
        default=1,
        ge=1,
        description="Ranks each block with a tensor-parallel layout is split across (Megatron's "
        "column then row split: planner.tensor_parallel); 1: none.",
    )
    sequence_parallel: bool = Field(
        default=False,
        description="With tp_degree >= 2: norms and dropout split along the sequence, all-gather "
        "and reduce-scatter in place of each all-reduce (Megatron-SP).",
    )
    stages: list[Stage] = Field(min_length=1)
    ranks: list[RankAssignment] = Field(min_length=1)
    replicas: list[Replica] = Field(min_length=1)
    predicted: Predicted | None = None

    @model_validator(mode="before")
    @classmethod
    def _version_first(cls, data: Any) -> Any:
        # Checked before any other field: a newer document's other errors would mislead.
        if isinstance(data, dict):
            version = data.get("schema_version", SCHEMA_VERSION)
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise ValueError(
                    f"schema_version {version} is newer than this planner supports ({SCHEMA_VERSION})"
                )
            if version == 1:
                data = _from_version_1(data)
            if data.get("schema_version") in (2, 3):  # the defaults: replicate, recompute none, tp 1
                data = {**data, "schema_version": SCHEMA_VERSION}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.schema_version < 1:
            raise ValueError(f"schema_version: {self.schema_version} is not a version")
        self._check_strategy()
        self._check_precision()
        self._check_ranks()
        self._check_stages()
        self._check_replicas()
        self._check_levers()
        self._check_tensor_parallel()
        return self

    # -- the checks, each naming the field ------------------------------------------------
    def _check_precision(self) -> None:
        if self.adversarial and self.training.precision == Precision.FP16_MIXED:
            raise ValueError(
                "training.precision: the GAN trains in fp32, bf16-mixed or bf16; fp16-mixed's loss "
                "scale would have to be shared by its two players' separate steps"
            )

    def _check_strategy(self) -> None:
        s, dp, pp = self.strategy, self.dp_degree, self.pp_degree
        needs = {
            Strategy.DP: (pp == 1, "dp needs pp_degree 1"),
            Strategy.PP: (dp == 1 and pp >= 2, "pp needs dp_degree 1 and pp_degree >= 2"),
            Strategy.HYBRID: (dp >= 2 and pp >= 2, "hybrid needs dp_degree >= 2 and pp_degree >= 2"),
            Strategy.MP: (dp == 1 and pp >= 2, "mp needs dp_degree 1 and one pipeline rank per sub-network"),
        }
        ok, message = needs[s]
        if not ok:
            raise ValueError(f"strategy: {message} (got dp_degree {dp}, pp_degree {pp})")
        if s in (Strategy.PP, Strategy.HYBRID):
            if self.schedule is None:
                raise ValueError(f"schedule: {s} needs a schedule (gpipe, 1f1b or interleaved_1f1b)")
            error = schedule_error(self.schedule, pp, self.training.micro_batches, self.virtual_stages)
            if error:
                raise ValueError(f"schedule: {error}")
        else:
            if self.schedule is not None:
                raise ValueError(f"schedule: {s} has no pipeline schedule, got {self.schedule!r}")
            if self.virtual_stages != 1:
                raise ValueError(f"virtual_stages: {s} needs 1, got {self.virtual_stages}")
        if s == "mp" and self.training.micro_batches != 1:
            raise ValueError("training.micro_batches: mp has no micro-batch schedule, use 1")

    def _check_levers(self) -> None:
        mode = self.dp_mode
        if self.adversarial and (mode.sharded or any(st.recompute_every for st in self.stages)):
            raise ValueError(
                "dp_mode: the GAN's two players step apart; it replicates (dp_mode replicate) "
                "and recomputes nothing"
            )
        if mode.sharded and self.dp_degree < 2:
            raise ValueError(
                f"dp_mode: {mode} shards over replicas; this plan has dp_degree 1 (use replicate)"
            )
        if mode == DpMode.HYBRID_SHARD:
            groups = [
                [self.rank_of(dp, q, t).node for dp in range(self.dp_degree)]
                for q in range(self.pp_degree)
                for t in range(self.tp_degree)
            ]
            error = hybrid_shard_error(groups)
            if error:
                raise ValueError(
                    f"dp_mode: hybrid_shard shards in a node and replicates across nodes; {error}"
                )

    def _check_tensor_parallel(self) -> None:
        if self.sequence_parallel and self.tp_degree < 2:
            raise ValueError(
                "sequence_parallel: splits a tensor group's activations along the sequence; "
                f"this plan has tp_degree {self.tp_degree} (use tp_degree >= 2, or false)"
            )
        if self.tp_degree > 1 and self.adversarial:
            raise ValueError("tp_degree: the GAN's networks have no tensor-parallel layout (use 1)")
        if self.sequence_parallel and self.model.seq_len is None:
            raise ValueError("sequence_parallel: the model has no sequence to split")
        if self.sequence_parallel and self.model.seq_len % self.tp_degree:
            raise ValueError(
                f"sequence_parallel: tp_degree {self.tp_degree} does not divide the sequence "
                f"length {self.model.seq_len} (each rank of a tensor group holds an equal slice)"
            )

    def _check_ranks(self) -> None:
        n = len(self.ranks)
        dp, pp, tp = self.dp_degree, self.pp_degree, self.tp_degree
        if dp * pp * tp != n:
            raise ValueError(
                f"ranks: dp_degree x pp_degree x tp_degree = {dp} x {pp} x {tp} = "
                f"{dp * pp * tp}, but {n} ranks are listed"
            )
        devices = {d.id: d for d in self.cluster.devices}
        seen_devices: dict[int, int] = {}
        seen_coords: set[tuple[int, int, int]] = set()
        for i, r in enumerate(self.ranks):
            if r.rank != i:
                raise ValueError(f"ranks[{i}].rank: expected {i}, got {r.rank} (ranks are listed in order)")
            if r.device not in devices:
                raise ValueError(f"ranks[{i}].device: device {r.device} is not in the cluster")
            if r.device in seen_devices:
                raise ValueError(
                    f"ranks[{i}].device: device {r.device} is already rank {seen_devices[r.device]}'s"
                )
            seen_devices[r.device] = i
            if devices[r.device].node != r.node:
                raise ValueError(
                    f"ranks[{i}].node: device {r.device} is on node {devices[r.device].node}, not {r.node}"
                )
            if r.dp_index >= dp or r.pp_index >= pp or r.tp_index >= tp:
                raise ValueError(
                    f"ranks[{i}]: coordinates {r.coords} (dp, pp, tp) are outside "
                    f"dp_degree {dp} x pp_degree {pp} x tp_degree {tp}"
                )
            if r.coords in seen_coords:
                raise ValueError(f"ranks[{i}]: coordinates {r.coords} (dp, pp, tp) are taken twice")
            seen_coords.add(r.coords)
        for i, u in enumerate(self.unused_devices):
            if u.device not in devices:
                raise ValueError(f"unused_devices[{i}].device: device {u.device} is not in the cluster")
            if u.device in seen_devices:
                raise ValueError(
                    f"unused_devices[{i}].device: device {u.device} is used by rank {seen_devices[u.device]}"
                )
        listed = set(seen_devices) | {u.device for u in self.unused_devices}
        missing = sorted(set(devices) - listed)
        if missing:
            raise ValueError(
                f"unused_devices: device {missing[0]} is neither used by a rank nor listed with a reason"
            )

    def _check_stages(self) -> None:
        blocks = self.model.blocks
        if len(set(blocks)) != len(blocks):
            raise ValueError("model.blocks: a block is listed twice")
        position = {b: i for i, b in enumerate(blocks)}
        expected = self.pp_degree * self.virtual_stages
        if len(self.stages) != expected:
            raise ValueError(
                f"stages: pp_degree x virtual_stages = {self.pp_degree} x {self.virtual_stages} needs "
                f"{expected} stages, got {len(self.stages)}"
            )
        next_block = 0
        for i, st in enumerate(self.stages):
            if st.index != i:
                raise ValueError(
                    f"stages[{i}].index: expected {i}, got {st.index} (stages are listed in order)"
                )
            if st.pp_rank != i % self.pp_degree:
                raise ValueError(f"stages[{i}].pp_rank: stage {i} runs on pipeline rank {i % self.pp_degree}")
            for end in ("first", "last"):
                if getattr(st, end) not in position:
                    raise ValueError(f"stages[{i}].{end}: {getattr(st, end)!r} is not a block of the model")
            first, last = position[st.first], position[st.last]
            if first != next_block:
                want = blocks[next_block] if next_block < len(blocks) else "nothing (all blocks are covered)"
                raise ValueError(
                    f"stages[{i}].first: expected {want!r} (stages cover the blocks once, in order)"
                )
            if last < first:
                raise ValueError(
                    f"stages[{i}]: last {st.last!r} comes before first {st.first!r}; a stage is never empty"
                )
            next_block = last + 1
        if next_block != len(blocks):
            raise ValueError(f"stages: blocks from {blocks[next_block]!r} on are in no stage")
        if self.strategy == Strategy.MP and any(not st.name for st in self.stages):
            raise ValueError("stages: mp stages need the name of their sub-network")

    def _check_replicas(self) -> None:
        indices = sorted(r.dp_index for r in self.replicas)
        if indices != list(range(self.dp_degree)):
            raise ValueError(f"replicas: need one per dp_index 0..{self.dp_degree - 1}, got {indices}")
        total = sum(r.batch_share for r in self.replicas)
        if total != self.training.global_batch:
            want = self.training.global_batch
            raise ValueError(f"replicas: batch shares sum to {total}, not training.global_batch {want}")
        m = self.training.micro_batches
        for i, r in enumerate(self.replicas):
            if r.batch_share % m:
                raise ValueError(
                    f"replicas[{i}].batch_share: {r.batch_share} does not split evenly into {m} micro-batches"
                )

    # -- convenience ---------------------------------------------------------------------
    @property
    def adversarial(self) -> bool:
        """Whether the model is a GAN: two named networks, each with its own step (planner.networks)."""
        return is_adversarial(self.model.blocks)

    def stage_blocks(self) -> list[list[str]]:
        """The blocks of every stage, in order."""
        blocks = self.model.blocks
        position = {b: i for i, b in enumerate(blocks)}
        return [blocks[position[s.first] : position[s.last] + 1] for s in self.stages]

    @cached_property
    def grid(self) -> dict[tuple[int, int, int], RankAssignment]:
        """Ranks by their ``(dp_index, pp_index, tp_index)`` coordinates."""
        return {r.coords: r for r in self.ranks}

    def rank_of(self, dp_index: int, pp_index: int, tp_index: int = 0) -> RankAssignment:
        """The rank at these coordinates (the first of its tensor group unless ``tp_index``)."""
        try:
            return self.grid[(dp_index, pp_index, tp_index)]
        except KeyError:
            raise PlanError(f"no rank at coordinates ({dp_index}, {pp_index}, {tp_index})") from None

    def tensor_group(self, dp_index: int, pp_index: int) -> list[RankAssignment]:
        """The ranks that split the stages of pipeline rank ``pp_index`` of replica ``dp_index``."""
        return [self.rank_of(dp_index, pp_index, t) for t in range(self.tp_degree)]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def plan_from_json(text: str, origin: str = "plan") -> Plan:
    """Parse and validate a plan; a `PlanError` names the field that is wrong."""
    return parse_document(Plan, text, origin, PlanError, "plan")


def load_plan(path: str | Path) -> Plan:
    return read_document(Plan, path, PlanError, "plan")


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output path whose folder is missing or not writable."""
    import os

    folder = Path(path).parent
    if not folder.is_dir():
        raise PlanError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if Path(path).is_dir() or not os.access(folder, os.W_OK):
        raise PlanError(f"cannot write {str(path)!r}: it is a folder, or its folder is not writable")


def save_plan(plan: Plan, path: str | Path) -> None:
    try:
        Path(path).write_text(plan.to_json() + "\n")
    except OSError as exc:
        raise PlanError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def json_schema() -> dict[str, Any]:
    """The plan's JSON Schema (committed as planner/plan.schema.json; a test keeps it current)."""
    return Plan.model_json_schema()
