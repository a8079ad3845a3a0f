"""The peak of tensor memory: what the plan moves, as the tensor allocator counts it.

On CUDA this is ``torch.cuda.max_memory_allocated`` (less what was allocated when the
count started), read any time. CPU tensors have no such counter; their allocations are
reported only to torch's profiler (``profile_memory=True``), so on CPU a rank runs the
profiler from its memory baseline (before the model is built) to the end of its first
``PROBE_STEPS`` steps and replays the allocation events in order: the highest running
total is the peak. The first step allocates gradients and the optimizer state; the second
is the first with all of them held, so the steady peak is inside the window. Measured on
the fidelity runs here, the window cost no visible time (1.14 s with it and 1.13 s without
from the baseline to the end of step 2, GPT 1F1B on 2 ranks).

Both count tensors, not the process: on CPU the private memory of the process
(`runtime.rank.metrics.memory_peaks`) is higher by glibc's freed-but-kept heap pages and the
Python objects of the runtime (15-40 MB per rank here).

The model states are checked term by term on every run (`check_model_states`, after the
first steps, when gradients and optimizer state exist): the bytes per parameter a rank
holds in weights, gradients and optimizer state against the terms its plan's precision
prices (`planner.precision`), a warning in the rank's log naming the term that differs.

Why is a rank's peak what it is? With ``explain`` set to a file (the worker sets it from
``STAGECRAFT_EXPLAIN_MEMORY``, a folder), a CPU rank also records shapes and stacks, and
writes there, as JSON, what its tensors held at the peak by torch's category (parameter,
gradient, optimizer state, activation, autograd detail, temporary...) and the operators
running then. It slows the first steps; it is for diagnosis. torch's categories cover
tensors only: scratch memory an operator allocates for itself (a convolution's backward
here) is in the peak but not in the explanation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from planner.precision import Precision, optimizer_state_bytes

PROBE_STEPS = 2
EXPLAIN_ENV = "STAGECRAFT_EXPLAIN_MEMORY"
"""A folder: each CPU rank writes ``rank<N>.json`` there, what its tensors held at the peak."""


def replay_peak(deltas) -> int:
    """The highest running total of a sequence of allocation (+) and free (-) sizes.

    >>> replay_peak([100, -100, 60, 30, -60])
    100
    """
    total = peak = 0
    for delta in deltas:
        total += delta
        peak = max(peak, total)
    return peak


class TensorPeak:
    """Counts tensor memory from `start()`; `peak()` is None until the count is known."""

    def __init__(self, device: torch.device, explain: Path | None = None) -> None:
        self.device = device
        self.explain = explain
        self._base = 0
        self._profiler = None
        self._peak: int | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        from torch.profiler import ProfilerActivity, profile

        detail = self.explain is not None
        self._profiler = profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=detail, with_stack=detail
        )
        self._profiler.__enter__()

    def stop(self) -> None:
        """End the CPU window (CUDA counts on; a second call changes nothing)."""
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        events = sorted(
            (e for e in profiler.profiler.kineto_results.events() if _name(e) == "[memory]"),
            key=lambda e: e.start_ns(),
        )
        # A free of a tensor allocated before the window is not reported (its size is not
        # known to the profiler), so the total starts at zero at the baseline.
        from torch._C._autograd import DeviceType

        self._peak = replay_peak(e.nbytes() for e in events if e.device_type() == DeviceType.CPU)
        if self.explain is not None:
            try:
                found = explain_peak(profiler)
            except Exception as exc:  # torch's memory profile fails on some graphs; the run goes on
                found = {"error": f"torch's memory profile failed: {type(exc).__name__}: {exc}"}
            self.explain.parent.mkdir(parents=True, exist_ok=True)
            self.explain.write_text(json.dumps(found, indent=1))

    @property
    def counting(self) -> bool:
        return self._profiler is not None

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self._base
        return self._peak


def held_model_states(
    params: dict[str, torch.nn.Parameter], optimizers: list[torch.optim.Optimizer]
) -> dict[str, int]:
    """Bytes this rank holds in weights, their gradients and optimizer state (each tensor
    once; an optimizer's step counters, 0-d tensors, are not state the price counts)."""
    unique = {id(p): p for p in params.values()}.values()
    state = {
        id(t): t
        for optimizer in optimizers
        for per_param in optimizer.state.values()
        for t in per_param.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    }.values()
    return {
        "parameters": sum(p.numel() * p.element_size() for p in unique),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in unique if p.grad is not None),
        "optimizer": sum(t.numel() * t.element_size() for t in state),
    }


def check_model_states(
    precision: Precision, optimizer: str, momentum: float, held: dict[str, int], count: int
) -> list[str]:
    """Where ``held`` (for ``count`` parameters) differs from what ``precision`` prices."""
    weight = precision.recipe.weight_bytes
    priced = {
        "parameters": weight * count,
        "gradients": weight * count,
        "optimizer": optimizer_state_bytes(optimizer, momentum, precision) * count,
    }
    return [
        f"{term}: holds {held[term] / max(count, 1):.2f} B/param, the {precision} plan prices "
        f"{priced[term] / max(count, 1):.2f}"
        for term in priced
        if held[term] != priced[term]
    ]


def _name(event) -> str:
    # With stacks recorded, some Python-function events carry names that are not UTF-8.
    try:
        return event.name()
    except UnicodeDecodeError:
        return "?"


def explain_peak(profiler) -> dict:
    """What the rank's tensors held at their peak, by torch's category (the largest tensors
    of each, in bytes), and the operators whose span holds that moment, outermost first.
    Tensors that existed before the window (the data set) are left out, as the peak leaves
    them out."""
    from torch.profiler._memory_profiler import Action, MemoryProfileTimeline

    profile = profiler._memory_profile()
    times, sizes = MemoryProfileTimeline(profile)._coalesce_timeline("cpu")
    at = max(range(len(times)), key=lambda i: sum(sizes[i]))
    moment_ns = times[at] * 1000 + 999  # the timeline is in microseconds
    live: dict = {}
    for t, action, (key, version), nbytes in profile.timeline:
        if key.device.type != "cpu" or action == Action.PREEXISTING or t > moment_ns:
            continue
        if action == Action.CREATE:
            live[(key, version)] = nbytes
        elif action == Action.INCREMENT_VERSION:
            live[(key, version + 1)] = live.pop((key, version), nbytes)
        else:
            live.pop((key, version), None)
    by_category: dict[str, list[int]] = {}
    for (key, version), nbytes in live.items():
        category = getattr(profile._categories.get(key, version), "name", "UNKNOWN")
        by_category.setdefault(category, []).append(nbytes)
    running = [
        (e.start_ns(), _name(e))
        for e in profiler.profiler.kineto_results.events()
        if _name(e) != "[memory]" and e.start_ns() <= moment_ns and e.end_ns() >= times[at] * 1000
    ]
    return {
        "categorized_bytes": sum(sum(v) for v in by_category.values()),
        "by_category": {name: sum(v) for name, v in by_category.items()},
        "largest": {name: sorted(v, reverse=True)[:8] for name, v in by_category.items()},
        "running": [name for _, name in sorted(running)],
    }
