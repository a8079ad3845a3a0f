"""Predicted vs measured: what a run did, next to what its plan said it would do.

Each figure is priced twice: from datasheets (no profile) and calibrated (with the measured
profile of this model, `python -m runtime profile`, when one is in `<runs-dir>/profiles/`).
Measured figures are medians over the run's steps after the first ``WARMUP`` (the first
steps allocate, pick kernels and create the optimizer state); memory is the last peak.

Figures, with the measured definitions of `runtime.rank.metrics` (rank -1 is the whole step):
- ``step_time_s``, ``samples_per_s`` and ``bubble_fraction`` (rank -1). The predicted bubble
  is taken the way the runtime measures it: 1 - forward and backward time / (ranks x step);
- per rank ``compute_s`` (forward, loss, backward), ``optimizer_s``, ``wait_s`` (the rest of
  the step), the wait's parts: ``peer_wait_s`` (waiting for a peer's data),
  ``communication_s`` (communication compute did not hide), ``idle_end_s`` (done before the
  step's last rank) and ``host_s`` (the step's host work outside compute: posting messages,
  the schedule's bookkeeping; predicted from the profile's cost per pipeline action), and
  ``tensor_memory_bytes`` (the tensor allocator's peak since the
  process group was up and the data set loaded: what the plan moves, and what the
  prediction counts, less the fixed per-process overhead and the runtime's own measured
  bytes). The process's private pages (``dynamic_memory_bytes``) are stored with the
  metrics but not compared: on CPU they also hold what glibc keeps of freed blocks and the
  records of the profiler that counts the tensors, neither of which is the plan's.

Stored after every run in the ``comparisons`` table (runtime.supervise.store), so a finished run keeps
the prediction it was judged against even if the cost model changes later.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError
from planner.plan import Plan
from planner.profile import Profile, load_profile
from runtime.supervise import store

WARMUP = 2
PROFILES = "profiles"
STEP_FIGURES = ("step_time_s", "samples_per_s", "bubble_fraction")
MEMORY_FIGURES = ("tensor_memory_bytes",)
WAIT_PARTS = ("peer_wait_s", "communication_s", "idle_end_s", "host_s")
"""A rank's wait split by cause (`runtime.rank.metrics`; predicted: `planner.cost.simulate.IDLE_CAUSES`
and the schedule's host work per action)."""
RANK_FIGURES = ("compute_s", "optimizer_s", "wait_s", *WAIT_PARTS, *MEMORY_FIGURES)
FRACTIONS = ("bubble_fraction",)  # compared by difference: a relative error of a small bubble says little


@dataclass(frozen=True)
class Comparison:
    rank: int  # -1: the whole step
    name: str
    datasheet: float | None
    calibrated: float | None
    measured: float | None

    @property
    def predicted(self) -> float | None:
        """The best prediction there is: calibrated where a profile exists."""
        return self.calibrated if self.calibrated is not None else self.datasheet

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured; a plain difference for fractions."""
        return error(self.name, self.predicted, self.measured)


def error(name: str, predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None:
        return None
    if name in FRACTIONS:
        return predicted - measured
    return (predicted - measured) / measured if measured else None


def predicted_figures(plan: Plan, prediction) -> dict[tuple[int, str], float]:
    """A `planner.cost.price.Prediction` in the runtime's terms, per rank and for the step."""
    step = prediction.step_time_s
    busy: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for i in prediction.timeline:
        busy[i.rank][i.kind] += i.end - i.start
    out = {
        (store.STEP_RANK, "step_time_s"): step,
        (store.STEP_RANK, "samples_per_s"): prediction.samples_per_s,
    }
    idle: dict[int, dict[str | None, float]] = defaultdict(lambda: defaultdict(float))
    for i in prediction.timeline:
        if i.kind == "idle":
            idle[i.rank][i.waiting_for] += i.end - i.start
    compute_all = 0.0
    for r in plan.ranks:
        host = prediction.host_s.get(r.rank, 0.0)  # inside the forwards and backwards
        waited = prediction.comm_s.get(r.rank, 0.0)  # a sharded group's collectives, likewise
        compute = busy[r.rank]["forward"] + busy[r.rank]["backward"] - host - waited
        compute_all += compute  # as the runtime measures it: its clock times compute only
        optimizer = busy[r.rank]["optimizer"]
        out[(r.rank, "compute_s")] = compute
        out[(r.rank, "optimizer_s")] = optimizer
        out[(r.rank, "wait_s")] = max(step - compute - optimizer, 0.0)
        out[(r.rank, "peer_wait_s")] = idle[r.rank]["peer"]
        out[(r.rank, "communication_s")] = idle[r.rank]["communication"] + waited
        out[(r.rank, "idle_end_s")] = idle[r.rank]["end"]
        out[(r.rank, "host_s")] = host
    out[(store.STEP_RANK, "bubble_fraction")] = 1 - compute_all / (len(plan.ranks) * step) if step else 0.0
    for m in prediction.memory:
        out[(m.rank, "tensor_memory_bytes")] = float(m.total - m.overhead - m.runtime)
    return out


def window(steps: Iterable[int], warmup: int = WARMUP, last: int | None = None) -> list[int]:
    """The steps a comparison measures: those after the first ``warmup`` recorded, and of
    them the last ``last`` (all when None). The stored comparison and the live one both
    take their steps here, so a page can say which steps its figures are medians of.

    >>> window([1, 2, 3, 4, 5]), window(range(1, 101), last=20)[0], window([1, 2])
    ([3, 4, 5], 81, [])
    """
    after = sorted(set(steps))[warmup:]
    return after[-last:] if last else after


def measured_figures(metrics: list[store.Metric], warmup: int = WARMUP) -> dict[tuple[int, str], float]:
    """Medians over the steps after the first ``warmup`` of those recorded; the last peak."""
    steps = window((m.step for m in metrics if m.rank == store.STEP_RANK and m.name == "step_time_s"), warmup)
    if not steps:
        return {}
    first = steps[0]
    series: dict[tuple[int, str], list[float]] = defaultdict(list)
    memory: dict[tuple[int, str], tuple[int, float]] = {}
    for m in metrics:
        if m.name in MEMORY_FIGURES:
            key = (m.rank, m.name)
            if key not in memory or m.step >= memory[key][0]:
                memory[key] = (m.step, m.value)
        elif m.step >= first:
            series[(m.rank, "wait_s" if m.name == "comm_wait_s" else m.name)].append(m.value)
    out = {key: statistics.median(values) for key, values in series.items()}
    out |= {key: value for key, (_, value) in memory.items()}
    return out


def find_profile(plan: Plan, runs_dir: Path) -> Profile | None:
    """The profile the plan cites (``profile:<sha256>``), else the newest one of its graph
    timed in the plan's compute dtype, else the newest one of its graph. A file in the
    profiles folder that does not load as a profile is passed over."""
    folder = Path(runs_dir) / PROFILES
    sources = plan.predicted.sources.values() if plan.predicted else ()
    cited = [
        part.removeprefix("profile:") for s in sources for part in s.split("+") if part.startswith("profile:")
    ]
    candidates = [folder / f"{sha}.json" for sha in dict.fromkeys(cited)]
    candidates += sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    found = []
    for path in dict.fromkeys(candidates):
        try:
            profile = load_profile(path)
        except PlannerError:
            continue
        if profile.graph_digest == plan.model.graph_digest:
            if path.stem in cited or profile.timed_in(plan.training.precision.recipe.compute):
                return profile
            found.append(profile)
    return found[0] if found else None


def save_profile(profile: Profile, runs_dir: Path) -> Path:
    """Keep a profile where runs find it: ``<runs-dir>/profiles/<sha256>.json``."""
    folder = Path(runs_dir) / PROFILES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{profile.digest()}.json"
    path.write_text(profile.model_dump_json(indent=2) + "\n")
    return path


def plan_graph(model, dtype: str):
    """The coarsened graph of a plan's model section, traced again (what price() needs)."""
    from planner.capture.coarsen import coarsen
    from planner.capture.trace import trace

    return coarsen(trace(model.source, model.overrides, batch_size=model.trace_batch_size, dtype=dtype))


def predictions(plan: Plan, graph, profile: Profile | None) -> tuple[dict, dict]:
    """(datasheet, calibrated) figures of ``plan``; calibrated is empty without a profile."""
    from planner.cost.price import Pricer

    datasheet = predicted_figures(plan, Pricer(graph, plan.cluster)(plan))
    calibrated = predicted_figures(plan, Pricer(graph, plan.cluster, profile)(plan)) if profile else {}
    return datasheet, calibrated


def combine(plan: Plan, datasheet: dict, calibrated: dict, measured: dict) -> list[Comparison]:
    keys = [(store.STEP_RANK, n) for n in STEP_FIGURES]
    keys += [(r.rank, n) for r in plan.ranks for n in RANK_FIGURES]
    return [Comparison(*key, datasheet.get(key), calibrated.get(key), measured.get(key)) for key in keys]


def compare(
    plan: Plan, metrics: list[store.Metric], profile: Profile | None, graph=None, warmup: int = WARMUP
) -> list[Comparison]:
    """Every figure: datasheet and calibrated predictions, and the measurement."""
    graph = graph if graph is not None else plan_graph(plan.model, plan.training.precision.recipe.weights)
    return combine(plan, *predictions(plan, graph, profile), measured_figures(metrics, warmup))


def record(conn, run_id: str, runs_dir: Path) -> list[Comparison]:
    """Compare a run with its plan and store the result (replacing an earlier one: a
    resumed run is judged on all its steps). Nothing is stored before the warm-up is over."""
    from planner.plan import plan_from_json

    run = store.run_row(conn, run_id)
    metrics, _ = store.read_metrics(conn, run_id)
    if not measured_figures(metrics):
        return []
    plan = plan_from_json(run["plan_json"])
    profile = find_profile(plan, runs_dir)
    rows = compare(plan, metrics, profile)
    store.record_comparisons(conn, run_id, profile.digest() if profile else None, rows)
    return rows


def record_after_run(conn, run_id: str, runs_dir: Path, out) -> None:
    """`record`, at the end of a run: a failure is written down and changes nothing else
    (a comparison must never turn a finished run into a failed one)."""
    try:
        rows = record(conn, run_id, runs_dir)
    except Exception as exc:
        run_dir = Path(store.run_row(conn, run_id)["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "comparison-error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        print(f"run {run_id}: not compared with its plan: {exc}", file=out)
        return
    if rows:
        print(f"run {run_id}: {summary(rows)}", file=out)


def stored(conn, run_id: str) -> tuple[list[Comparison], str | None]:
    """The comparison stored at the end of a run, and the sha256 of the profile it used."""
    rows, sha = store.comparisons(conn, run_id)
    return [Comparison(*row) for row in rows], sha


def summary(rows: list[Comparison]) -> str:
    """One line for the end of a run: step time and bubble, predicted vs measured."""
    by = {(c.rank, c.name): c for c in rows}
    step, bubble = by[(store.STEP_RANK, "step_time_s")], by[(store.STEP_RANK, "bubble_fraction")]
    kind = "calibrated" if step.calibrated is not None else "datasheet"
    if step.measured is None:
        return "too few steps to compare with the prediction"
    return (
        f"step time {step.measured:.4g} s measured, {step.predicted:.4g} s predicted ({kind}, "
        f"{step.error:+.1%}); bubble {bubble.measured:.1%} measured, {bubble.predicted:.1%} predicted"
    )
