"""Split a chain of blocks into k contiguous, non-empty stages: exact branch and bound.

"Exact" is relative to `price()`: the split returned is the cheapest of all contiguous
splits by the full simulation, for the given stage-to-device order. It is found without
pricing every split: a split is priced only if a lower bound on its step time beats the
best price found so far, and the bound never exceeds the price:

    step >= sum_{j < s} w_j + m * w_s        for every stage s (GPipe, 1F1B)
    step >= sum_{j < q} w_j + m * (all work of rank q)   (interleaved; chunk q is rank
                                                          q's first, j < q its predecessors)

where w_j is stage j's forward + backward time per micro-batch on its device: stage s
cannot start before the stages ahead of it have run their first forward, must run m
forwards and m backwards one at a time, and after its last backward the stages ahead of
it still run theirs. Transfers, all-reduces and the optimizer only add to this.

Memory prunes too: a stage whose blocks (parameters, gradients, optimizer state,
activations in flight) already exceed its device cannot hold one more block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class SplitResult:
    cuts: list[int] | None
    """Index of the first block of every stage after the first; None if no split fits."""
    value: float
    """The price of that split (its step time), or inf."""
    exact: bool
    """True when every split that could beat it was priced (the search finished)."""
    evaluations: int


def greedy_cuts(work: Sequence[Sequence[float]], limit: float) -> list[int] | None:
    """Cuts that keep every stage's work within ``limit``, filling stages in order; None if
    impossible. Feasibility is monotone in ``limit``, so a bisection finds the least one."""
    n, k = len(work[0]), len(work)
    cuts, at = [], 0
    for j in range(k):
        if at >= n:
            return None
        total, end = 0.0, at
        last_stage = j == k - 1
        while end < n and (total + work[j][end] <= limit or end == at):
            if not last_stage and n - (end + 1) < k - j - 1:
                break  # leave a block for every later stage
            total += work[j][end]
            end += 1
        if total > limit:
            return None
        if last_stage:
            return cuts if end == n else None
        cuts.append(end)
        at = end
    return None


def min_bottleneck_cuts(work: Sequence[Sequence[float]]) -> list[int]:
    """The contiguous split that minimises the largest stage's work (bisection + greedy).

    >>> min_bottleneck_cuts([[1, 1, 1, 1], [1, 1, 1, 1]])
    [2]
    >>> min_bottleneck_cuts([[1, 1, 1, 1], [2, 2, 2, 2]])  # a device twice as slow gets less
    [3]
    """
    k = len(work)
    if k == 1:
        return []
    lo = max(min(col) for col in zip(*work, strict=True))
    hi = max(sum(row) for row in work)
    best = greedy_cuts(work, hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        cuts = greedy_cuts(work, mid)
        if cuts is None:
            lo = mid
        else:
            hi, best = mid, cuts
    if best is None:  # every stage needs a block: fall back to one block per early stage
        best = list(range(1, k))
    return best


def best_split(
    work: Sequence[Sequence[float]],
    micro_batches: int,
    evaluate: Callable[[list[int]], float],
    *,
    fits: Callable[[int, int, int], bool] | None = None,
    ranks: Sequence[int] | None = None,
    max_evaluations: int | None = None,
    max_nodes: int | None = None,
) -> SplitResult:
    """The contiguous split with the least ``evaluate(cuts)`` (normally `price()`'s step time).

    Parameters
    ----------
    work
        ``work[j][i]``: forward + backward seconds per micro-batch of block i on the device of
        stage j (stages may sit on different device kinds).
    evaluate
        The price of a split given by its cuts; ``inf`` when it does not fit.
    fits
        ``fits(j, a, b)``: whether blocks a..b can fit on stage j's device at all (a lower
        bound of memory); must be monotone in b.
    ranks
        Pipeline rank of each stage; given for interleaved schedules, where a rank runs
        several stages.
    max_evaluations, max_nodes
        Give up proving optimality after this many prices, or this many stage ranges
        tried (``exact`` is then False and the best split found is returned).
    """
    k, n = len(work), len(work[0])
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} blocks into {k} non-empty stages")
    search = _BranchAndBound(work, micro_batches, evaluate, fits, ranks, max_evaluations, max_nodes)
    start = min_bottleneck_cuts(work)
    if fits is None or all(fits(j, a, b - 1) for j, (a, b) in enumerate(_ranges(start, n))):
        search.price(start)
    search.extend(0, 0, [], 0.0, 0.0, [0.0] * (max(search.ranks) + 1), [])
    return SplitResult(search.best_cuts, search.best_value, not search.exhausted, search.evaluations)


class _BranchAndBound:
    """`best_split`'s depth-first search: stage j takes blocks a..b, for every b the bounds
    leave open, then stage j + 1 takes over from b + 1."""

    def __init__(self, work, micro_batches, evaluate, fits, ranks, max_evaluations, max_nodes) -> None:
        self.k, self.n = len(work), len(work[0])
        self.m = micro_batches
        self.evaluate, self.fits = evaluate, fits
        self.max_evaluations, self.max_nodes = max_evaluations, max_nodes
        self.prefix = [list(itertools.accumulate(row, initial=0.0)) for row in work]
        self.interleaved = ranks is not None and len(set(ranks)) < self.k
        self.ranks = list(ranks) if ranks is not None else list(range(self.k))
        self.first_chunks = len(set(self.ranks))  # stages before this are each their rank's first
        self.cheapest = _cheapest_rest(work)
        self.evaluations = self.visited = 0
        self.best_value = math.inf
        self.best_cuts: list[int] | None = None
        self.exhausted = False

    def price(self, cuts: list[int]) -> None:
        self.evaluations += 1
        value = self.evaluate(cuts)
        if value < self.best_value:
            self.best_value, self.best_cuts = value, list(cuts)

    def extend(
        self,
        j: int,
        a: int,
        cuts: list[int],
        ahead: float,
        bound: float,
        per_rank: list[float],
        heads: list[float],
    ) -> None:
        """Try every end of stage j, which starts at block a; ``ahead`` is the work of the
        stages before it, ``bound`` their greatest bound."""
        left = self.k - j
        for b in range(a, self.n - left + 1):  # stage j takes blocks a..b
            self.visited += 1
            if self.exhausted or (self.max_nodes is not None and self.visited > self.max_nodes):
                self.exhausted = True
                return
            if self.fits is not None and not self.fits(j, a, b):
                break  # more blocks only need more memory
            w = self.prefix[j][b + 1] - self.prefix[j][a]
            own, stage_bound, rank_work = self._stage_bound(j, w, ahead, bound, per_rank, heads)
            rest = left - 1
            if max(stage_bound, self._rest_bound(j, b, rest)) >= self.best_value:
                if own >= self.best_value:
                    break  # a longer stage j only raises this bound further
                continue
            if rest == 0:
                if b == self.n - 1:
                    if self.max_evaluations is not None and self.evaluations >= self.max_evaluations:
                        self.exhausted = True
                        return
                    self.price(cuts)
                continue
            cuts.append(b + 1)
            first_chunk = self.interleaved and j < self.first_chunks
            next_heads = [*heads, ahead] if first_chunk else heads
            self.extend(j + 1, b + 1, cuts, ahead + w, stage_bound, rank_work, next_heads)
            cuts.pop()

    def _stage_bound(self, j, w, ahead, bound, per_rank, heads) -> tuple[float, float, list[float]]:
        """(this stage's own bound, the bound so far, work per rank) with stage j's work w."""
        if self.interleaved:
            # Rank q starts after the forwards of the chunks before its first one and ends
            # before their backwards: heads[q] + m * (all of rank q's work).
            q = self.ranks[j]
            rank_work = per_rank[:]
            rank_work[q] += w
            head = ahead if j < self.first_chunks else heads[q]
            own = head + self.m * rank_work[q]
            return own, max(bound, own), rank_work
        own = ahead + self.m * w
        return own, max(bound, own), per_rank

    def _rest_bound(self, j: int, b: int, rest: int) -> float:
        """Least time the ``rest`` stages after stage j (which ends at block b) need."""
        if not rest:
            return 0.0
        share = len(set(self.ranks[j + 1 :])) if self.interleaved else rest
        return self.m * self.cheapest[j + 1][b + 1] / share


def _cheapest_rest(work: Sequence[Sequence[float]]) -> list[list[float]]:
    """``[j][i]``: least work the blocks from i on need, on the cheapest device among stages
    from j on."""
    k, n = len(work), len(work[0])
    cheapest = [[0.0] * (n + 1) for _ in range(k + 1)]
    for j in range(k - 1, -1, -1):
        for i in range(n - 1, -1, -1):
            best_here = min(work[jj][i] for jj in range(j, k))
            cheapest[j][i] = cheapest[j][i + 1] + best_here
    return cheapest


def _ranges(cuts: list[int], n: int) -> list[tuple[int, int]]:
    starts = [0, *cuts]
    return list(zip(starts, [*cuts, n], strict=True))


def all_splits(n: int, k: int) -> list[list[int]]:
    """Every contiguous split of n blocks into k non-empty stages (the brute-force oracle).

    >>> all_splits(4, 2)
    [[1], [2], [3]]
    """
    return [list(c) for c in itertools.combinations(range(1, n), k - 1)]
