"""A discrete-event simulation of one training step, rank by rank.

Each rank runs its compute tasks (forward, backward, optimizer) one at a time in its
program order, each starting once its inputs have arrived. Communication tasks (a
point-to-point send, an all-reduce) start once their inputs are ready and their channel is
free, and run beside compute: torch posts sends and collectives asynchronously.

Ranks that share CPU cores (``cpu:N`` with N above the core count) share them: the compute
tasks running on a node at one moment split its cores evenly (processor sharing), so a rank
alone runs at full speed and four ranks on two cores at half.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque
from dataclasses import dataclass, field

COMPUTE_KINDS = ("forward", "backward", "optimizer")


@dataclass
class Task:
    id: int
    kind: str  # forward | backward | optimizer | send | all-reduce
    work: float  # seconds at full speed
    rank: int  # compute: the rank that runs it; comm: the rank that starts it
    deps: list[int] = field(default_factory=list)
    channel: str | None = None  # comm tasks: a FIFO resource (a link, a group)
    lanes: tuple[int, ...] = ()  # comm tasks: ranks whose timeline shows it
    stage: int | None = None
    micro_batch: int | None = None
    nbytes: int = 0


@dataclass(frozen=True)
class Interval:
    rank: int
    start: float
    end: float
    kind: str
    stage: int | None = None
    micro_batch: int | None = None


def simulate(
    tasks: list[Task],
    programs: dict[int, list[int]],
    node_of: dict[int, int],
    cores: dict[int, float],
) -> tuple[dict[int, tuple[float, float]], float]:
    """Run the tasks; return ``{task id: (start, end)}`` and the step's end time.

    ``programs[rank]`` lists the rank's compute task ids in order; ``cores[node]`` is how many
    compute tasks the node runs at full speed at once (``math.inf`` for GPUs).
    """
    by_id = {t.id: t for t in tasks}
    waiting = {t.id: len(t.deps) for t in tasks}
    dependents: dict[int, list[int]] = defaultdict(list)
    for t in tasks:
        for d in t.deps:
            dependents[d].append(t.id)
    position = {rank: 0 for rank in programs}
    busy: dict[int, int | None] = {rank: None for rank in programs}
    running: dict[int, float] = {}  # compute task -> remaining work
    queues: dict[str, deque[int]] = defaultdict(deque)
    channel_busy: dict[str, int | None] = defaultdict(lambda: None)
    comm_ends: list[tuple[float, int]] = []
    times: dict[int, tuple[float, float]] = {}
    started: dict[int, float] = {}
    now = 0.0
    finished = 0

    for t in tasks:
        if t.channel is not None and waiting[t.id] == 0:
            queues[t.channel].append(t.id)

    def start_ready() -> None:
        for rank, pos in position.items():
            if busy[rank] is None and pos < len(programs[rank]):
                tid = programs[rank][pos]
                if waiting[tid] == 0:
                    busy[rank] = tid
                    running[tid] = by_id[tid].work
                    started[tid] = now
        for channel, queue in queues.items():
            if channel_busy[channel] is None and queue:
                tid = queue.popleft()
                channel_busy[channel] = tid
                started[tid] = now
                heapq.heappush(comm_ends, (now + by_id[tid].work, tid))

    def finish(tid: int) -> None:
        nonlocal finished
        times[tid] = (started[tid], now)
        finished += 1
        for d in dependents[tid]:
            waiting[d] -= 1
            if waiting[d] == 0 and by_id[d].channel is not None:
                queues[by_id[d].channel].append(d)

    while finished < len(tasks):
        start_ready()
        rates = _rates(running, by_id, node_of, cores)
        next_compute = min((now + running[t] / rates[t] for t in running), default=math.inf)
        next_comm = comm_ends[0][0] if comm_ends else math.inf
        until = min(next_compute, next_comm)
        if until == math.inf:
            stuck = sorted(set(by_id) - set(times))[:5]
            raise RuntimeError(f"simulation deadlock: tasks {stuck} can never start")
        for t in running:
            running[t] -= rates[t] * (until - now)
        now = until
        for t in [t for t, left in running.items() if left <= 1e-12 * max(1.0, by_id[t].work)]:
            del running[t]
            busy[by_id[t].rank] = None
            position[by_id[t].rank] += 1
            finish(t)
        while comm_ends and comm_ends[0][0] <= now:
            _, tid = heapq.heappop(comm_ends)
            channel_busy[by_id[tid].channel] = None
            finish(tid)
    return times, now


def _rates(
    running: dict[int, float], by_id: dict[int, Task], node_of: dict[int, int], cores: dict[int, float]
) -> dict[int, float]:
    per_node: dict[int, int] = defaultdict(int)
    for t in running:
        per_node[node_of[by_id[t].rank]] += 1
    return {t: min(1.0, cores[node_of[by_id[t].rank]] / per_node[node_of[by_id[t].rank]]) for t in running}


def timeline(tasks: list[Task], times: dict[int, tuple[float, float]], step: float) -> list[Interval]:
    """Intervals per rank, idle gaps in the compute lane included (the Gantt chart's data)."""
    out: list[Interval] = []
    compute: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t in tasks:
        start, end = times[t.id]
        if t.kind in COMPUTE_KINDS:
            out.append(Interval(t.rank, start, end, t.kind, t.stage, t.micro_batch))
            compute[t.rank].append((start, end))
        elif end > start:  # a zero-byte send is no event worth drawing
            for lane in t.lanes or (t.rank,):
                out.append(Interval(lane, start, end, t.kind, t.stage, t.micro_batch))
    for rank, spans in compute.items():
        at = 0.0
        for start, end in sorted(spans):
            if start > at + 1e-15:
                out.append(Interval(rank, at, start, "idle"))
            at = max(at, end)
        if step > at + 1e-15:
            out.append(Interval(rank, at, step, "idle"))
    return sorted(out, key=lambda i: (i.rank, i.start, i.kind))
