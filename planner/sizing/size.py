"""What a training job needs: cluster shapes from a price catalogue, each planned, and the
Pareto front of time to train against cost.

A shape is one device kind, its devices per node (a node size the catalogue offers) and a
node count. Each is planned by `planner.search.search` on the one traced graph; its time to
train is the plan's predicted step time times the steps the tokens take, its cost that
time times its devices times the kind's hourly price.

Which shapes are planned, per kind: its ladder (`ladder`) of single nodes smaller than its
largest node size, then node counts of the largest (a smaller node size over several nodes
holds the same devices over slower links, at the same price a device). The counts
(`node_counts`) are every count up to 8, then four a doubling (10, 12, 14, 16, 20, 24, 28, 32,
40, ...: at most 25% apart), and the cap; or every count (``every_node_count``). Under linear
scaling a job costs the same on any node count, so a count between two rungs that meets a
deadline would save only what scaling loses over at most 25% more nodes; and counts with
large odd factors split a batch and a pipeline worse (29 nodes of 8 train the 7B Llama
slower than 28).
- with a deadline (``hours``): every rung from the first whose bound meets the deadline
  to the first that meets it planned, which is the smallest node count of the ladder that
  does (more nodes can train slower, so no rung is skipped on a guess). The bound
  (`StepBound`) is a time no plan of that many devices beats: one device's compute of the
  whole step (the global batch as one micro-batch, nothing recomputed, no collective) spread
  evenly over them. Then twice and four times the answer's devices, for the front's faster
  points;
- with a budget: the rungs of 1, 2, 4, ... nodes and the cap.
With ``mixed``, shapes of two kinds' nodes too (`_mixed`): a search among mixes, pruned by
an estimate, where the single-kind scans above are exhaustive over their rungs.
The front keeps the shapes that meet the limit and no other shape beats on both time and
cost; the shapes left out say why (memory, too slow, over budget, dominated).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from planner.cluster import Cluster, parse_short_form
from planner.errors import PlannerError
from planner.limits import MAX_STEPS
from planner.search.search import Candidate, search
from planner.sizing.catalog import Offer, PriceCatalog

HOUR_S = 3600.0
SEARCH = dict(max_priced=2, exact_budget_s=0.0, compare=False)
"""How each shape is searched: the two best-screened families (and more while none fits),
their splits balanced rather than proven, nothing priced only to compare."""


@dataclass(frozen=True)
class Shape:
    """``nodes`` nodes of ``per_node`` devices of ``kind``; a mixed shape adds nodes of other
    kinds (``also``)."""

    kind: str
    per_node: int
    nodes: int
    also: tuple[Shape, ...] = ()

    @property
    def parts(self) -> tuple[Shape, ...]:
        """Its sets of nodes, one kind each."""
        return (Shape(self.kind, self.per_node, self.nodes), *self.also)

    @property
    def label(self) -> str:
        """Its kinds, as shapes are grouped and drawn: 'h100-80gb' or 'h100-80gb,l4'."""
        return ",".join(p.kind for p in self.parts)

    @property
    def devices(self) -> int:
        return sum(p.per_node * p.nodes for p in self.parts)

    @property
    def short_form(self) -> str:
        """The cluster as `planner.cluster.parse_short_form` reads it."""
        return ",".join(f"{p.kind}:{p.per_node}x{p.nodes}" for p in self.parts)


@dataclass
class Point:
    """One planned shape: its best plan (None when none fits), time to train and cost."""

    shape: Shape
    usd_per_device_hour: float
    best: Candidate | None
    hours: float | None
    cost_usd: float | None
    why_not: str = ""
    """Why the shape is off the front: memory, too slow for the deadline, over budget; or,
    for a point on it, empty."""
    cluster: Cluster | None = None

    @property
    def fits(self) -> bool:
        return self.best is not None


@dataclass
class Sizing:
    points: list[Point]
    """Every shape planned, in the order planned."""
    front: list[Point]
    """The Pareto front of time against cost among the points that meet the limit, fastest first."""
    steps: int
    tokens_per_step: int
    seconds: float


Progress = Callable[[int, Shape], None]


def size(
    graph: nx.DiGraph,
    catalog: PriceCatalog,
    *,
    tokens: int,
    global_batch: int,
    hours: float | None = None,
    budget_usd: float | None = None,
    precision: str = "bf16-mixed",
    kinds: list[str] | None = None,
    max_nodes: int | None = None,
    every_node_count: bool = False,
    mixed: bool = False,
    progress: Progress | None = None,
) -> Sizing:
    """Plan the catalogue's shapes for training ``graph`` on ``tokens`` tokens, ``global_batch``
    samples a step, within ``hours`` or ``budget_usd`` (exactly one); ``mixed``: shapes of two
    kinds' nodes too (`_mixed`); see the module."""
    started = time.perf_counter()
    if (hours is None) == (budget_usd is None):
        raise PlannerError("give a deadline (hours) or a budget (dollars), one of the two")
    limit = hours if hours is not None else budget_usd
    if not (isinstance(limit, int | float) and math.isfinite(limit) and limit > 0):
        what = "hours" if hours is not None else "budget"
        raise PlannerError(f"{what}: {limit!r} is not a positive number")
    offers = [catalog.offer(k) for k in kinds] if kinds else list(catalog.offers)
    cap = max_nodes or catalog.max_nodes
    seq_len = graph.graph.get("config", {}).get("seq_len")
    if not seq_len:
        raise PlannerError(
            f"model {graph.graph.get('source')!r}: its samples are not token sequences (no seq_len), "
            "so a token count does not say how many steps to train"
        )
    tokens_per_step = global_batch * seq_len
    steps = math.ceil(tokens / tokens_per_step)
    prices = {o.kind: o.usd_per_device_hour for o in offers}
    planner = _ShapePlanner(graph, global_batch, precision, steps, prices, progress)
    for offer in offers:
        rungs = ladder(offer, cap, every_node_count)
        if hours is not None:
            _within_hours(planner, rungs, hours)
        else:
            _within_budget(planner, rungs)
    if mixed:
        _mixed(planner, offers, cap, every_node_count, hours, budget_usd)
    points = planner.points
    for p in points:
        p.why_not = p.why_not or _over(p, hours, budget_usd)
    front = pareto_front([p for p in points if p.fits and not p.why_not])
    for p in points:
        if p.fits and not p.why_not and p not in front:
            p.why_not = "dominated: another shape is as fast for less, or faster for as much"
    return Sizing(points, front, steps, tokens_per_step, time.perf_counter() - started)


@dataclass(frozen=True)
class StepBound:
    """A step time no plan on ``d`` devices of one kind beats: ``compute_s / d``. The price
    of a step is its ranks' compute, collectives, bubbles and waits; a rank's compute is at
    least its share of the whole step's at the largest micro-batch (a smaller one, or a split
    matrix product, runs no faster per sample under the roofline), and some rank holds at
    least the mean share. tests/test_sizing.py checks it under every plan it prices."""

    compute_s: float
    """One device's price of the whole step: every sample in one micro-batch, nothing
    recomputed, nothing sent (its memory is not asked to fit)."""

    def hours(self, devices: int, steps: int) -> float:
        return self.compute_s / devices * steps / HOUR_S


def mixed_bound_hours(bounds: dict[str, StepBound], shape: Shape, steps: int) -> float:
    """The time no plan on ``shape`` beats, of one kind or several: its devices together work
    no faster than the sum of their speeds (each device's own `StepBound`), however the batch
    and the layers are shared among them."""
    if not shape.also:
        return bounds[shape.kind].hours(shape.devices, steps)
    speed = sum(p.devices / bounds[p.kind].compute_s for p in shape.parts)
    return steps / speed / HOUR_S


def step_bound(graph: nx.DiGraph, kind: str, global_batch: int, precision: str) -> StepBound:
    """`StepBound` for ``kind``: one device's priced step, as its ``compute_s``."""
    alone = search(
        graph,
        parse_short_form(f"{kind}:1"),
        global_batch=global_batch,
        micro_batches=1,
        recompute="none",
        dp_mode="replicate",
        tp=1,
        training={"precision": precision},
        compare=False,
    ).candidates[0]
    return StepBound(alone.prediction.step_time_s if alone.prediction else 0.0)


def node_counts(cap: int, every: bool = False) -> list[int]:
    """The node counts planned up to ``cap`` (see the module): every count to 8, then four a
    doubling, and the cap itself; with ``every``, 1 to ``cap``.

    >>> node_counts(64)
    [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]
    >>> node_counts(50)[-3:], node_counts(12, every=True)[-4:]
    ([40, 48, 50], [9, 10, 11, 12])
    """
    if every:
        return list(range(1, cap + 1))
    counts = [n for n in range(1, cap + 1) if n <= 8 or n % 2 ** (n.bit_length() - 3) == 0]
    return counts if counts[-1] == cap else [*counts, cap]


def ladder(offer: Offer, cap: int, every: bool = False) -> list[Shape]:
    """The shapes of ``offer`` worth planning, fewest devices first.

    >>> from planner.sizing.catalog import Offer
    >>> o = Offer(kind="l4", usd_per_device_hour=1.0, server_devices=8, node_sizes=[1, 2, 4, 8],
    ...           source="x", date="2026-01")
    >>> [s.short_form for s in ladder(o, 3)]
    ['l4:1x1', 'l4:2x1', 'l4:4x1', 'l4:8x1', 'l4:8x2', 'l4:8x3']
    """
    largest = max(offer.node_sizes)
    small = [Shape(offer.kind, s, 1) for s in sorted(offer.node_sizes) if s < largest]
    return small + [Shape(offer.kind, largest, n) for n in node_counts(cap, every)]


def _within_hours(planner: _ShapePlanner, rungs: list[Shape], hours: float) -> None:
    """Plan ``rungs`` from the first whose bound meets the deadline to the first that meets
    it, then twice and four times its devices."""
    # (The bound equals the plan on one device: rounding must not rule that one out.)
    first = next((i for i, s in enumerate(rungs) if planner.bound_hours(s) <= hours * (1 + 1e-9)), None)
    if first is None:
        planner.unreachable(rungs[-1], hours)
        return
    for i in range(first, len(rungs)):
        p = planner(rungs[i])
        if p.fits and p.hours <= hours:
            for times in (2, 4):
                faster = next((s for s in rungs if s.devices >= times * rungs[i].devices), None)
                if faster is not None:
                    planner(faster)
            return


def _within_budget(planner: _ShapePlanner, rungs: list[Shape]) -> None:
    cap = rungs[-1].nodes
    for s in rungs:
        if s.nodes == 1 or s.nodes == cap or (s.nodes & (s.nodes - 1)) == 0:
            planner(s)


def _mixed(
    planner: _ShapePlanner,
    offers: list[Offer],
    cap: int,
    every: bool,
    hours: float | None,
    budget: float | None,
) -> None:
    """Shapes of two kinds: a power of two of nodes of one kind (fewer than it needs alone to
    meet a deadline) joined by nodes of another, at their largest node sizes, within the cap.

    With a deadline, each such start is topped up with the other kind's node counts as a
    single kind's are scanned, up to the first that meets it; with a budget, with the other
    kind's powers of two. A mix is planned only where it could beat what meets the limit so
    far (below the cheapest point's cost under a deadline, below the fastest point's time
    within a budget) at an estimate: its bound over the better of the efficiencies its two
    kinds reached alone (their plans' times against their bounds). That assumes a mix of
    kinds trains no closer to its bound than its better kind alone, which stragglers and
    the slower fabric between them make likely but nothing proves: unlike a single kind's
    scan, mixes are a search, not an exhaustive answer."""

    def meets(p: Point) -> bool:
        return p.fits and _over(p, hours, budget) == ""

    efficiency: dict[str, float] = {}
    for p in planner.points:
        if p.fits and not p.shape.also:
            reached = planner.bound_hours(p.shape) / p.hours
            efficiency[p.shape.kind] = max(efficiency.get(p.shape.kind, 0.0), reached)

    def promising(shape: Shape) -> bool:
        h = planner.bound_hours(shape) / max(efficiency.get(k.kind, 1.0) for k in shape.parts)
        cost = h * shape.devices * planner.usd_per_device_hour(shape)
        meeting = [p for p in planner.points if meets(p)]
        if hours is not None:
            return h <= hours * (1 + 1e-9) and cost < min((p.cost_usd for p in meeting), default=math.inf)
        return cost <= budget and h < min((p.hours for p in meeting), default=math.inf)

    seen: set[frozenset] = set()

    for a, b in itertools.permutations(offers, 2):
        size_a, size_b = max(a.node_sizes), max(b.node_sizes)
        # Nodes of a alone that meet the limit: a mix starts below them (else a alone would do).
        alone = [p.shape.nodes for p in planner.points if p.shape.label == a.kind and meets(p)]
        need = min(alone, default=cap)
        for n_a in (n for n in node_counts(cap) if n & (n - 1) == 0 and n < need and n < cap):
            for n_b in node_counts(cap - n_a, every):
                mix = frozenset({(a.kind, n_a), (b.kind, n_b)})
                if mix in seen or (hours is None and n_b & (n_b - 1)):
                    continue
                shape = Shape(a.kind, size_a, n_a, (Shape(b.kind, size_b, n_b),))
                if not promising(shape):
                    continue
                seen.add(mix)
                p = planner(shape)
                if hours is not None and meets(p):
                    break  # more of b: sooner, and under linear scaling no cheaper


def _over(p: Point, hours: float | None, budget: float | None) -> str:
    if not p.fits:
        return ""
    if hours is not None and p.hours > hours:
        return f"too slow: {_h(p.hours)} h against the {hours:,g} h deadline"
    if budget is not None and p.cost_usd > budget:
        return f"over budget: ${p.cost_usd:,.0f} against ${budget:,.0f}"
    return ""


def _h(hours: float) -> str:
    """Hours to three figures at least: 1,409 and 2.04, never a deadline's own rounding."""
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other beats on both time and cost (one per tie), fastest first.

    >>> s = Shape("h100-80gb", 8, 1)
    >>> pts = [Point(s, 1, None, h, c) for h, c in ((10, 100), (5, 150), (6, 200), (20, 90))]
    >>> [(p.hours, p.cost_usd) for p in pareto_front(pts)]
    [(5, 150), (10, 100), (20, 90)]
    """
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.hours, p.cost_usd)):
        if not front or p.cost_usd < front[-1].cost_usd:
            front.append(p)
    return front


class _ShapePlanner:
    """Plans shapes on one traced graph, each once."""

    def __init__(
        self,
        graph,
        global_batch: int,
        precision: str,
        steps: int,
        prices: dict[str, float],
        progress: Progress | None,
    ):
        self.graph, self.global_batch, self.precision, self.steps = graph, global_batch, precision, steps
        self.prices, self.progress = prices, progress
        self.points: list[Point] = []
        self._done: dict[Shape, Point] = {}
        self._bounds: dict[str, StepBound] = {}

    def usd_per_device_hour(self, shape: Shape) -> float:
        """The shape's hourly price over its devices (a mixed shape's, weighted by count)."""
        return sum(self.prices[p.kind] * p.devices for p in shape.parts) / shape.devices

    def __call__(self, shape: Shape) -> Point:
        if shape in self._done:
            return self._done[shape]
        if self.progress is not None:
            self.progress(len(self.points), shape)
        cluster = parse_short_form(shape.short_form)
        price = self.usd_per_device_hour(shape)
        try:
            result = search(
                self.graph,
                cluster,
                global_batch=self.global_batch,
                training={"precision": self.precision, "steps": min(self.steps, MAX_STEPS)},
                **SEARCH,
            )
        except PlannerError as exc:
            point = Point(shape, price, None, None, None, f"no plan: {exc}", cluster)
        else:
            best = result.best
            if best is None:
                point = Point(shape, price, None, None, None, _memory_reason(result.candidates), cluster)
            else:
                h = best.prediction.step_time_s * self.steps / HOUR_S
                point = Point(shape, price, best, h, h * shape.devices * price, "", cluster)
        self._done[shape] = point
        self.points.append(point)
        return point

    def bound_hours(self, shape: Shape) -> float:
        """`mixed_bound_hours` of ``shape`` (each kind's bound priced once)."""
        for p in shape.parts:
            if p.kind not in self._bounds:
                self._bounds[p.kind] = step_bound(self.graph, p.kind, self.global_batch, self.precision)
        return mixed_bound_hours(self._bounds, shape, self.steps)

    def unreachable(self, largest: Shape, hours: float) -> None:
        """No shape up to the cap could meet the deadline even at peak: plan the largest
        anyway, so the answer says how far off it is."""
        p = self(largest)
        if p.fits:
            p.why_not = (
                f"too slow: {_h(p.hours)} h at the cap of {largest.nodes} nodes (at best "
                f"{_h(self.bound_hours(largest))} h with no collective or bubble) against "
                f"the {hours:,g} h deadline"
            )


def _memory_reason(candidates: list[Candidate]) -> str:
    """The closest a candidate came to fitting: its fullest device's peak against its capacity."""
    priced = [c for c in candidates if c.prediction is not None and c.prediction.memory]
    if not priced:
        return "no plan: " + (candidates[0].reason if candidates else "no layout to price")
    closest = min(priced, key=lambda c: max(m.over_bytes for m in c.prediction.memory))
    worst = max(closest.prediction.memory, key=lambda m: m.over_bytes)
    return (
        f"memory: the closest plan ({closest.label}) needs {worst.total / 2**30:,.1f} GiB on a device "
        f"of {worst.capacity / 2**30:,.1f} GiB"
    )
