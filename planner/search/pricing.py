"""Price one candidate: build its plan, choose its stages, simulate its step with `price()`.

The stages are split by `planner.search.stage_problem`: proven optimal by branch and bound
while the problem is small and the search's time budget lasts, else the split that balances
work, priced once. Its memory levers (`planner.search.levers`) are tried cheapest first
until one fits. A candidate that does not fit with any gets the reason of the last tried:
the stage, the device and by how much memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx

from planner.cluster import Cluster
from planner.cost.price import Prediction, Pricer
from planner.errors import PlannerError
from planner.plan import Plan, Strategy
from planner.search.build import make_plan
from planner.search.candidate import Candidate
from planner.search.partition import min_bottleneck_cuts
from planner.search.stage_problem import StageProblem
from planner.sharding import DpMode

EXACT_LIMIT = 4096  # blocks x stages up to which the split is proven optimal by branch and bound


def price_candidate(
    pricer: Pricer,
    graph: nx.DiGraph,
    cluster: Cluster,
    c: Candidate,
    training: dict[str, Any],
    units: list[int] | None,
    max_evaluations: int,
    max_nodes: int,
    prove: bool | Callable[[], bool] = True,
    levers: list[tuple[DpMode, str]] | None = None,
) -> None:
    """Fill in ``c.plan``, ``c.prediction``, ``c.exact``, its levers and, when it cannot run,
    ``c.reason``.

    ``units``: cut only at these block indices (`planner.search.stage_problem.unit_starts`);
    ``prove``: try to prove the split optimal (else balance work and price once); a callable
    is asked again before each lever (the search's time budget for proofs runs out between
    them);
    ``levers``: (dp_mode, recompute) to try in order until one fits (default: the
    candidate's own).
    """
    tries = levers or [(c.dp_mode, c.recompute)]
    for i, (dp_mode, recompute) in enumerate(tries):
        c.dp_mode, c.recompute, c.reason = dp_mode, recompute, ""
        last = i == len(tries) - 1  # priced even when it cannot fit: its row says why
        _price_with_levers(
            pricer,
            graph,
            cluster,
            c,
            training,
            units,
            max_evaluations,
            max_nodes,
            prove() if callable(prove) else prove,
            last,
        )
        if c.feasible:
            return


def _price_with_levers(
    pricer, graph, cluster, c: Candidate, training, units, max_evaluations, max_nodes, prove, last=True
):
    try:
        template = template_plan(graph, cluster, c, training, pricer.digest)
    except PlannerError as exc:
        c.reason = str(exc)
        return
    problem = StageProblem(pricer, template, units) if c.strategy != Strategy.MP else None
    hopeless = problem is not None and not problem.may_fit()
    if hopeless and not last:
        c.reason = "over memory by its lower bound"  # a lever after this one is tried
        return
    # No split can fit: its even split, priced once, says which device is over and by how much.
    if hopeless or c.strategy == Strategy.MP or c.pp_degree * c.virtual_stages == 1:
        c.plan, c.prediction, c.exact = template, pricer(template, with_timeline=False), not hopeless
    else:
        c.plan, c.exact = _split(problem, units, max_evaluations, max_nodes, prove)
        if not last and not pricer.fits(c.plan):
            c.reason = "over memory"  # a lever after this one is tried: no need to time it
            return
        c.prediction = pricer(c.plan, with_timeline=False)
    if not c.prediction.feasible:
        c.reason = over_memory(c.plan, c.prediction, cluster)
    else:
        c.plan = c.plan.model_copy(update={"predicted": c.prediction.to_predicted()})


def candidate_plan(graph: nx.DiGraph, cluster: Cluster, c: Candidate, **choices: Any) -> Plan:
    """The candidate's layout as a plan; ``choices`` are what else `make_plan` takes (the
    cuts, the training settings...): without cuts, its stages split evenly."""
    return make_plan(
        graph,
        cluster,
        strategy=c.strategy,
        global_batch=sum(c.shares),
        dp_degree=c.dp_degree,
        pp_degree=c.pp_degree,
        schedule=c.schedule,
        micro_batches=c.micro_batches,
        virtual_stages=c.virtual_stages,
        devices=c.devices,
        coords=c.coords,
        shares=c.shares,
        tp_degree=c.tp_degree,
        sequence_parallel=c.sequence_parallel,
        **choices,
    )


def template_plan(graph: nx.DiGraph, cluster: Cluster, c: Candidate, training, digest: str) -> Plan:
    """The candidate as a plan, its stages split evenly (a split to be chosen)."""
    unused = {d.id for d in cluster.devices} - set(c.devices)
    return candidate_plan(
        graph,
        cluster,
        c,
        stage_names=c.names or None,
        training=training,
        unused_reason="not used by this plan" if unused else "",
        digest=digest,
        dp_mode=c.dp_mode,
        recompute=c.recompute,
    )


def _split(
    problem: StageProblem, units: list[int] | None, max_evaluations: int, max_nodes: int, prove: bool
) -> tuple[Plan, bool]:
    """The problem's template with its best split found, and whether that split is proven
    optimal (the problem is the one `may_fit` was asked: built once per lever)."""
    cuts, exact = None, False
    if prove and len(problem.work[0]) * problem.k <= EXACT_LIMIT:
        result = problem.solve(max_evaluations=max_evaluations, max_nodes=max_nodes)
        # Proven among unit boundaries only, not among all blocks.
        exact = result.exact and units is None
        cuts = result.cuts
    cuts = cuts if cuts is not None else min_bottleneck_cuts(problem.work)  # too large to prove
    return problem.plan(cuts), exact


def over_memory(plan: Plan, pred: Prediction, cluster: Cluster) -> str:
    """Where the plan runs out of memory: the worst device's stages, need and capacity."""
    worst = max(pred.memory, key=lambda m: m.over_bytes)
    stages = [s.index for s in plan.stages if s.pp_rank == plan.ranks[worst.rank].pp_index]
    kind = cluster.device(worst.device).kind
    where = f"stage {stages[0]}" if len(stages) == 1 else f"stages {', '.join(map(str, stages))}"
    return (
        f"{where} on device {worst.device} ({kind}) needs {_gib(worst.total)}, "
        f"{_gib(worst.over_bytes)} over its {_gib(worst.capacity)}"
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.1f} MiB"
