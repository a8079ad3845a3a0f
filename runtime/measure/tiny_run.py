"""The tiny run: a model too small to compute, trained as the runtime trains, to measure
what the runtime itself costs (`runtime.measure.profiling.runtime_costs`).

Its plans are ordinary plans of the zoo MLP, 8 wide: a 2-stage pipeline under each of
torch's schedules (two stages a rank when interleaved), one sample per micro-batch, and a
data-parallel pair under DDP. The profile trains them with the runtime's own engines and
keeps, per forward or backward action, what the runtime's clocks leave of a step once its
compute, optimizer step and waits are taken out: the rule `runtime.rank.metrics` applies to
every real run's ``host_s``. A step of such a model is mostly waiting (a 1F1B step of zero
compute ping-pongs between its ranks), and those waits are the simulator's to price, from
the links' figures; dividing the whole step by its actions would count them twice.

The 1F1B pipeline is trained once more with blocks `WIDE` wide: what its step's host work
grows by, per byte of the gradients a rank holds, is the cost of zeroing them in place
before a step and scaling them after it (`Profile.grad_s_per_byte`).

The profiled model itself is trained as two DDP replicas and as one replica split across a
tensor group of two (`tensor_plans`; runtime.measure.profiling.tensor_parallel_pass_s says
what is taken from them).

The data-parallel pair is trained once more full_shard (FSDP2): what the runtime counts as
FSDP's work, less what the price charges for collectives of units that small (the profile's
own fits), is FSDP's own work per collective (`Profile.fsdp_collective_s`); what its
compute takes more than DDP's, per block and pass, is FSDP's hooks around each unit
(`Profile.fsdp_pass_s`).
"""

from __future__ import annotations

from typing import NamedTuple

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import Cluster
from planner.cost.sharded import collectives_per_step, pass_plan
from planner.errors import PlanError
from planner.plan import Plan
from planner.profile import DDP_STEP
from planner.schedules import Schedule, rank_actions
from planner.search.build import make_plan

TINY_MODEL = "mlp"
TINY_WIDTH = 8
"""The tiny model's width (inputs and hidden blocks) unless made `WIDE`; its classes."""
WIDE = 2048
"""Width of the tiny model whose gradients are worth zeroing: 4M weights a block (16 MB of
gradients; a quarter of that was lost in this machine's noise), each stage alike, one
sample a micro-batch so that its compute stays small."""
ACTION_M = 8
"""Micro-batches of the tiny pipeline, one sample each; a DDP replica takes them at once."""

LOOPS = (Schedule.GPIPE.value, Schedule.ONE_F_ONE_B.value, Schedule.INTERLEAVED_1F1B.value, DDP_STEP)
"""What the profile times: each pipeline schedule, and DDP's step (`Profile.schedule_action_s`)."""

_TRAINING = {"steps": 1, "optimizer": {"name": "adamw", "lr": 1e-3}}


class TinyPlan(NamedTuple):
    plan: Plan
    gradient_bytes: float
    """The bytes of gradients a rank holds, on average over the plan's ranks (from the trace)."""
    unit_bytes: float
    """The largest block's parameter bytes (an FSDP unit's, whole)."""


def tiny_plan(
    loop: str, cluster: Cluster, devices: tuple[int, int], width: int = TINY_WIDTH, dp_mode: str = "replicate"
) -> TinyPlan:
    """The tiny model's plan on ``devices`` under ``loop`` (one of `LOOPS`), its hidden
    blocks ``width`` wide; a data-parallel pair's groups held as ``dp_mode`` says."""
    stages = 4 if loop == Schedule.INTERLEAVED_1F1B.value else 2
    overrides = {"in_features": width, "hidden": [width] * stages, "num_classes": TINY_WIDTH}
    graph = coarsen(trace(TINY_MODEL, overrides))  # traced in fp32, the tiny plans' precision
    if loop == DDP_STEP:
        plan = make_plan(
            graph,
            cluster,
            strategy="dp",
            global_batch=2 * ACTION_M,
            dp_degree=2,
            devices=devices,
            training=_TRAINING,
            dp_mode=dp_mode,
        )
    else:
        plan = make_plan(
            graph,
            cluster,
            strategy="pp",
            global_batch=ACTION_M,
            pp_degree=2,
            schedule=loop,
            micro_batches=ACTION_M,
            virtual_stages=stages // 2,
            cuts=list(range(1, stages)),  # one hidden block a stage, the head on the last
            devices=devices,
            training=_TRAINING,
        )
    held = sum(graph.graph["param_bytes"].values()) * plan.dp_degree / len(plan.ranks)
    unit = max(graph.nodes[b].get("param_bytes", 0) for b in plan.model.blocks)
    return TinyPlan(plan, held, unit)


class TensorPlans(NamedTuple):
    replicated: Plan
    """Two replicas under DDP, each on the samples."""
    split: Plan
    """One replica split across a tensor group of two, on the same samples."""
    split_blocks: int


def tensor_plans(
    graph, cluster: Cluster, devices: tuple[int, int], samples: int, precision: str = "fp32"
) -> TensorPlans | None:
    """The model of ``graph`` twice on ``devices``, each rank computing ``samples``: as two DDP
    replicas and as one replica at tp 2 (None when no block of it splits in two)."""
    training = {**_TRAINING, "precision": precision}
    common = dict(strategy="dp", devices=devices, training=training)
    try:
        split = make_plan(graph, cluster, global_batch=samples, tp_degree=2, **common)
    except PlanError:  # no layout, or heads that two does not divide
        return None
    blocks = [b for b in split.model.blocks if "tp" in graph.nodes[b]]
    if not blocks:
        return None
    replicated = make_plan(graph, cluster, global_batch=2 * samples, dp_degree=2, **common)
    return TensorPlans(replicated, split, len(blocks))


def fsdp_collectives(plan: Plan) -> tuple[int, int]:
    """(all-gathers, reduce-scatters) a rank of a sharded data-parallel tiny plan runs in a
    step, as the price counts them (`planner.cost.sharded.pass_plan`: each block gathered
    for its forward, again for its backward under full_shard, and reduced once)."""
    order = rank_actions(Schedule.ONE_F_ONE_B, 1, 1)[0]  # a replica's step: F then B
    counts = collectives_per_step(pass_plan(plan.dp_mode, True, order))
    blocks = len(plan.model.blocks)
    return counts[(0, "gather")] * blocks, counts[(0, "reduce")] * blocks


def actions_per_rank(plan: Plan) -> int:
    """A rank's forwards and backwards in one step of a tiny plan."""
    if plan.pp_degree == 1:
        return 2
    return 2 * plan.training.micro_batches * plan.virtual_stages
