"""Predicted vs measured as the Monitor shows it: one comparison (runtime.measure.compare) per view.

The header's figures, the table and the per-rank bars all read the same `RunView`, so they
cannot disagree. While a run goes, the measurements are medians over its last ``RECENT``
steps after the warm-up; once it has ended, the comparison stored then (every step after
the warm-up). The view keeps the steps it measured, so the page can say which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dashboard import format
from dashboard.run_summary import one_line
from dashboard.shared import plan_graph_json
from planner.plan import Plan, plan_from_json
from runtime.measure import compare
from runtime.supervise import store

RECENT = 20  # steps a live comparison takes its medians over

NAMES = {
    "step_time_s": "Step time",
    "samples_per_s": "Throughput",
    "bubble_fraction": "Bubble",
    "compute_s": "Compute",
    "optimizer_s": "Optimizer",
    "wait_s": "Communication + wait",
    "peer_wait_s": "  waiting for a peer",
    "communication_s": "  communication not hidden",
    "idle_end_s": "  idle at the end",
    "host_s": "  host work",
    "tensor_memory_bytes": "Tensor memory",
}
HELP = {
    "step_time_s": "Wall time of a whole step (the slowest rank's).",
    "samples_per_s": "Samples of the global batch per second.",
    "bubble_fraction": "Share of the ranks' step time outside forward and backward: idle, waiting for "
    "peers, and the optimizer step, as the runtime measures it.",
    "compute_s": "Forward, loss and backward of the rank's stages.",
    "optimizer_s": "The rank's optimizer step.",
    "wait_s": "The rest of the step: communication that compute did not hide, and idle time.",
    "peer_wait_s": "Part of the wait: blocked on a receive, the peer's data not there yet.",
    "communication_s": "Part of the wait: blocked on the rank's own sends and gradient reductions.",
    "idle_end_s": "Part of the wait: done before the step's last rank.",
    "host_s": "Part of the wait: the step's host work outside compute (posting messages, the "
    "schedule's bookkeeping, loading the batch).",
    "tensor_memory_bytes": "Peak tensor memory since before the model was built: what the plan moves.",
}


def show(name: str, value: float | None) -> str:
    """A compared figure in its unit."""
    if name in compare.MEMORY_FIGURES:
        return format.size(value)
    if name in compare.FRACTIONS:
        return format.percent(value)
    if name == "samples_per_s":
        return format.rate(value, "samples/s")
    return format.duration(value)


def error_text(c: compare.Comparison) -> str:
    """Predicted against measured: relative, or in points for a fraction."""
    return format.points(c.error) if c.name in compare.FRACTIONS else format.change(c.error)


@dataclass(frozen=True)
class RunView:
    rows: list[compare.Comparison]
    steps: list[int]  # the steps the measurements are medians over
    source: str  # "stored" when the run ended, "ended" (compared now), or "live"
    profile_sha: str | None
    problem: str = ""  # why there are no predictions, in one line

    def figure(self, name: str, rank: int = store.STEP_RANK) -> compare.Comparison | None:
        return next((c for c in self.rows if c.rank == rank and c.name == name), None)

    @property
    def calibrated(self) -> bool:
        return any(c.calibrated is not None for c in self.rows)

    def window_text(self) -> str:
        """Which steps the measured figures come from."""
        if not self.steps:
            return f"measured: nothing yet, the first {compare.WARMUP} steps warm up"
        span = f"steps {format.count(self.steps[0])} to {format.count(self.steps[-1])}"
        if self.steps[0] == self.steps[-1]:
            span = f"step {format.count(self.steps[0])}"
        warmup = f"the {compare.WARMUP} warm-up steps"
        if self.source == "live":
            return f"measured live: medians of {span}, the last {RECENT} after {warmup}"
        when = "stored when the run ended" if self.source == "stored" else "the run has ended"
        return f"measured: medians of {span}, every step after {warmup}; {when}"

    def table(self) -> list[dict]:
        """The comparison as rows of text, every number in its unit."""
        out = []
        for c in self.rows:
            row = {
                "Figure": NAMES.get(c.name, c.name),
                "Rank": "whole step" if c.rank == store.STEP_RANK else f"rank {c.rank}",
                "Datasheet": show(c.name, c.datasheet),
            }
            if self.calibrated:
                row["Calibrated"] = show(c.name, c.calibrated)
            row |= {"Measured": show(c.name, c.measured), "Error": error_text(c)}
            out.append(row)
        return out

    def column_config(self) -> dict:
        return {
            "Figure": st.column_config.TextColumn("Figure", width="medium"),
            "Rank": st.column_config.TextColumn("Rank", width="small"),
            "Datasheet": st.column_config.TextColumn(
                "Predicted (datasheet)", help="Priced from the devices' datasheet figures."
            ),
            "Calibrated": st.column_config.TextColumn(
                "Predicted (calibrated)", help="Priced with this model's measured profile."
            ),
            "Measured": st.column_config.TextColumn("Measured", help=self.window_text()),
            "Error": st.column_config.TextColumn(
                "Error",
                help="Calibrated (else datasheet) against measured: relative, the bubble in points.",
            ),
        }


def profiles_key(runs_dir: Path) -> tuple[str, ...]:
    """The profiles there are (a profile made while the page is open is used at once)."""
    return tuple(sorted(p.name for p in (runs_dir / compare.PROFILES).glob("*.json")))


@st.cache_data(show_spinner=False, max_entries=16)
def priced(plan_json: str, runs_dir: str, profiles: tuple[str, ...]) -> tuple[dict, dict, str | None]:
    """(datasheet, calibrated, profile sha256) figures of a plan, priced once per set of
    profiles: the one pricing every predicted figure of a run on the Monitor comes from."""
    from planner.capture.graph import from_json

    plan = plan_from_json(plan_json)
    graph = from_json(plan_graph_json(plan.model.model_dump_json(), plan.training.precision.recipe.weights))
    profile = compare.find_profile(plan, Path(runs_dir))
    datasheet, calibrated = compare.predictions(plan, graph, profile)
    return datasheet, calibrated, profile.digest() if profile else None


def predicted(plan: Plan, runs_dir: Path) -> tuple[dict, dict, str | None, str]:
    """`priced`, with a failure (a model that no longer traces) as one line instead."""
    try:
        return (*priced(plan.to_json(), str(runs_dir), profiles_key(runs_dir)), "")
    except Exception as exc:  # tracing runs model code: any failure is shown, never raised
        return {}, {}, None, f"no predictions: {one_line(exc)}"


def run_view(conn, run: dict, plan: Plan, series: dict, runs_dir: Path) -> RunView:
    """The comparison of a run: stored at its end, else live over its recent steps.

    ``series`` maps (rank, name) to {step: (value, time)}: the run's metrics read so far.
    """
    all_steps = series.get((store.STEP_RANK, "step_time_s"), {})
    ended = run["state"] in store.TERMINAL
    if ended:  # a resumed run that goes again has a stored comparison of its earlier steps only
        rows, sha = compare.stored(conn, run["run_id"])
        if rows:
            return RunView(rows, compare.window(all_steps), "stored", sha)
    steps = compare.window(all_steps, last=None if ended else RECENT)
    datasheet, calibrated, sha, problem = predicted(plan, runs_dir)
    chosen = set(steps)
    metrics = [  # only the window's rows: this runs every refresh, however long the run
        store.Metric(step, rank, name, *by_step[step])
        for (rank, name), by_step in series.items()
        for step in chosen
        if step in by_step
    ]
    measured = compare.measured_figures(metrics, warmup=0)
    rows = compare.combine(plan, datasheet, calibrated, measured)
    return RunView(rows, steps, "ended" if ended else "live", sha, problem)
