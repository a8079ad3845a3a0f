"""Monitor page: a run, live. Reads only the rows written since its last look, every 2 s.

Loss and throughput curves, where each rank's time goes, memory per rank against the
plan's prediction, progress, and the end of each rank's log; and every predicted figure
(from datasheets, and calibrated with this model's measured profile where there is one) next
to its measurement and the error (runtime.compare): live from the recent steps while the
run goes, and as stored at its end afterwards.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from dashboard.shared import coarse_graph_json, current_model, current_plan_json, plan_graph_json
from planner.cost import Pricer
from planner.errors import PlannerError
from planner.figures import WEBGL_FROM
from planner.graph import from_json
from planner.plan import plan_from_json
from planner.plan_figures import gantt_figure
from runtime import compare, launch, store
from runtime.progress import format_duration

MiB = 2**20
REFRESH_S = 2.0
RECENT = 20  # steps the per-rank figures summarise

st.title("Monitor")
runs_dir = store.default_runs_dir().resolve()
rows = launch.list_runs(runs_dir) if (runs_dir / store.DB_NAME).exists() else []
if not rows:
    st.info(
        "No runs yet: launch one on the Runs page, and this page follows it live. Until then, "
        "this is what the current plan is predicted to do."
    )
    text = current_plan_json()
    if text is not None:
        plan = plan_from_json(text)
        source, overrides = current_model()
        try:
            prediction = Pricer(from_json(coarse_graph_json(source, tuple(overrides.split()))), plan.cluster)(
                plan
            )
        except PlannerError as exc:
            st.error(str(exc))
            st.stop()
        cols = st.columns(2)
        cols[0].metric("Step time (predicted)", f"{prediction.step_time_s * 1e3:.2f} ms")
        cols[1].metric("Bubble (predicted)", f"{prediction.bubble_fraction:.1%}")
        st.plotly_chart(gantt_figure(prediction), key="monitor_predicted")
    st.stop()
ids = [r["run_id"] for r in reversed(rows)]
default = st.session_state.get("runs_selected")
run_id = st.selectbox("Run", ids, index=ids.index(default) if default in ids else 0, key="monitor_run")


def collected(run_id: str) -> dict:
    """This session's copy of the run's metrics, topped up with the rows written since."""
    key = f"monitor_data_{run_id}"
    data = st.session_state.setdefault(key, {"cursor": 0, "series": defaultdict(dict)})
    conn = store.connect(runs_dir)
    new, data["cursor"] = store.read_metrics(conn, run_id, after_rowid=data["cursor"])
    for m in new:
        data["series"][(m.rank, m.name)][m.step] = (m.value, m.time)
    return data


@st.cache_data(show_spinner=False, max_entries=16)
def priced(plan_json: str, runs_dir: str, profiles: tuple[str, ...]) -> tuple[dict, dict, str | None]:
    """(datasheet, calibrated, profile sha256) figures of a run's plan, priced once per set
    of profiles (a profile made while the page is open is used at once)."""
    plan = plan_from_json(plan_json)
    graph = from_json(plan_graph_json(plan.model.model_dump_json(), plan.training.dtype))
    profile = compare.find_profile(plan, Path(runs_dir))
    datasheet, calibrated = compare.predictions(plan, graph, profile)
    return datasheet, calibrated, profile.digest() if profile else None


def live_comparison(plan, series: dict) -> tuple[list[compare.Comparison], str | None]:
    """Predicted vs the last RECENT steps after the warm-up (memory: the latest peak)."""
    profiles = tuple(sorted(p.name for p in (runs_dir / compare.PROFILES).glob("*.json")))
    datasheet, calibrated, sha = priced(plan.to_json(), str(runs_dir), profiles)
    steps = series.get((store.STEP_RANK, "step_time_s"), {})
    window = sorted(s for s in steps if s > compare.WARMUP)[-RECENT:]
    metrics = [  # only the window's rows: this runs every refresh, however long the run
        store.Metric(step, rank, name, *by_step[step])
        for (rank, name), by_step in series.items()
        for step in window
        if step in by_step
    ]
    return compare.combine(plan, datasheet, calibrated, compare.measured_figures(metrics, warmup=0)), sha


def comparison_table(rows: list[compare.Comparison], sha: str | None, final: bool) -> None:
    def show(name: str, value: float | None) -> str:
        if value is None:
            return "-"
        if name in compare.MEMORY_FIGURES:
            return f"{value / MiB:,.1f} MiB"
        if name in compare.FRACTIONS:
            return f"{value:.1%}"
        if name == "samples_per_s":
            return f"{value:,.2f}"
        return f"{value * 1e3:,.2f} ms"

    def err(c: compare.Comparison) -> str:
        e = c.error
        if e is None:
            return "-"
        return f"{e * 100:+.1f} pt" if c.name in compare.FRACTIONS else f"{e:+.1%}"

    table = [
        {
            "figure": c.name,
            "rank": "step" if c.rank == store.STEP_RANK else str(c.rank),
            "datasheet": show(c.name, c.datasheet),
            "calibrated": show(c.name, c.calibrated),
            "measured": show(c.name, c.measured),
            "error": err(c),
        }
        for c in rows
    ]
    st.subheader("Predicted vs measured")
    st.dataframe(table, hide_index=True, key="monitor_comparison")
    where = "stored at the end of the run" if final else f"live: the last {RECENT} steps after the warm-up"
    calibration = (
        f"calibrated with profile {sha[:12]}"
        if sha
        else "no profile of this model: `python -m runtime profile --model ...` makes one"
    )
    st.caption(
        f"{where}; {calibration}. Error = calibrated (else datasheet) vs measured; the bubble's "
        "in points. wait = communication not hidden by compute + idle. Memory: peak minus the "
        "rank's footprint before the model was built."
    )


def curve(series: dict, title: str, key: str, y_title: str) -> None:
    steps = sorted(series)
    scatter = go.Scattergl if len(steps) > WEBGL_FROM else go.Scatter
    fig = go.Figure(scatter(x=steps, y=[series[s][0] for s in steps], mode="lines"))
    fig.update_layout(
        title=title, xaxis_title="step", yaxis_title=y_title, height=300, margin=dict(l=10, r=10, t=40, b=10)
    )
    st.plotly_chart(fig, key=key)


@st.fragment(run_every=REFRESH_S)
def live(run_id: str) -> None:
    run = store.run_row(store.connect(runs_dir), run_id)
    plan = plan_from_json(run["plan_json"])
    series = collected(run_id)["series"]
    loss = series.get((store.STEP_RANK, "loss"), {})
    done = max(loss, default=0)
    times = sorted(v[1] for v in loss.values())
    eta = (times[-1] - times[0]) / (len(times) - 1) * (run["steps"] - done) if len(times) > 1 else None
    eta_text = f", ETA {format_duration(eta)}" if eta is not None and run["state"] == "running" else ""
    st.progress(min(done / run["steps"], 1.0), text=f"{run['state']}: step {done}/{run['steps']}{eta_text}")
    if run["reason"]:
        st.caption(run["reason"])

    def recent(rank: int, name: str) -> float | None:
        """Median of a rank's (or the step's, rank -1) last few values of ``name``."""
        values = [v[0] for v in list(series.get((rank, name), {}).values())[-RECENT:]]
        return statistics.median(values) if values else None

    measured_step = recent(store.STEP_RANK, "step_time_s")
    measured_bubble = recent(store.STEP_RANK, "bubble_fraction")
    cols = st.columns(4)
    predicted = plan.predicted
    if measured_step is not None:
        cols[0].metric("Step time (measured, median)", f"{measured_step * 1e3:.2f} ms")
    if predicted is not None:
        cols[1].metric("Step time (predicted)", f"{predicted.step_time_s * 1e3:.2f} ms")
    if measured_bubble is not None:
        cols[2].metric("Bubble (measured)", f"{measured_bubble:.1%}")
    if predicted is not None:
        cols[3].metric("Bubble (predicted)", f"{predicted.bubble_fraction:.1%}")

    rows, sha = compare.stored(store.connect(runs_dir), run_id)
    final = bool(rows)
    if not rows:
        rows, sha = live_comparison(plan, series)
    comparison_table(rows, sha, final)

    left, right = st.columns(2)
    with left:
        curve(loss, "Loss", "monitor_loss", "loss")
    rate = "tokens_per_s" if (store.STEP_RANK, "tokens_per_s") in series else "samples_per_s"
    with right:
        curve(series.get((store.STEP_RANK, rate), {}), rate.replace("_per_s", "/s"), "monitor_rate", rate)

    ranks = range(run["world_size"])

    split = go.Figure()
    for name, label in (
        ("compute_s", "compute"),
        ("optimizer_s", "optimizer"),
        ("comm_wait_s", "communication + wait"),
    ):
        split.add_trace(
            go.Bar(
                name=label, x=[f"rank {r}" for r in ranks], y=[(recent(r, name) or 0.0) * 1e3 for r in ranks]
            )
        )
    split.update_layout(
        barmode="stack",
        title=f"Where each rank's step goes (median of the last {RECENT})",
        yaxis_title="ms",
        height=320,
        margin=dict(l=10, r=10, t=40, b=10),
    )
    tensors = {c.rank: c for c in rows if c.name == "tensor_memory_bytes"}
    memory = go.Figure()
    for label, pick in (("measured", lambda c: c.measured), ("predicted", lambda c: c.predicted)):
        memory.add_trace(
            go.Bar(
                name=label,
                x=[f"rank {r}" for r in ranks],
                y=[(pick(tensors[r]) or 0.0) / MiB if r in tensors else 0.0 for r in ranks],
            )
        )
    memory.update_layout(
        barmode="group",
        title="Tensor memory per rank: what the plan moves (peak since before the model was built)",
        yaxis_title="MiB",
        height=320,
        margin=dict(l=10, r=10, t=40, b=10),
    )
    left, right = st.columns(2)
    left.plotly_chart(split, key="monitor_split")
    right.plotly_chart(memory, key="monitor_memory")
    st.caption(
        "CPU% per rank (its own column, not the compute share): "
        + ", ".join(f"rank {r} {recent(r, 'cpu_percent') or 0.0:.0f}%" for r in ranks)
    )

    with st.expander("Logs (last lines per rank)"):
        for log in sorted(Path(run["run_dir"]).glob("logs/*/attempt_*/*/stderr.log"))[-run["world_size"] :]:
            lines = log.read_text(errors="replace").splitlines()[-15:]
            st.caption(f"rank {log.parent.name}")
            st.code("\n".join(lines) or "(empty)")


live(run_id)
