"""How the dashboard names a plan: the words an engineer tells plans apart by.

One place for every page (Plan, Export, Runs, Monitor, the sidebar), so a plan reads the
same wherever it is shown: ``gpt: pipeline × 2, 1F1B, 8 micro-batches``.
"""

from __future__ import annotations

from planner.plan import Plan, Strategy
from planner.schedules import Schedule

SCHEDULE_NAMES = {
    Schedule.GPIPE: "GPipe",
    Schedule.ONE_F_ONE_B: "1F1B",
    Schedule.INTERLEAVED_1F1B: "interleaved 1F1B",
}
SHARDING_NAMES = {"shard_grad_op": "ZeRO-2", "full_shard": "ZeRO-3", "hybrid_shard": "HSDP"}


def layout_name(
    strategy: str,
    dp: int,
    pp: int,
    schedule: str | None,
    virtual_stages: int,
    micro_batches: int,
    mesh: str = "",
    dp_mode: str = "replicate",
    recompute: str = "none",
    tp: int = 1,
    sequence_parallel: bool = False,
) -> str:
    """How a layout splits the model, in a few words (its memory levers when it pulls them).

    >>> layout_name("hybrid", 2, 2, "1f1b", 1, 8)
    'dp 2 × pp 2, 1F1B, 8 micro-batches'
    >>> layout_name("pp", 1, 4, "interleaved_1f1b", 2, 16, "pipelines in nodes")
    'pipeline × 4, interleaved 1F1B (2 stages per rank), 16 micro-batches, pipelines in nodes'
    >>> layout_name("dp", 2, 1, None, 1, 1), layout_name("dp", 1, 1, None, 1, 1)
    ('data parallel × 2', 'one device')
    >>> layout_name("dp", 8, 1, None, 1, 1, dp_mode="full_shard", recompute="full")
    'data parallel × 8, ZeRO-3, recompute full'
    >>> layout_name("dp", 1, 1, None, 1, 1, tp=8)
    'tensor parallel × 8'
    >>> layout_name("dp", 4, 1, None, 1, 1, tp=2, sequence_parallel=True)
    'data parallel × 4, tensor × 2, sequence parallel'
    """
    if strategy == Strategy.DP:
        text = f"data parallel × {dp}" if dp > 1 else "one device"
    elif strategy == Strategy.MP:
        text = f"model parallel, {pp} sub-networks on their own ranks"
    else:
        name = SCHEDULE_NAMES.get(schedule or "", schedule or "no schedule")
        if virtual_stages > 1:
            name += f" ({virtual_stages} stages per rank)"
        split = f"pipeline × {pp}" if strategy == Strategy.PP else f"dp {dp} × pp {pp}"
        batches = f"{micro_batches} micro-batch{'es' if micro_batches != 1 else ''}"
        text = f"{split}, {name}, {batches}"
    if tp > 1:
        text = f"tensor parallel × {tp}" if text == "one device" else f"{text}, tensor × {tp}"
        text += ", sequence parallel" if sequence_parallel else ""
    if dp_mode in SHARDING_NAMES:
        text += f", {SHARDING_NAMES[dp_mode]}"
    if recompute != "none":
        text += f", recompute {recompute}"
    return f"{text}, {mesh}" if mesh else text


def candidate_name(candidate) -> str:
    """A search candidate (`planner.search.candidate.Candidate`) in words, as the Plan page lists it."""
    c = candidate
    return layout_name(
        c.strategy,
        c.dp_degree,
        c.pp_degree,
        c.schedule,
        c.virtual_stages,
        c.micro_batches,
        c.mesh,
        c.dp_mode,
        c.recompute,
        c.tp_degree,
        c.sequence_parallel,
    )


def strategy_name(plan: Plan) -> str:
    """The plan's layout in words (`layout_name`)."""
    return layout_name(
        plan.strategy,
        plan.dp_degree,
        plan.pp_degree,
        plan.schedule,
        plan.virtual_stages,
        plan.training.micro_batches,
        dp_mode=plan.dp_mode,
        recompute=_recompute(plan),
        tp=plan.tp_degree,
        sequence_parallel=plan.sequence_parallel,
    )


def _recompute(plan: Plan) -> str:
    """The stages' recomputation, or "per stage" when they differ."""
    settings = {s.recompute for s in plan.stages}
    return settings.pop() if len(settings) == 1 else "per stage"


def model_name(plan: Plan) -> str:
    """The model source with its overrides: ``gpt (n_layer=4, d_model=128)``."""
    overrides = ", ".join(f"{k}={v}" for k, v in plan.model.overrides.items())
    return f"{plan.model.source} ({overrides})" if overrides else plan.model.source


def plan_name(plan: Plan) -> str:
    """A plan as a user tells it from the others: ``gpt: pipeline × 2, 1F1B, 8 micro-batches``."""
    return f"{model_name(plan)}: {strategy_name(plan)}"
