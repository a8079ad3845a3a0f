"""Hand edits of a chosen plan: which ones are valid, what changed, and the edited plan.

A candidate from the search is edited in five ways: where each stage starts, how many
micro-batches a replica's share is cut into, the pipeline schedule, how the data-parallel
groups hold the model, and what the stages recompute (`planner.sharding`). Only edits that
give a valid plan are offered: a micro-batch count divides every replica's share and meets
the schedule's rule (`planner.schedules.schedule_error`, torch's own checks); a schedule
keeps the candidate's stage count (interleaved 1F1B runs two stages per pipeline rank, the
others one); a stage starts after the previous one and before the next; a sharded mode
needs replicas, and hybrid sharding replicas on two nodes or more, as many on each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from dashboard.naming import SCHEDULE_NAMES
from planner.plan import Plan, Strategy
from planner.schedules import SCHEDULES, Schedule, schedule_error
from planner.search.build import make_plan
from planner.sharding import DpMode, hybrid_shard_error

MIXED = "as each stage has it"
"""The recomputation of a plan whose stages differ (an imported one): each keeps its own."""
RECOMPUTE_OPTIONS = ("none", "full", "every-2", "every-4")


@dataclass(frozen=True)
class Edits:
    """The editable choices of a plan: stage starts (block indices), micro-batches, schedule,
    the data-parallel mode and every stage's recomputation (or `MIXED`)."""

    cuts: tuple[int, ...]
    micro_batches: int
    schedule: str | None
    dp_mode: str = DpMode.REPLICATE.value
    recompute: str = "none"


def editable(plan: Plan) -> bool:
    """Pipelines have stages to edit; data parallel (one stage) and mp (one network per rank) do not."""
    return plan.strategy in (Strategy.PP, Strategy.HYBRID)


def levers_editable(plan: Plan) -> bool:
    """Every plan but the GAN's may shard and recompute (its players step apart)."""
    return not plan.adversarial


def edits_of(plan: Plan) -> Edits:
    position = {b: i for i, b in enumerate(plan.model.blocks)}
    settings = {s.recompute for s in plan.stages}
    return Edits(
        tuple(position[s.first] for s in plan.stages[1:]),
        plan.training.micro_batches,
        plan.schedule,
        plan.dp_mode.value,
        settings.pop() if len(settings) == 1 else MIXED,
    )


def dp_mode_options(plan: Plan) -> list[str]:
    """The data-parallel modes the plan's layout allows.

    >>> dp_mode_options(_example(shares=(8,), pp=2)), dp_mode_options(_example(shares=(4, 4), pp=2))
    (['replicate'], ['replicate', 'shard_grad_op', 'full_shard'])
    """
    if plan.dp_degree < 2:
        return [DpMode.REPLICATE.value]
    modes = [DpMode.REPLICATE, DpMode.SHARD_GRAD_OP]
    groups = [[plan.rank_of(dp, q).node for dp in range(plan.dp_degree)] for q in range(plan.pp_degree)]
    if hybrid_shard_error(groups) is None:
        modes.append(DpMode.HYBRID_SHARD)
    return [m.value for m in [*modes, DpMode.FULL_SHARD]]


def recompute_options(current: str) -> list[str]:
    """The recomputation settings offered, the plan's own among them."""
    return list(RECOMPUTE_OPTIONS) + ([current] if current not in RECOMPUTE_OPTIONS else [])


def micro_batch_options(plan: Plan, schedule: str) -> list[int]:
    """Micro-batch counts that split every replica's share evenly and that ``schedule`` accepts.

    >>> micro_batch_options(_example(shares=(8,), pp=2), "1f1b")
    [2, 4, 8]
    >>> micro_batch_options(_example(shares=(6, 3), pp=2), "gpipe")
    [1, 3]
    """
    common = math.gcd(*(r.batch_share for r in plan.replicas))
    virtual = 2 if schedule == Schedule.INTERLEAVED_1F1B else 1
    return [m for m in _divisors(common) if schedule_error(schedule, plan.pp_degree, m, virtual) is None]


def _divisors(n: int) -> list[int]:
    """Every divisor of ``n``, smallest first.

    >>> _divisors(12)
    [1, 2, 3, 4, 6, 12]
    """
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def schedule_options(plan: Plan) -> list[str]:
    """Schedules that keep the plan's stage count and accept at least one micro-batch count."""
    keeps_stages = [s for s in SCHEDULES if (s == Schedule.INTERLEAVED_1F1B) == (plan.virtual_stages > 1)]
    return [s for s in keeps_stages if micro_batch_options(plan, s)]


def cut_options(cuts: tuple[int, ...] | list[int], i: int, n_blocks: int) -> list[int]:
    """Blocks where stage ``i + 1`` may start: after stage i's first block, before stage i + 2's.

    >>> cut_options([2, 5], 0, 8), cut_options([2, 5], 1, 8)
    ([1, 2, 3, 4], [3, 4, 5, 6, 7])
    """
    low = cuts[i - 1] + 1 if i > 0 else 1
    high = cuts[i + 1] - 1 if i + 1 < len(cuts) else n_blocks - 1
    return list(range(low, high + 1))


def changes(base: Edits, edits: Edits, blocks: list[str]) -> list[str]:
    """What ``edits`` change against the candidate, in words (empty when nothing does).

    >>> changes(Edits((2,), 4, "1f1b"), Edits((3,), 8, "gpipe"), ["a", "b", "c", "d"])
    ['stage 2 starts at d (was c)', 'micro-batches 8 (was 4)', 'schedule GPipe (was 1F1B)']
    >>> changes(Edits((), 1, None), Edits((), 1, None, "full_shard", "full"), ["a"])
    ['data parallel full_shard (was replicate)', 'recompute full (was none)']
    """
    out = [
        f"stage {i + 2} starts at {blocks[new]} (was {blocks[old]})"
        for i, (old, new) in enumerate(zip(base.cuts, edits.cuts, strict=True))
        if old != new
    ]
    if edits.micro_batches != base.micro_batches:
        out.append(f"micro-batches {edits.micro_batches} (was {base.micro_batches})")
    if edits.schedule != base.schedule:
        out.append(
            f"schedule {SCHEDULE_NAMES.get(edits.schedule, edits.schedule)} "
            f"(was {SCHEDULE_NAMES.get(base.schedule, base.schedule)})"
        )
    if edits.dp_mode != base.dp_mode:
        out.append(f"data parallel {edits.dp_mode} (was {base.dp_mode})")
    if edits.recompute != base.recompute:
        out.append(f"recompute {edits.recompute} (was {base.recompute})")
    return out


def apply(graph: nx.DiGraph, base: Plan, edits: Edits) -> Plan:
    """The candidate with ``edits``: same devices, coordinates, tensor groups, shares and
    training settings.

    Raises `planner.errors.PlanError` (naming the field) when the result is not a valid plan.
    """
    plan = make_plan(
        graph,
        base.cluster,
        strategy=base.strategy,
        global_batch=base.training.global_batch,
        dp_degree=base.dp_degree,
        pp_degree=base.pp_degree,
        schedule=edits.schedule,
        micro_batches=edits.micro_batches,
        virtual_stages=base.virtual_stages,
        cuts=list(edits.cuts),
        devices=[r.device for r in base.ranks],
        coords=[r.coords for r in base.ranks],
        shares=[r.batch_share for r in base.replicas],
        stage_names=[s.name for s in base.stages],
        training=base.training.model_dump(exclude={"global_batch", "micro_batches"}),
        digest=base.model.graph_digest,
        dp_mode=edits.dp_mode,
        recompute="none" if edits.recompute == MIXED else edits.recompute,
        tp_degree=base.tp_degree,
        sequence_parallel=base.sequence_parallel,
    )
    update = {"model": base.model, "unused_devices": base.unused_devices}
    if edits.recompute == MIXED:  # each stage keeps the candidate's setting (validated there)
        update["stages"] = [
            s.model_copy(update={"recompute": b.recompute})
            for s, b in zip(plan.stages, base.stages, strict=True)
        ]
    # The candidate's own model section and reasons for unused devices stay as they were.
    return plan.model_copy(update=update)


def _example(shares: tuple[int, ...], pp: int) -> Plan:
    """A small plan for the doctests: len(shares) replicas of a pp-stage pipeline on CPUs."""
    from planner.cluster import parse_short_form
    from planner.plan import ModelRef, RankAssignment, Replica, Stage, Training

    dp = len(shares)
    blocks = [f"b{i}" for i in range(pp)]
    return Plan(
        model=ModelRef(source="x", graph_digest="0" * 64, blocks=blocks, input_shapes=[[1]]),
        cluster=parse_short_form(f"cpu:{dp * pp}"),
        training=Training(global_batch=sum(shares), micro_batches=1, dataset="none"),
        strategy=Strategy.PP if dp == 1 else Strategy.HYBRID,
        schedule=Schedule.GPIPE,
        dp_degree=dp,
        pp_degree=pp,
        stages=[Stage(index=i, first=b, last=b, pp_rank=i) for i, b in enumerate(blocks)],
        ranks=[
            RankAssignment(rank=r, device=r, node=0, dp_index=r // pp, pp_index=r % pp)
            for r in range(dp * pp)
        ],
        replicas=[Replica(dp_index=i, batch_share=s) for i, s in enumerate(shares)],
    )
