"""Per-step figures of every rank, gathered to rank 0 over the process group and stored.

Per rank and step (names as stored):
- ``loss``: the replica's mean loss, on the rank that computes it (NaN and Inf kept);
- ``step_time_s``: wall time of the step on this rank, data to optimizer step included;
- ``compute_s``: wall time inside the stage's forward, loss and backward (runtime.rank.clock);
- ``optimizer_s``: the optimizer step;
- ``comm_wait_s``: step - compute - optimizer: sends, receives, all-reduces, and waiting;
  split (pipeline and data-parallel ranks) into ``peer_wait_s`` (blocked on a receive),
  ``communication_s`` (blocked on its own sends and gradient reductions), ``idle_end_s``
  (done before the step's last rank) and ``host_s`` (the rest: the step's host work);
- ``peak_memory_bytes``: process peak RSS on CPU (since the baseline, and on CPU again
  since the end of the tensor count's window, see below), the allocator's peak on CUDA;
- ``dynamic_memory_bytes``: the peak of the process's private memory minus the same figure
  taken after the process group was up and before the model was built: the plan's tensors
  and everything else the process added since (what glibc keeps of freed blocks, Python
  objects), without the interpreter, torch and gloo. Private leaves out file-backed pages:
  the code of torch's libraries, paged in as kernels first run (15-20 MB in the first step
  here), shared by every rank, reclaimable, and the same whatever the plan. On CPU the peak
  restarts when the tensor count's window ends (the pages of its profiler's records
  returned first), and the records still leave some behind: not compared with the plan;
- ``tensor_memory_bytes``: the peak of tensor memory since that same point, as the tensor
  allocator counts it (runtime.rank.tensor_memory): what the plan's prediction counts. On CPU it
  is measured over the first steps and stored from the step it is known;
- ``cpu_percent``: process CPU time / wall time over the step (all its threads, gloo's
  too), its own column: a busy CPU is not the same thing as a compute share.

Per step (rank -1): ``loss`` (replica losses weighted by batch share), ``step_time_s``
(slowest rank), ``samples_per_s``, ``tokens_per_s`` (GPT), and the measured
``bubble_fraction`` = 1 - sum(compute) / (ranks x step time).

Gathering costs one small all-gather per flush, not per step: ranks flush every k steps,
with k chosen (identically on every rank, from the gathered step times) so that a flush
comes about every ``flush_period_s`` (1 s): a crash loses at most that much, and never
the metrics of a step a checkpoint covers (they are flushed before it is saved).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from planner.plan import Plan
from runtime.rank.step import StepResult
from runtime.rank.tensor_memory import PROBE_STEPS, TensorPeak
from runtime.supervise.store import STEP_RANK, Metric

FIELDS = (
    "has_loss",
    "loss",
    "loss_d",
    "loss_g",
    "step_time_s",
    "compute_s",
    "optimizer_s",
    "peer_wait_s",
    "communication_s",
    "peak_memory_bytes",
    "peak_private_bytes",
    "base_memory_bytes",
    "tensor_memory_bytes",
    "cpu_percent",
    "time",
)
COL = {name: i for i, name in enumerate(FIELDS)}
MAX_INTERVAL = 1000


def _proc_status() -> dict[str, int]:
    """Bytes of /proc/self/status's memory lines (kB there); empty where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.startswith(("Vm", "Rss")))
    return {name: int(value.split()[0]) * 1024 for name, value in fields}


def memory_peaks(device: torch.device) -> tuple[float, float]:
    """(peak, private peak) bytes. On CUDA both are the allocator's peak. On CPU the peak is
    the process's peak RSS (VmHWM, which `reset_peak_memory` can lower to the current RSS;
    getrusage's maxrss never goes down), and the private peak is that peak less the pages
    backed by files and shared memory now. Those only grow while new code runs (the first
    steps), so after them this is the peak of the private pages; before, an under-estimate.
    """
    if device.type == "cuda":
        peak = float(torch.cuda.max_memory_allocated(device))
        return peak, peak
    status = _proc_status()
    if "VmHWM" not in status:
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
        return peak, peak
    shared = status.get("RssFile", 0) + status.get("RssShmem", 0)
    return float(status["VmHWM"]), float(status["VmHWM"] - shared)


def return_freed_pages() -> None:
    """Give the pages of freed heap blocks back to the system (glibc's ``malloc_trim``;
    nothing where there is no glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def reset_peak_memory(device: torch.device) -> float:
    """Measure the peaks from now on, and return where the private one starts (the baseline).

    Importing libraries passes through peaks higher than what the process keeps; without
    the reset, memory the plan adds would hide under them. On Linux, writing 5 to
    /proc/self/clear_refs sets the peak RSS to the current RSS; where that is refused, the
    baseline is the peak so far (and the dynamic memory an under-estimate).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return float(torch.cuda.memory_allocated(device))
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return memory_peaks(device)[1]


class MetricsRecorder:
    def __init__(
        self,
        plan: Plan,
        *,
        tokens_per_sample: int,
        device: torch.device,
        last_step: int,
        write: Callable[[list[Metric]], None] | None,
        group=None,
        flush_period_s: float = 1.0,
        base_memory_bytes: float = 0.0,
        tensor_peak: TensorPeak | None = None,
    ) -> None:
        self.plan = plan
        self.tokens_per_sample = tokens_per_sample
        self.device = device
        self.last_step = last_step
        self.write = write  # rank 0 only
        self.group = group
        self.flush_period_s = flush_period_s
        self.base_memory_bytes = base_memory_bytes
        self.tensor_peak = tensor_peak
        self.world_size = dist.get_world_size()
        shares = {r.dp_index: r.batch_share for r in plan.replicas}
        # Every rank of a tensor group computes its replica's loss: each counts 1 / tp of it.
        weights = [shares[r.dp_index] / plan.training.global_batch / plan.tp_degree for r in plan.ranks]
        self.loss_weight = torch.tensor(weights, dtype=torch.float64)
        self.interval = 1
        self.pending: list[tuple[int, list[float]]] = []
        self.logging_s = 0.0
        self.step_s = 0.0
        self.idle_end = [0.0] * self.world_size  # each rank's idle at the end of the last step

    def record(self, step: int, result: StepResult, step_time_s: float, cpu_s: float) -> bool:
        """Keep this rank's figures of ``step`` (1-based); every rank calls it every step.

        Returns True when this step flushed (on every rank alike): a point where the ranks
        already meet, so other collective checks (a stop request) can ride along.
        """
        self.step_s += step_time_s
        row = [0.0] * len(FIELDS)
        row[COL["has_loss"]] = float(result.loss is not None)
        row[COL["loss"]] = result.loss if result.loss is not None else 0.0
        row[COL["loss_d"]] = result.extra.get("loss_d", 0.0)
        row[COL["loss_g"]] = result.extra.get("loss_g", 0.0)
        row[COL["step_time_s"]] = step_time_s
        row[COL["compute_s"]] = result.compute_s
        row[COL["optimizer_s"]] = result.optimizer_s
        row[COL["peer_wait_s"]] = result.waits.get("peer", math.nan)
        row[COL["communication_s"]] = result.waits.get("communication", math.nan)
        row[COL["peak_memory_bytes"]], row[COL["peak_private_bytes"]] = memory_peaks(self.device)
        row[COL["base_memory_bytes"]] = self.base_memory_bytes
        row[COL["tensor_memory_bytes"]] = self._tensor_memory(step)
        row[COL["cpu_percent"]] = 100.0 * cpu_s / step_time_s if step_time_s > 0 else 0.0
        row[COL["time"]] = time.time()
        self.pending.append((step, row))
        if len(self.pending) >= self.interval or step == self.last_step:
            self.flush()
            return True
        return False

    def _tensor_memory(self, step: int) -> float:
        if self.tensor_peak is None:
            return math.nan
        if self.tensor_peak.counting and (step >= PROBE_STEPS or step == self.last_step):
            self.tensor_peak.stop()
            # The profiler's records were freed, but glibc keeps their pages: return them and
            # measure the process's peak afresh, from the same baseline, over the steps after.
            return_freed_pages()
            reset_peak_memory(self.device)
        peak = self.tensor_peak.peak()
        return math.nan if peak is None else float(peak)

    def flush(self) -> None:
        if not self.pending:
            return
        t = time.perf_counter()
        local = torch.tensor([row for _, row in self.pending], dtype=torch.float64)  # (k, F)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local, group=self.group)
        table = torch.stack(gathered, dim=1)  # (k steps, ranks, F)
        steps = [s for s, _ in self.pending]
        self.pending.clear()
        step_times = table[:, :, COL["step_time_s"]].max(dim=1).values
        # Same data on every rank, so every rank picks the same next interval.
        median = statistics.median(step_times.tolist())
        self.interval = max(1, min(MAX_INTERVAL, int(self.flush_period_s / max(median, 1e-9))))
        if self.write is not None:
            self.write(self._rows(steps, table))
        self.logging_s += time.perf_counter() - t

    def _rows(self, steps: list[int], table: torch.Tensor) -> list[Metric]:
        rows: list[Metric] = []
        gan = self.plan.adversarial  # its two losses are kept apart too (runtime.parallel.gan)
        batch = self.plan.training.global_batch
        for k, step in enumerate(steps):
            t = table[k]  # (ranks, F)
            now = float(t[:, COL["time"]].max())
            for rank in range(self.world_size):
                r = t[rank]
                step_time, compute, opt = (
                    float(r[COL[n]]) for n in ("step_time_s", "compute_s", "optimizer_s")
                )
                wait = max(step_time - compute - opt, 0.0)
                figures = {
                    "step_time_s": step_time,
                    "compute_s": compute,
                    "optimizer_s": opt,
                    "comm_wait_s": wait,
                    **self._wait_parts(rank, r, wait, now),
                    "peak_memory_bytes": float(r[COL["peak_memory_bytes"]]),
                    "dynamic_memory_bytes": float(r[COL["peak_private_bytes"]] - r[COL["base_memory_bytes"]]),
                    "cpu_percent": float(r[COL["cpu_percent"]]),
                }
                if not math.isnan(r[COL["tensor_memory_bytes"]]):
                    figures["tensor_memory_bytes"] = float(r[COL["tensor_memory_bytes"]])
                if r[COL["has_loss"]]:
                    figures["loss"] = float(r[COL["loss"]])
                rows += [
                    Metric(step, rank, name, value, float(r[COL["time"]])) for name, value in figures.items()
                ]
            has = t[:, COL["has_loss"]] > 0
            step_time = float(t[:, COL["step_time_s"]].max())
            whole = {
                "loss": self._weighted(t[:, COL["loss"]], has),
                "step_time_s": step_time,
                "samples_per_s": batch / step_time,
                "bubble_fraction": 1.0 - float(t[:, COL["compute_s"]].sum()) / (self.world_size * step_time),
            }
            if self.tokens_per_sample > 1:
                whole["tokens_per_s"] = batch * self.tokens_per_sample / step_time
            if gan:
                whole["loss_d"] = self._weighted(t[:, COL["loss_d"]], has)
                whole["loss_g"] = self._weighted(t[:, COL["loss_g"]], has)
            rows += [Metric(step, STEP_RANK, name, value, now) for name, value in whole.items()]
        return rows

    def _wait_parts(self, rank: int, r: torch.Tensor, wait: float, end: float) -> dict[str, float]:
        """A rank's wait split by cause, where its engine tells them apart.

        ``idle_end_s``: from this rank's end of the step to the last rank's (their clocks:
        one machine's, or as well synchronised as the machines' are). A rank that ends early
        starts its next step at once and spends that time waiting for its first data, so
        the previous step's idle at the end is taken out of ``peer_wait_s``. ``host_s``: the
        rest, the step's own work outside compute and waits (posting messages, the
        schedule's bookkeeping, loading the batch)."""
        idle_end = end - float(r[COL["time"]])
        idle_before, self.idle_end[rank] = self.idle_end[rank], idle_end
        peer, communication = float(r[COL["peer_wait_s"]]), float(r[COL["communication_s"]])
        if math.isnan(peer) or math.isnan(communication):
            return {"idle_end_s": idle_end}
        peer = max(peer - idle_before, 0.0)
        return {
            "peer_wait_s": peer,
            "communication_s": communication,
            "idle_end_s": idle_end,
            "host_s": max(wait - peer - communication - idle_before, 0.0),
        }

    def _weighted(self, values: torch.Tensor, has: torch.Tensor) -> float:
        # One rank per replica (or its tensor group, each weighted 1 / tp) computes its loss;
        # weighting by share gives the global mean.
        # A NaN anywhere stays NaN (no masking by multiplication: 0 x NaN is NaN, kept).
        return float((values[has] * self.loss_weight[has]).sum())
