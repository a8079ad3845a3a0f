"""A discrete-event simulation of one training step, rank by rank.

Each rank runs its compute tasks (forward, backward, optimizer) one at a time in its
program order, each starting once its inputs have arrived. Communication tasks (a
point-to-point send, an all-reduce) start once their inputs are ready and their channel is
free, and run beside compute: torch posts sends and collectives asynchronously.

Ranks that share CPU cores (``cpu:N`` with N above the core count) share them: the compute
tasks running on a node at one moment split its cores evenly (processor sharing), so a rank
alone runs at full speed and four ranks on two cores at half. Communication between the
ranks of such a node is CPU work too (gloo copies through the kernel, and reduces, on the
ranks' own cores): a transfer or collective there runs at the share of the cores its
processes get next to the compute running, so four ranks all-reducing on two cores take
twice as long as the profile's figure, measured with a core per rank. Compute is not slowed
by communication in turn: most of a message's time is latency, not work.
"""

from __future__ import annotations

import heapq
import itertools
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
    peers: tuple[int, ...] = ()  # comm tasks: ranks whose processes work on it (default: lanes)
    stage: int | None = None
    micro_batch: int | None = None
    nbytes: int = 0


class TaskList:
    """The tasks of one step in the order they are made; a task's id is its position."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def add(
        self,
        *,
        kind: TaskKind,
        work: float,
        rank: int,
        deps: list[int] | None = None,
        channel: str | None = None,
        lanes: tuple[int, ...] = (),
        peers: tuple[int, ...] = (),
        stage: int | None = None,
        micro_batch: int | None = None,
        nbytes: int = 0,
    ) -> Task:
        task = Task(
            len(self.tasks),
            kind,
            work,
            rank,
            [] if deps is None else deps,
            channel,
            lanes,
            peers,
            stage,
            micro_batch,
            nbytes,
        )
        self.tasks.append(task)
        return task


@dataclass(frozen=True, slots=True)
class Interval:
    rank: int
    start: float
    end: float
    kind: str
    """A TaskKind's value, or "idle"."""
    stage: int | None = None
    micro_batch: int | None = None
    waiting_for: str | None = None
    """An idle interval's cause: one of `IDLE_CAUSES`."""


IDLE_CAUSES = ("peer", "communication", "end")
"""Why a rank idles: it waits for a peer's data (a transfer that ends after the peer
computed it), for a collective to finish (communication its compute did not hide), or it is
done and waits for the step's end (the other ranks' work)."""


def simulate(
    tasks: list[Task],
    programs: dict[int, list[int]],
    node_of: dict[int, int],
    cores: dict[int, float],
    contention: dict[int, float] | None = None,
    stands_for: int = 1,
) -> tuple[list[tuple[float, float]], float]:
    """Run the tasks; return every task's ``(start, end)``, indexed by its id, and the step's
    end time.

    ``tasks[i].id`` must be ``i``. ``programs[rank]`` lists the rank's compute task ids in
    order; ``cores[node]`` is how many compute tasks the node runs at full speed at once
    (``math.inf`` for GPUs). ``contention[node]`` (measured, `planner.profile`) slows
    every compute task on a shared node by ``1 + c`` while all its cores are busy, and in
    proportion while some are. ``stands_for``: how many processes each rank's compute
    stands for on its node's cores (a tensor group's ranks compute in step, and only one
    of them is simulated).
    """
    if any(t.id != i for i, t in enumerate(tasks)):
        raise ValueError("task ids must be their positions in the list")
    run = _Simulation(tasks, programs, node_of, cores, contention or {}, stands_for)
    run.start()
    run.run()
    return run.times()


class _Simulation:
    """The state of one simulated step, and the events that move it on.

    A rank's program is a chain: each of its compute tasks also waits for the one before it
    in the program, so a task starts the moment its last input (data or its rank) is free.
    """

    __slots__ = (
        "busy_channels",
        "channel_of",
        "comm_node",
        "compute_node",
        "contention",
        "cores",
        "dependents",
        "done",
        "ended",
        "events",
        "now",
        "queues",
        "shared",
        "started",
        "tasks",
        "version",
        "waiting",
        "weight",
        "work",
    )

    def __init__(
        self,
        tasks: list[Task],
        programs: dict[int, list[int]],
        node_of: dict[int, int],
        cores: dict[int, float],
        contention: dict[int, float],
        stands_for: int,
    ) -> None:
        n = len(tasks)
        self.tasks, self.cores, self.contention = tasks, cores, contention
        # Plain lists indexed by task id: the loop runs once per task, thousands per price.
        self.waiting = [len(t.deps) for t in tasks]
        self.dependents: list[list[int]] = [[] for _ in range(n)]
        for t in tasks:
            for d in t.deps:
                self.dependents[d].append(t.id)
        for program in programs.values():
            for before, after in itertools.pairwise(program):
                self.dependents[before].append(after)
                self.waiting[after] += 1
        self.work = [t.work for t in tasks]
        self.channel_of = [t.channel for t in tasks]
        self.started = [0.0] * n
        self.ended = [-1.0] * n
        self.version = [0] * n
        self.queues: dict[str, deque[int]] = defaultdict(deque)
        self.busy_channels: set[str] = set()
        self.events: list[tuple[float, int, int]] = []  # (end, version, task); stale versions skipped
        # Tasks on nodes whose cores are shared: remaining work, rate, last update.
        self.shared: dict[int, dict[int, list[float]]] = defaultdict(dict)
        unshared = {node: math.isinf(c) for node, c in cores.items()}
        # A compute task on a shared node: that node (None: it runs at full speed).
        self.compute_node: list[int | None] = [None] * n
        # Communication on one shared node: that node, and how many processes work on it.
        self.comm_node: list[int | None] = [None] * n
        self.weight = [1.0] * n
        if not all(unshared.values()):  # GPUs share no cores: nothing to look for
            for t in tasks:
                if t.channel is None:
                    if not unshared[node_of[t.rank]]:
                        self.compute_node[t.id] = node_of[t.rank]
                        self.weight[t.id] = float(stands_for)
                    continue
                procs = t.peers or t.lanes or (t.rank,)
                nodes = {node_of[r] for r in procs}
                if len(nodes) == 1 and not unshared[node := next(iter(nodes))]:
                    self.comm_node[t.id] = node
                    self.weight[t.id] = float(len(set(procs)))
        self.now = 0.0
        self.done = 0

    def start(self) -> None:
        """Queue the sends that wait for nothing; start every rank's first task."""
        for t in self.tasks:
            if self.waiting[t.id] == 0:
                if t.channel is None:
                    self.start_compute(t.id)
                else:
                    self.queues[t.channel].append(t.id)
        for channel in list(self.queues):
            self.try_channel(channel)

    def run(self) -> None:
        """Take the next task to end, free its node's share or channel, start what it unblocks."""
        events, version, ended, channel_of = self.events, self.version, self.ended, self.channel_of
        waiting, dependents, compute_node, comm_node = (
            self.waiting,
            self.dependents,
            self.compute_node,
            self.comm_node,
        )
        queues, shared, busy_channels = self.queues, self.shared, self.busy_channels
        pop, start_compute, try_channel, reshare = (
            heapq.heappop,
            self.start_compute,
            self.try_channel,
            self.reshare,
        )
        while events:
            end, ver, tid = pop(events)
            if ver != version[tid] or ended[tid] >= 0:
                continue
            self.now = end
            ended[tid] = end
            self.done += 1
            channel = channel_of[tid]
            node = compute_node[tid] if channel is None else comm_node[tid]
            if node is not None:  # its node's cores are shared: the others speed up
                del shared[node][tid]
                reshare(node)
            if channel is not None:
                busy_channels.discard(channel)
                try_channel(channel)
            for d in dependents[tid]:  # start what waited only for this task
                waiting[d] -= 1
                if waiting[d] == 0:
                    dep_channel = channel_of[d]
                    if dep_channel is not None:
                        queues[dep_channel].append(d)
                        try_channel(dep_channel)
                    else:
                        start_compute(d)

    def reshare(self, node: int) -> None:
        """Processor sharing: the node's running compute tasks split its cores evenly from
        now on (a task standing for several processes takes a share for each), each slower
        by the node's contention for every other busy core; its running communication gets
        the share of its processes next to them."""
        running, cores, now = self.shared[node], self.cores[node], self.now
        comm_node, weight = self.comm_node, self.weight
        computing = sum(weight[tid] for tid in running if comm_node[tid] is None)
        processes = computing + sum(weight[tid] for tid in running if comm_node[tid] is not None)
        rate = min(1.0, cores / computing) if computing else 1.0
        busy = min(computing, cores)
        if busy > 1 and self.contention.get(node):
            rate /= 1 + self.contention[node] * (busy - 1) / max(cores - 1, 1)
        comm_rate = min(1.0, cores / processes) if processes else 1.0
        for tid, state in running.items():
            r = rate if comm_node[tid] is None else comm_rate
            state[0] -= state[1] * (now - state[2])
            state[1], state[2] = r, now
            self.version[tid] += 1
            heapq.heappush(self.events, (now + state[0] / r, self.version[tid], tid))

    def start_compute(self, tid: int) -> None:
        """Start a compute task whose inputs are ready and whose rank is free."""
        now = self.now
        self.started[tid] = now
        node = self.compute_node[tid]
        if node is None:
            heapq.heappush(self.events, (now + self.work[tid], self.version[tid], tid))
        else:
            self.shared[node][tid] = [self.work[tid], 1.0, now]
            self.reshare(node)

    def try_channel(self, channel: str) -> None:
        """Start the channel's next queued send if the channel is free."""
        queue = self.queues[channel]
        if queue and channel not in self.busy_channels:
            tid = queue.popleft()
            self.busy_channels.add(channel)
            self.started[tid] = self.now
            node = self.comm_node[tid]
            if node is None:
                heapq.heappush(self.events, (self.now + self.work[tid], self.version[tid], tid))
            else:
                self.shared[node][tid] = [self.work[tid], 1.0, self.now]
                self.reshare(node)

    def times(self) -> tuple[list[tuple[float, float]], float]:
        n = len(self.tasks)
        if self.done < n:
            stuck = [i for i in range(n) if self.ended[i] < 0][:5]
            raise RuntimeError(f"simulation deadlock: tasks {stuck} can never start")
        return list(zip(self.started, self.ended, strict=True)), self.now


def timeline(tasks: list[Task], times: list[tuple[float, float]], step: float) -> list[Interval]:
    """Intervals per rank, idle gaps in the compute lane included (the Gantt chart's data)."""
    out: list[Interval] = []
    compute: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for t in tasks:
        start, end = times[t.id]
        kind = str(t.kind)  # the plain word: figures and JSON show it, never the enum
        if t.kind in COMPUTE_KINDS:
            out.append(Interval(t.rank, start, end, kind, t.stage, t.micro_batch))
            compute[t.rank].append((start, end, t.id))
        elif end > start:  # a zero-byte send is no event worth drawing
            for lane in t.lanes or (t.rank,):
                out.append(Interval(lane, start, end, kind, t.stage, t.micro_batch))
    for rank, spans in compute.items():
        at = 0.0
        for start, end, tid in sorted(spans):
            if start > at + 1e-15:
                out.append(Interval(rank, at, start, "idle", waiting_for=_blocker(tasks, times, tid)))
            at = max(at, end)
        if step > at + 1e-15:
            out.append(Interval(rank, at, step, "idle", waiting_for="end"))
    return sorted(out, key=lambda i: (i.rank, i.start, i.kind))


def _blocker(tasks: list[Task], times: dict[int, tuple[float, float]], tid: int) -> str:
    """What the compute task ``tid`` waited for last: a collective ("communication"), else
    a transfer or another rank's compute ("peer")."""
    deps = tasks[tid].deps
    if not deps:
        return "peer"
    last = tasks[max(deps, key=lambda d: times[d][1])]
    return "communication" if last.kind == TaskKind.ALL_REDUCE else "peer"
