"""Search the plans: data, pipeline and hybrid parallel, ranked by `price()`.

The search takes every layout the cluster allows (`planner.search.layouts`), ranks them by
a quick estimate (`planner.search.screen`), and prices the best-screened variant of the
most promising families (`planner.search.pricing`: stages proven optimal by branch and
bound while small and within the time budget, else the split that balances work). Pure
data parallel, pure pipeline parallel and one device alone are always priced and listed,
with the reason when they do not fit. The result lists one row per family, the feasible
fastest first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from planner.cluster import Cluster
from planner.cost.price import Pricer
from planner.cost.timing import CostOptions
from planner.errors import PlannerError
from planner.networks import is_adversarial
from planner.plan import Strategy
from planner.precision import Precision
from planner.profile import Profile
from planner.search.build import model_blocks
from planner.search.candidate import Candidate
from planner.search.gc_threshold import fewer_collections
from planner.search.layouts import candidates as layout_candidates
from planner.search.layouts import device_speeds
from planner.search.levers import AUTO, check_levers, levers
from planner.search.pricing import price_candidate
from planner.search.screen import Screen
from planner.search.stage_problem import unit_starts
from planner.search.tensor_degrees import tp_degrees

STRATEGIES = (AUTO, *(s.value for s in Strategy))  # plain strings: widget options and messages

__all__ = ["STRATEGIES", "Candidate", "SearchResult", "search"]


@dataclass
class SearchResult:
    candidates: list[Candidate]
    """Priced candidates: feasible ones fastest first, then the infeasible with reasons."""
    screened: int
    """How many candidate layouts were screened before pricing."""
    units: int
    """Nodes actually partitioned (blocks, or groups of blocks for very long graphs)."""
    notes: list[str] = field(default_factory=list)
    """What limited the search, in words (the tensor-parallel degrees not tried, and why)."""

    @property
    def best(self) -> Candidate | None:
        return next((c for c in self.candidates if c.feasible), None)


@dataclass
class _Budget:
    """How much pricing the search may do."""

    max_priced: int
    max_evaluations: int
    max_nodes: int
    exact_budget_s: float
    started: float


@fewer_collections
def search(
    graph: nx.DiGraph,
    cluster: Cluster,
    *,
    global_batch: int,
    strategy: str = AUTO,
    schedule: str | None = None,
    micro_batches: int | None = None,
    dp_mode: str = AUTO,
    recompute: str = AUTO,
    tp: str | int = AUTO,
    sequence_parallel: bool = False,
    training: dict[str, Any] | None = None,
    profile: Profile | None = None,
    options: CostOptions | None = None,
    max_priced: int = 8,
    max_evaluations: int = 32,
    max_nodes: int = 20000,
    exact_budget_s: float = 2.0,
    compare: bool = True,
) -> SearchResult:
    """Find the fastest plan that fits; return it with the alternatives that were priced.

    Splits are proven optimal (branch and bound on `price()`) while the search has spent
    less than ``exact_budget_s``; after that, and for problems past
    `planner.search.pricing.EXACT_LIMIT`, the split that balances work is priced once and
    the row says it is not proven. ``dp_mode`` and ``recompute`` pin the memory levers
    (`planner.search.levers`; auto: the cheapest that fits); ``tp`` the tensor-parallel
    degree (auto: each one the model and nodes allow, `planner.search.tensor_degrees`),
    ``sequence_parallel`` splits the tensor groups' norms along the sequence. ``compare``
    False prices only the best-screened families (no pure strategies or single device to
    compare with): what sizing needs of each cluster it tries.
    """
    budget = _Budget(max_priced, max_evaluations, max_nodes, exact_budget_s, time.perf_counter())
    if strategy not in STRATEGIES:
        raise PlannerError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    check_levers(dp_mode, recompute)
    if global_batch < 1:
        raise PlannerError(f"global batch must be >= 1, got {global_batch}")
    pricer = Pricer(graph, cluster, profile, options)
    blocks = model_blocks(graph)
    training = dict(training or {})
    precision = Precision(training.get("precision", Precision.FP32))
    speeds = device_speeds(cluster, profile, blocks, precision.recipe.compute)
    wanted = None if strategy == AUTO else Strategy(strategy)
    degrees, notes = tp_degrees(graph, cluster, tp)
    if sequence_parallel and max(degrees) == 1:
        raise PlannerError(
            "sequence_parallel: splits a tensor group's norms; no tensor degree above 1 applies"
        )
    candidates = layout_candidates(
        cluster, speeds, blocks, global_batch, wanted, schedule, micro_batches, degrees, sequence_parallel
    )
    adversarial = is_adversarial(blocks)
    tries = _Levers(candidates, cluster, dp_mode, recompute, adversarial)
    if dp_mode != AUTO:  # a pinned mode may not apply (unpinned, replicating always does)
        candidates = [c for c in candidates if tries[id(c)]]
    if not candidates:
        raise PlannerError(
            _nothing_to_try(strategy, schedule, micro_batches, global_batch, len(blocks), dp_mode, recompute)
        )
    units = unit_starts(graph, blocks)
    screen = Screen(pricer, graph, blocks, training)
    for c in candidates:
        c.estimate = screen(cluster, c)
    candidates.sort(key=lambda c: c.estimate)
    chosen = _price_promising(
        pricer, graph, cluster, candidates, training, units, budget, tries, degrees, compare
    )
    chosen.sort(key=lambda c: (not c.feasible, c.prediction.step_time_s if c.prediction else math.inf))
    return SearchResult(
        _best_per_family(chosen), len(candidates), len(units) if units else len(blocks), notes
    )


def _price_promising(
    pricer, graph, cluster, screened, training, units, budget: _Budget, tries, degrees=(1,), compare=True
) -> list[Candidate]:
    """Price the best-screened variant of the first families, the pure strategies and the
    best of each tensor-parallel degree (when ``compare``), and, while none of those fits,
    further families down the screened list."""
    chosen = _best_per_family(screened)[: budget.max_priced]
    # Compare against pure data parallel, pure pipeline parallel and one device alone, and
    # show each tensor-parallel degree tried.
    musts = (
        lambda c: c.strategy == Strategy.DP and len(c.devices) > 1 and c.tp_degree == 1,
        lambda c: c.strategy == Strategy.PP and c.tp_degree == 1,
        lambda c: len(c.devices) == 1,
        *((lambda c, t=t: c.tp_degree == t) for t in degrees if t > 1),
    )
    for must in musts if compare else ():
        pure = next((c for c in screened if must(c)), None)
        if pure is not None and pure not in chosen:
            chosen.append(pure)

    def price(c: Candidate, prove: bool | Callable[[], bool]) -> None:
        limits = (budget.max_evaluations, budget.max_nodes)
        price_candidate(pricer, graph, cluster, c, training, units, *limits, prove, tries[id(c)])

    def within_budget() -> bool:  # asked before each lever: a proof may take the budget's rest
        return time.perf_counter() - budget.started < budget.exact_budget_s

    for c in chosen:
        price(c, within_budget)
    chosen = [_smaller_micro_batches(c, screened, price) for c in chosen]
    # When memory rules out every candidate priced so far, keep going down the screened list.
    rest = [c for c in _best_per_family(screened) if c not in chosen]
    while rest and not any(c.feasible for c in chosen) and len(chosen) < 4 * budget.max_priced:
        c = rest.pop(0)
        price(c, False)
        chosen.append(c)
    return chosen


class _Levers(dict):
    """id(candidate) -> its (dp_mode, recompute) tries (`planner.search.levers`), found when
    first asked: a search prices a few of its thousands of candidates."""

    def __init__(self, candidates: list[Candidate], *args) -> None:
        super().__init__()
        self._by_id, self._args = {id(c): c for c in candidates}, args

    def __missing__(self, key: int) -> list:
        self[key] = found = levers(self._by_id[key], *self._args)
        return found


def _smaller_micro_batches(c: Candidate, screened: list[Candidate], price, tries: int = 24) -> Candidate:
    """``c``, or, when its memory does not fit with any lever, the best-screened variant of its
    family whose micro-batches are at most half as large, priced (halving while none fits, down
    to one sample a micro-batch: ``tries`` halvings cover any global batch within the limits):
    the screen ranks a family's variants by time alone, and fewer samples per micro-batch hold
    fewer activations, logits and temporaries. One that fits only by recomputing is halved
    again while a smaller one might fit without (`_without_recomputing`)."""
    halved = False
    for _ in range(tries):
        if c.feasible and halved and c.recompute != "none":
            return _without_recomputing(c, screened, price)
        if c.feasible or c.prediction is None or not _batch_bound(c):
            return c
        smaller = _halved(c, screened)
        if smaller is None:
            return c
        price(smaller, False)
        c, halved = smaller, True
    return c


def _without_recomputing(c: Candidate, screened: list[Candidate], price, more: int = 3) -> Candidate:
    """The fastest of ``c`` (which fits by recomputing) and its halvings, halving until one
    fits without recomputing (or ``more`` halvings are spent): recomputation costs a forward
    per micro-batch, more micro-batches cost only their bubbles and launches."""
    best = c
    for _ in range(more):
        smaller = _halved(c, screened)
        if smaller is None:
            break
        price(smaller, False)
        c = smaller
        if c.feasible and c.prediction.step_time_s < best.prediction.step_time_s:
            best = c
        if c.feasible and c.recompute == "none":
            break
    return best


def _halved(c: Candidate, screened: list[Candidate]) -> Candidate | None:
    """The best-screened variant of ``c``'s family with micro-batches at most half as large."""
    size = max(c.shares) / c.micro_batches
    return next(
        (o for o in screened if o.family == c.family and max(o.shares) / o.micro_batches <= size / 2),
        None,
    )


def _batch_bound(c: Candidate) -> bool:
    """Whether ``c``'s fullest device would fit without what grows with the micro-batch (its
    activations, the loss's outputs, a recomputed block's, the receive buffers, and the
    temporaries, which hold the largest op's activations): else no smaller micro-batch can
    make it fit."""
    worst = max(c.prediction.memory, key=lambda m: m.over_bytes)
    grows = worst.activations + worst.loss_outputs + worst.recomputed + worst.buffers + worst.temporaries
    return worst.total - grows <= worst.capacity


def _best_per_family(ranked: list[Candidate]) -> list[Candidate]:
    """One row per (strategy, devices used, dp, pp, schedule): the best of its variants."""
    seen, out = set(), []
    for c in ranked:
        if c.family not in seen:
            seen.add(c.family)
            out.append(c)
    return out


def _nothing_to_try(strategy, schedule, m, batch, n_blocks, dp_mode, recompute) -> str:
    levers = f", dp_mode={dp_mode}, recompute={recompute}" if (dp_mode, recompute) != (AUTO, AUTO) else ""
    return (
        f"no {strategy} plan with schedule={schedule or 'any'}, micro-batches={m or 'any'}{levers} fits the "
        f"constraints: global batch {batch} must split into replicas and micro-batches, "
        f"and the model has {n_blocks} blocks"
        + (
            " (a sharded dp_mode needs replicas; hybrid_shard, replicas on two nodes or more)"
            if levers
            else ""
        )
    )
