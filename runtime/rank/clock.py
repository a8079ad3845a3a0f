"""Compute time: wall time inside a stage's forward, loss and backward, nothing else.

On CPU it is `time.perf_counter` around module hooks and the backward calls; on CUDA the
same spans are CUDA events, read once per step after the step's work is done, so that
timing never synchronises the stream in the middle of a step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from runtime.rank import timeline


class ComputeClock:
    """Accumulates the time spent computing within one step; `take()` reads and resets."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._seconds = 0.0
        self._events: list[tuple[Any, Any]] = []
        self._open: list[Any] = []
        self._backward: list[Any] = [None, None]
        self._in_backward = False

    def start(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._open.append(event)
        else:
            self._open.append(time.perf_counter())

    def stop(self) -> None:
        begun = self._open.pop()
        if self._open:
            return  # nested span (e.g. the loss inside a timed backward): counted by the outer one
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((begun, end))
        else:
            end = time.perf_counter()
            self._seconds += end - begun
            timeline.mark("compute", begun, end)

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def backward_started(self) -> None:
        self._backward = [self._now(), None]
        self._in_backward = True

    def counting(self) -> bool:
        """Whether a compute span is open now (a forward, the loss, a backward)."""
        return bool(self._open) or self._in_backward

    def exclude(self, seconds: float) -> None:
        """Take ``seconds`` spent inside an open span on something else out of compute (a
        CPU rank's FSDP collectives, runtime.parallel.sharded)."""
        self._seconds -= seconds

    def grad_ready(self, *_: Any) -> None:
        """A parameter's gradient was accumulated (a post-accumulate-grad hook)."""
        self._backward[1] = self._now()

    def backward_finished(self) -> None:
        """Count backward from its start to the last gradient; later waits are communication."""
        self._in_backward = False
        begun, last = self._backward
        if last is None:
            return
        if self.cuda:
            self._events.append((begun, last))
        else:
            self._seconds += last - begun
            timeline.mark("compute", begun, last)
            # DDP's all-reduce of the buckets still in flight when the last gradient was made
            # (on CUDA that wait is the stream's, and counts as the rest of the step).
            timeline.waited("communication", last, time.perf_counter(), desc="gradients reduced")

    @contextmanager
    def span(self):
        self.start()
        try:
            yield
        finally:
            self.stop()

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.span():
                return fn(*args, **kwargs)

        return timed

    def attach_forward(self, module: nn.Module) -> None:
        """Time every forward call of ``module`` with module hooks."""
        module.register_forward_pre_hook(lambda *_: self.start())
        module.register_forward_hook(lambda *_: self.stop())

    def take(self) -> float:
        """Seconds measured since the last call (synchronises CUDA once)."""
        if self._events:
            torch.cuda.synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events.clear()
        seconds, self._seconds = self._seconds, 0.0
        return seconds
