"""A rank's step, event by event: compute spans, posted sends and receives, and waits.

Set ``STAGECRAFT_TIMELINE=<folder>`` and every rank writes ``<folder>/rank<r>.json`` at
the end of its run: per step, each compute span (forward, loss, backward), each batch of
point-to-point operations the pipeline schedule posts (what it sends and receives, to which
peer, how many bytes) and each wait on them, the optimizer and, under DDP, the gradient
all-reduce that backward did not hide. Times are seconds from the step's start; ``at``,
the step's start, is `time.perf_counter`'s (the system's monotonic clock, one for every
process of a machine), so the ranks of one machine line up. `bench/waits.py` prints them
next to the simulator's timeline of the same step.

Off by default: recording costs a `perf_counter` and a dict per event. What every run
counts, timeline or not, is `WAITS`: the seconds of each step a rank was blocked waiting
for a peer's data, or for its own communication to finish (`runtime.rank.metrics` stores
them). The pipeline's posts and waits are seen by wrapping ``_batch_p2p`` and
``_wait_batch_p2p`` of `torch.distributed.pipelining.schedules`, which every schedule there
calls; where a torch release lacks them, a pipeline rank's waits count as host time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

TIMELINE_ENV = "STAGECRAFT_TIMELINE"

_current: Timeline | None = None


class Waits:
    """Seconds a rank spent blocked this step, by cause: ``peer`` (a receive: waiting for
    a peer's data) and ``communication`` (its own sends, all-reduces and gradient
    reductions that compute did not hide). Counted on every run; `take()` reads and resets."""

    def __init__(self) -> None:
        self.peer = self.communication = 0.0

    def take(self) -> dict[str, float]:
        out = {"peer": self.peer, "communication": self.communication}
        self.peer = self.communication = 0.0
        return out


WAITS = Waits()
"""This process's tally: a process is one rank."""


class Timeline:
    """The events of one rank, step by step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def begin_step(self, step: int) -> None:
        self._t0 = time.perf_counter()
        self.steps.append({"step": step, "at": self._t0, "events": []})

    def end_step(self) -> None:
        if self.steps:
            self.steps[-1]["end"] = time.perf_counter() - self._t0

    def mark(self, kind: str, start: float, end: float, **info: Any) -> None:
        """An event from ``start`` to ``end`` (`time.perf_counter` seconds)."""
        if self.steps:
            event = {"kind": kind, "start": start - self._t0, "end": end - self._t0, **info}
            self.steps[-1]["events"].append(event)

    def save(self) -> None:
        """Write the events; a folder that cannot be written is said in one line, and the
        run's outcome stays its own (a diagnostic never fails a run)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"steps": self.steps}))
        except OSError as exc:
            why = exc.strerror or exc
            print(f"warning: {TIMELINE_ENV}: cannot write {self.path}: {why}", file=sys.stderr)


def start(rank: int) -> Timeline | None:
    """Record this rank's timeline when ``STAGECRAFT_TIMELINE`` names a folder."""
    global _current
    folder = os.environ.get(TIMELINE_ENV)
    if not folder:
        return None
    _current = Timeline(Path(folder) / f"rank{rank}.json")
    watch_pipeline_p2p()
    return _current


def mark(kind: str, start: float, end: float, **info: Any) -> None:
    """Record an event when a timeline is on; nothing otherwise."""
    if _current is not None:
        _current.mark(kind, start, end, **info)


def waited(cause: str, start: float, end: float, **info: Any) -> None:
    """A wait from ``start`` to ``end``, tallied under ``cause`` ("peer" or "communication")."""
    setattr(WAITS, cause, getattr(WAITS, cause) + end - start)
    mark("wait", start, end, cause=cause, **info)


def _describe(ops) -> list[dict[str, Any]]:
    return [
        {
            "op": "send" if op.op in (dist.isend, dist.send) else "recv",
            "peer": op.peer,
            "bytes": op.tensor.numel() * op.tensor.element_size(),
        }
        for op in ops
    ]


_posted: dict[int, tuple[str, bool]] = {}
"""id(works) of a posted batch -> (the schedule's name for it, whether it receives)."""


def watch_pipeline_p2p() -> None:
    """Time the waits of torch's pipeline schedules from now on in this process: a wait on
    a batch that receives is a wait for a peer's data; on sends alone, communication."""
    from torch.distributed.pipelining import schedules

    post, wait = getattr(schedules, "_batch_p2p", None), getattr(schedules, "_wait_batch_p2p", None)
    if post is None or wait is None or getattr(post, "_timeline", False):
        return

    def timed_post(p2p_ops, desc=None):
        t = time.perf_counter()
        works = post(p2p_ops, desc)
        if p2p_ops:
            _posted[id(works)] = (desc or "", any(op.op in (dist.irecv, dist.recv) for op in p2p_ops))
            if _current is not None:
                _current.mark("post", t, time.perf_counter(), desc=desc or "", ops=_describe(p2p_ops))
        return works

    def timed_wait(works):
        t = time.perf_counter()
        wait(works)
        if works:
            desc, receives = _posted.pop(id(works), ("", True))
            waited("peer" if receives else "communication", t, time.perf_counter(), desc=desc)

    timed_post._timeline = True
    schedules._batch_p2p, schedules._wait_batch_p2p = timed_post, timed_wait
