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
from enum import StrEnum


class TaskKind(StrEnum):
    """What one simulated task does; the value is what timelines and figures show."""

    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"
    SEND = "send"
    ALL_REDUCE = "all-reduce"


COMPUTE_KINDS = (TaskKind.FORWARD, TaskKind.BACKWARD, TaskKind.OPTIMIZER)


@dataclass(slots=True)
class Task:
    id: int
    kind: TaskKind
    work: float  # seconds at full speed
    rank: int  # compute: the rank that runs it; comm: the rank that starts it
    deps: list[int] = field(default_factory=list)
    channel: str | None = None  # comm tasks: a FIFO resource (a link, a group)
    lanes: tuple[int, ...] = ()  # comm tasks: ranks whose timeline shows it
    stage: int | None = None
    micro_batch: int | None = None
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
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
    contention: dict[int, float] | None = None,
) -> tuple[dict[int, tuple[float, float]], float]:
    """Run the tasks; return ``{task id: (start, end)}`` and the step's end time.

    ``tasks[i].id`` must be ``i``. ``programs[rank]`` lists the rank's compute task ids in
    order; ``cores[node]`` is how many compute tasks the node runs at full speed at once
    (``math.inf`` for GPUs). ``contention[node]`` (measured, `planner.profile`) slows
    every compute task on a shared node by ``1 + c`` while all its cores are busy, and in
    proportion while some are.
    """
    n = len(tasks)
    if any(t.id != i for i, t in enumerate(tasks)):
        raise ValueError("task ids must be their positions in the list")
    # Plain lists indexed by task id: this loop runs once per task, thousands per price.
    waiting = [len(t.deps) for t in tasks]
    dependents: list[list[int]] = [[] for _ in range(n)]
    for t in tasks:
        for d in t.deps:
            dependents[d].append(t.id)
    work = [t.work for t in tasks]
    channel_of = [t.channel for t in tasks]
    rank_of = [t.rank for t in tasks]
    started = [0.0] * n
    ended = [-1.0] * n
    version = [0] * n
    position = dict.fromkeys(programs, 0)
    idle = set(programs)
    queues: dict[str, deque[int]] = defaultdict(deque)
    busy_channels: set[str] = set()
    events: list[tuple[float, int, int]] = []  # (end time, version, task); stale versions skipped
    # Compute tasks on nodes whose cores are shared: remaining work, rate, last update.
    shared: dict[int, dict[int, list[float]]] = defaultdict(dict)
    unshared = {node: math.isinf(c) for node, c in cores.items()}
    push, pop = heapq.heappush, heapq.heappop
    now = 0.0
    done = 0

    contention = contention or {}

    def reshare(node: int) -> None:
        """Processor sharing: the node's running tasks split its cores evenly from now on,
        each slower by the node's contention for every other busy core."""
        running = shared[node]
        rate = min(1.0, cores[node] / len(running)) if running else 1.0
        busy = min(len(running), cores[node])
        if busy > 1 and contention.get(node):
            rate /= 1 + contention[node] * (busy - 1) / max(cores[node] - 1, 1)
        for tid, state in running.items():
            state[0] -= state[1] * (now - state[2])
            state[1], state[2] = rate, now
            version[tid] += 1
            push(events, (now + state[0] / rate, version[tid], tid))

    def try_rank(rank: int) -> None:
        program = programs[rank]
        at = position[rank]
        if rank not in idle or at >= len(program):
            return
        tid = program[at]
        if waiting[tid]:
            return
        idle.discard(rank)
        started[tid] = now
        node = node_of[rank]
        if unshared[node]:
            push(events, (now + work[tid], version[tid], tid))
        else:
            shared[node][tid] = [work[tid], 1.0, now]
            reshare(node)

    def try_channel(channel: str) -> None:
        queue = queues[channel]
        if queue and channel not in busy_channels:
            tid = queue.popleft()
            busy_channels.add(channel)
            started[tid] = now
            push(events, (now + work[tid], version[tid], tid))

    for t in tasks:
        if t.channel is not None and waiting[t.id] == 0:
            queues[t.channel].append(t.id)
    for rank in programs:
        try_rank(rank)
    for channel in list(queues):
        try_channel(channel)

    while events:
        end, ver, tid = pop(events)
        if ver != version[tid] or ended[tid] >= 0:
            continue
        now = end
        ended[tid] = now
        done += 1
        channel = channel_of[tid]
        if channel is None:
            rank = rank_of[tid]
            node = node_of[rank]
            if not unshared[node] and tid in shared[node]:
                del shared[node][tid]
                reshare(node)
            idle.add(rank)
            position[rank] += 1
            try_rank(rank)
        else:
            busy_channels.discard(channel)
            try_channel(channel)
        for d in dependents[tid]:
            waiting[d] -= 1
            if waiting[d] == 0:
                dep_channel = channel_of[d]
                if dep_channel is not None:
                    queues[dep_channel].append(d)
                    try_channel(dep_channel)
                else:
                    try_rank(rank_of[d])
    if done < n:
        stuck = [i for i in range(n) if ended[i] < 0][:5]
        raise RuntimeError(f"simulation deadlock: tasks {stuck} can never start")
    return {i: (started[i], ended[i]) for i in range(n)}, now


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
