"""Pipeline schedules as torch runs them: the rules torch enforces and each rank's order.

Pure Python, so the planner can price plans without torch. The orders mirror
`torch.distributed.pipelining.schedules` (torch 2.13): ``ScheduleGPipe`` (all forwards,
then all backwards, in micro-batch order), ``Schedule1F1B`` (``min(m, p - s)`` warm-up
forwards on stage s, then one backward and one forward alternately, then the remaining
backwards), and ``ScheduleInterleaved1F1B`` (``_get_warmup_ops`` and ``_get_1f1b_rank_ops``
without the no-op padding, which only aligns ranks in torch's own simulator). A test
compares these orders with torch's ``pipeline_order`` and the rules with what torch's
constructors accept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache


class Schedule(StrEnum):
    """torch's pipeline schedules that plans use (the value is the document's word)."""

    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"
    INTERLEAVED_1F1B = "interleaved_1f1b"


SCHEDULES = tuple(Schedule)


@dataclass(frozen=True)
class Action:
    """One computation on a rank: forward ("F") or full backward ("B") of a stage's chunk."""

    stage: int
    kind: str
    micro_batch: int


def schedule_error(schedule: str, pp_degree: int, micro_batches: int, virtual_stages: int = 1) -> str | None:
    """Why torch would refuse this schedule, or None if it accepts it.

    >>> schedule_error("1f1b", 4, 2)
    '1f1b needs micro_batches >= stages (2 < 4)'
    >>> schedule_error("interleaved_1f1b", 4, 10, 2) is None  # 10 % (10 // 4) == 0
    True
    >>> schedule_error("interleaved_1f1b", 4, 9, 2)
    'interleaved_1f1b needs micro_batches to be a multiple of max(1, micro_batches // pp_degree) = 2 (got 9)'
    """
    if schedule not in SCHEDULES:
        return f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}"
    if pp_degree < 1 or micro_batches < 1:
        return f"pp_degree and micro_batches must be >= 1 (got {pp_degree}, {micro_batches})"
    if schedule != "interleaved_1f1b" and virtual_stages != 1:
        return f"{schedule} runs one stage per rank: virtual_stages must be 1, got {virtual_stages}"
    if schedule == Schedule.ONE_F_ONE_B and micro_batches < pp_degree:
        return f"1f1b needs micro_batches >= stages ({micro_batches} < {pp_degree})"
    if schedule == Schedule.INTERLEAVED_1F1B:
        if virtual_stages < 2:
            return f"interleaved_1f1b needs virtual_stages >= 2, got {virtual_stages}"
        rounds = max(1, micro_batches // pp_degree)
        if micro_batches % rounds:
            return (
                "interleaved_1f1b needs micro_batches to be a multiple of "
                f"max(1, micro_batches // pp_degree) = {rounds} (got {micro_batches})"
            )
    return None


@lru_cache(maxsize=256)
def rank_actions(
    schedule: str, pp_degree: int, micro_batches: int, virtual_stages: int = 1
) -> tuple[tuple[Action, ...], ...]:
    """Each pipeline rank's computations in the order torch issues them.

    Stage ``i`` lives on rank ``i % pp_degree`` (for non-interleaved schedules, stage = rank).
    Cached: the search asks for the same orders many times (hence tuples, never mutated).

    >>> [[f"{a.kind}{a.micro_batch}" for a in r] for r in rank_actions("1f1b", 2, 3)]
    [['F0', 'F1', 'B0', 'F2', 'B1', 'B2'], ['F0', 'B0', 'F1', 'B1', 'F2', 'B2']]
    """
    error = schedule_error(schedule, pp_degree, micro_batches, virtual_stages)
    if error:
        raise ValueError(error)
    return tuple(tuple(order) for order in _orders(schedule, pp_degree, micro_batches, virtual_stages))


def _orders(schedule: str, p: int, m: int, virtual_stages: int) -> list[list[Action]]:
    if schedule == Schedule.GPIPE:
        return [
            [Action(r, "F", i) for i in range(m)] + [Action(r, "B", i) for i in range(m)] for r in range(p)
        ]
    if schedule == Schedule.ONE_F_ONE_B:
        return [_one_f_one_b(s, p, m) for s in range(p)]
    return [_interleaved(r, p, m, virtual_stages) for r in range(p)]


def _one_f_one_b(s: int, p: int, m: int) -> list[Action]:
    warmup = min(m, p - s)  # torch: "last stage has 1 warmup, ..., first stage num_stages"
    actions = [Action(s, "F", i) for i in range(warmup)]
    fwd, bwd = warmup, 0
    while True:
        actions.append(Action(s, "B", bwd))
        bwd += 1
        if fwd == m:
            break
        actions.append(Action(s, "F", fwd))
        fwd += 1
    actions += [Action(s, "B", i) for i in range(bwd, m)]
    return actions


def _interleaved(rank: int, p: int, m: int, v: int) -> list[Action]:
    rounds = max(1, m // p)
    per_round = m // rounds
    warmup = min((v - 1) * per_round + 2 * (p - 1 - rank), m * v)
    total = m * v  # forwards (and backwards) on this rank
    fwd_index: dict[int, int] = defaultdict(int)
    bwd_index: dict[int, int] = defaultdict(int)

    def fwd_stage(step: int) -> int:
        return ((step // per_round) % v) * p + rank

    def bwd_stage(step: int) -> int:
        return (v - 1 - ((step - warmup) // per_round) % v) * p + rank

    def next_of(index: dict[int, int], stage: int) -> int:
        index[stage] += 1
        return index[stage] - 1

    actions: list[Action] = []
    fwd_bwd = total - warmup
    for op in range(warmup + fwd_bwd + warmup):
        if op < warmup:
            s = fwd_stage(op)
            actions.append(Action(s, "F", next_of(fwd_index, s)))
        elif op < warmup + fwd_bwd:
            s = fwd_stage(op)
            actions.append(Action(s, "F", next_of(fwd_index, s)))
            s = bwd_stage(op)
            actions.append(Action(s, "B", next_of(bwd_index, s)))
        else:
            s = bwd_stage(op)
            actions.append(Action(s, "B", next_of(bwd_index, s)))
    return actions


def in_flight(actions: tuple[Action, ...] | list[Action]) -> dict[int, int]:
    """Most micro-batches each stage holds activations for at once (forwards not yet undone).

    >>> in_flight(rank_actions("gpipe", 2, 4)[0]), in_flight(rank_actions("1f1b", 2, 4)[0])
    ({0: 4}, {0: 2})
    """
    return dict(_in_flight_of(tuple(actions)))


@lru_cache(maxsize=1024)
def _in_flight_of(actions: tuple[Action, ...]) -> tuple[tuple[int, int], ...]:
    live: dict[int, int] = defaultdict(int)
    peak: dict[int, int] = defaultdict(int)
    for a in actions:
        live[a.stage] += 1 if a.kind == "F" else -1
        peak[a.stage] = max(peak[a.stage], live[a.stage])
    return tuple(peak.items())


def held_peak(actions: tuple[Action, ...] | list[Action], held: dict[int, float]) -> float:
    """The most a rank holds at once when each micro-batch of stage s holds ``held[s]`` from
    its forward to its backward. A rank running several stages (interleaved) does not reach
    each stage's most at the same moment, so this is below the sum of their peaks.

    >>> order = rank_actions("interleaved_1f1b", 2, 4, 2)[1]  # stages 1 and 3
    >>> in_flight(order), held_peak(order, {1: 1.0, 3: 1.0})
    ({1: 3, 3: 1}, 3.0)
    """
    return max(
        (sum(held.get(stage, 0.0) * n for stage, n in counts) for counts in _held_counts(tuple(actions))),
        default=0.0,
    )


@lru_cache(maxsize=1024)
def _held_counts(actions: tuple[Action, ...]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Micro-batches in flight per stage at each moment one could peak (after a forward),
    without the moments another one dominates: the search prices many plans of one order."""
    live: dict[int, int] = defaultdict(int)
    moments: set[tuple[tuple[int, int], ...]] = set()
    for a in actions:
        live[a.stage] += 1 if a.kind == "F" else -1
        if a.kind == "F":
            moments.add(tuple(sorted(live.items())))

    # The moments no other one dominates (holds as much of every stage, and more of one).
    # Counts are never negative, so a moment that dominates another holds more in all: taken
    # from the most held down, each moment needs comparing only with those already kept.
    stages = sorted({stage for m in moments for stage, _ in m})
    vectors = sorted(
        ((tuple(dict(m).get(stage, 0) for stage in stages), m) for m in moments),
        key=lambda vm: (-sum(vm[0]), vm[0]),
    )
    kept: list[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = []
    for x, m in vectors:
        if not any(all(a <= b for a, b in zip(x, y, strict=True)) for y, _ in kept):
            kept.append((x, m))
    return tuple(m for _, m in kept)


def closed_form_step(stage_times: list[float], micro_batches: int) -> float:
    """The textbook pipeline step: sum of stage times + (m - 1) x the slowest stage.

    ``stage_times`` are forward + backward per micro-batch. Exact for GPipe without
    communication (GPipe, Huang et al. 2019); for 1F1B with uneven stages it is only an upper
    bound, which is why `planner.cost.price.price` simulates the schedule instead. docs/facts.md
    (Pipeline pricing): p=4, backward = 2x forward, forward [2, 1, 1, 1], m=8 simulates to 51,
    the closed form says 57.

    >>> closed_form_step([6, 3, 3, 3], 8)
    57
    """
    return sum(stage_times) + (micro_batches - 1) * max(stage_times)
