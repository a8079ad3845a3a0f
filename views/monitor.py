"""Monitor page: one run, live, next to what its plan predicted. Reads only the rows
written since its last look, every 2 s.

Every predicted and measured figure on the page (the header, the table, the per-rank
bars) comes from one comparison of the run (dashboard.run_compare over runtime.measure.compare),
and the page says which steps it measured. Then the loss (smoothed, log scale, other runs
overlaid), throughput, CPU and memory per rank over time, and the latest attempt's logs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import streamlit as st

from dashboard import format, run_actions
from dashboard.figures.run import (
    Curve,
    byte_unit,
    loss_figure,
    per_rank_figure,
    rate_figure,
    split_figure,
    tensor_memory_figure,
)
from dashboard.messages import md, one_line
from dashboard.naming import plan_name, strategy_name
from dashboard.run_compare import HELP, NAMES, RunView, error_text, run_view, show
from dashboard.run_logs import Folded, fold_warnings, latest_attempt, rank_logs
from dashboard.run_summary import RESUMABLE, read_plan, run_duration
from dashboard.shared import current_plan_json, plan_graph_json
from runtime.measure import compare
from runtime.supervise import launch, store
from runtime.supervise.launch import RunError

REFRESH_S = 2.0
WHERE = "monitor"
ROW_PX = 35  # a dataframe row's height
MAX_ROWS = 24  # rows the comparison shows before it scrolls (many ranks)

st.title("Monitor")
runs_dir = store.default_runs_dir().resolve()


def predicted_only() -> None:
    """Before any run: what the current plan is predicted to do, priced as a run's would be."""
    from dashboard.figures.plan import gantt_figure
    from planner.capture.graph import from_json
    from planner.cost.price import Pricer

    st.info(
        "No runs yet: launch one on the Runs page, and this page follows it live. Until then, "
        "this is what the current plan is predicted to do."
    )
    text = current_plan_json()
    plan, problem = (
        read_plan(text) if text is not None else (None, "No plan yet: choose one on the Plan page.")
    )
    if plan is None:
        st.caption(md(problem))
        return
    st.markdown(f"Current plan: **{md(plan_name(plan))}**")
    try:
        graph = from_json(
            plan_graph_json(plan.model.model_dump_json(), plan.training.precision.recipe.weights)
        )
        prediction = Pricer(graph, plan.cluster, compare.find_profile(plan, runs_dir))(plan)
    except Exception as exc:  # tracing runs model code: one line, never a traceback
        st.error(md(f"no prediction: {one_line(exc)}"))
        return
    figures = compare.predicted_figures(plan, prediction)
    cols = st.columns(2)
    step, bubble = (figures[(store.STEP_RANK, n)] for n in ("step_time_s", "bubble_fraction"))
    cols[0].metric("Step time (predicted)", show("step_time_s", step), help=HELP["step_time_s"])
    cols[1].metric("Bubble (predicted)", show("bubble_fraction", bubble), help=HELP["bubble_fraction"])
    fig = gantt_figure(prediction)
    fig.update_layout(title="Predicted schedule of one step, rank by rank", xaxis_title="Time (ms)")
    st.plotly_chart(fig, key="monitor_predicted")


try:
    rows = launch.list_runs(runs_dir)
except RunError as exc:  # a runs dir that is not one: one line
    st.error(md(str(exc)))
    st.stop()
if not rows:
    predicted_only()
    st.stop()

by_id = {r["run_id"]: r for r in reversed(rows)}  # newest first
names = {}
for run_id, row in by_id.items():
    plan, _ = read_plan(row["plan_json"])
    names[run_id] = strategy_name(plan) if plan else "plan unreadable"
ids = list(by_id)
asked = st.query_params.get("run")
if asked in by_id and st.session_state.get("monitor_asked") != asked:
    st.session_state["monitor_run"] = asked  # a link from the Runs page (or a reload) chose it
st.session_state["monitor_asked"] = asked
if st.session_state.get("monitor_run") not in by_id:
    chosen = st.session_state.get("runs_selected")
    st.session_state["monitor_run"] = chosen if chosen in by_id else ids[0]
run_id = st.selectbox(
    "Run", ids, key="monitor_run", format_func=lambda r: f"{r}: {names[r]} ({by_id[r]['state']})"
)
if st.query_params.get("run") != run_id:
    st.query_params["run"] = run_id
    st.session_state["monitor_asked"] = run_id
st.session_state["runs_selected"] = run_id


def collected(run_id: str) -> dict:
    """This session's copy of the run's metrics, topped up with the rows written since."""
    key = f"monitor_data_{run_id}"
    data = st.session_state.setdefault(key, {"cursor": 0, "series": defaultdict(dict)})
    conn = store.connect(runs_dir)
    new, data["cursor"] = store.read_metrics(conn, run_id, after_rowid=data["cursor"])
    for m in new:
        data["series"][(m.rank, m.name)][m.step] = (m.value, m.time)
    return data


def loss_of(run_id: str) -> dict[int, float]:
    """Another run's whole-step loss by step, topped up like `collected` (overlays only)."""
    key = f"monitor_loss_{run_id}"
    data = st.session_state.setdefault(key, {"cursor": 0, "loss": {}})
    new, data["cursor"] = store.read_metrics(
        store.connect(runs_dir), run_id, after_rowid=data["cursor"], names=["loss"]
    )
    data["loss"].update({m.step: m.value for m in new if m.rank == store.STEP_RANK})
    return data["loss"]


def header(view: RunView) -> None:
    """Measured and predicted, from the same comparison rows as the table below."""
    with st.container(horizontal=True, gap="large"):  # as wide as the values: never cut off
        for name in ("step_time_s", "bubble_fraction", "samples_per_s"):
            c, label = view.figure(name), NAMES[name]
            error = error_text(c) if c and c.error is not None else None
            with st.container(width="content"):
                st.metric(
                    f"{label} (measured)",
                    show(name, c.measured if c else None),
                    help=HELP[name],
                    width="content",
                )
                st.metric(
                    f"{label} (predicted)",
                    show(name, c.predicted if c else None),
                    delta=f"{error} against measured" if error else None,
                    delta_color="off",
                    delta_arrow="off",
                    width="content",
                )
    kind = f"calibrated with profile {view.profile_sha[:12]}" if view.profile_sha else "from datasheets"
    hint = "" if view.profile_sha else " (`python -m runtime profile --model ...` measures one)"
    st.caption(f"{view.window_text().capitalize()}. Predicted: {kind}{hint}.")


def loss_controls(others: list[str]) -> tuple[float, bool, list[str]]:
    left, middle, right = st.columns([2, 1, 4], vertical_alignment="bottom")
    if "monitor_overlay" in st.session_state:  # runs chosen before another one was shown
        st.session_state["monitor_overlay"] = [r for r in st.session_state["monitor_overlay"] if r in others]
    smoothing = left.slider(
        "Loss smoothing",
        0.0,
        0.99,
        0.6,
        0.01,
        key="monitor_smoothing",
        help="Exponential moving average of the loss: 0 shows it raw.",
    )
    log_y = middle.toggle("Log scale", key="monitor_log")
    overlay = right.multiselect(
        "Overlay runs",
        others,
        key="monitor_overlay",
        format_func=lambda r: f"{r}: {names[r]}",
        placeholder="Other runs, of this plan or others",
    )
    return smoothing, log_y, overlay


def loss_chart(run_id: str, series: dict, smoothing: float, log_y: bool, overlay: list[str]) -> None:
    loss = series.get((store.STEP_RANK, "loss"), {})
    curves = [Curve(run_id, sorted(loss), [loss[s][0] for s in sorted(loss)])]
    for other in overlay:
        values = loss_of(other)
        curves.append(Curve(other, sorted(values), [values[s] for s in sorted(values)]))
    st.plotly_chart(loss_figure(curves, smoothing, log_y), key="monitor_loss")


def per_rank(series: dict, ranks: range, name: str) -> dict[int, dict[int, float]]:
    return {r: {s: v[0] for s, v in series.get((r, name), {}).items()} for r in ranks}


def logs(run_dir: Path) -> None:
    st.subheader("Logs")
    try:
        attempt = latest_attempt(run_dir)
        if attempt is None:
            st.caption("No logs yet: torchrun writes them when the ranks start.")
            return
        rank_files = rank_logs(attempt)
    except OSError as exc:
        st.warning(md(f"logs unreadable: {one_line(exc)}"))
        return
    st.caption(
        f"The latest attempt ({attempt.parent.name}, {attempt.name.replace('_', ' ')}): the end of each "
        "rank's stderr, runs of warning lines folded."
    )
    if not rank_files:
        st.caption("This attempt has no rank logs yet.")
        return
    for tab, log in zip(st.tabs([f"rank {x.rank}" for x in rank_files]), rank_files, strict=True):
        with tab:
            if log.error:
                st.warning(md(log.error))
                continue
            folded = fold_warnings(log.lines)
            st.code("\n".join(str(x) for x in folded) or "(empty)", language=None, height=260)
            warnings = [line for x in folded if isinstance(x, Folded) for line in x.lines]
            if warnings:
                with st.expander(f"Warnings ({format.count(len(warnings))} lines)"):
                    st.code("\n".join(warnings), language=None)


@st.fragment(run_every=REFRESH_S)
def live(run_id: str, others: list[str]) -> None:
    conn = store.connect(runs_dir)
    run = store.run_row(conn, run_id)
    if run is None:
        st.error(f"Run {run_id} is no longer in the runs database.")
        return
    plan, problem = read_plan(run["plan_json"])
    if plan is None:
        st.error(md(f"Run {run_id}: {problem}"))
        return
    st.markdown(f"**{md(plan_name(plan))}**, on {format.count(len(plan.ranks))} ranks")
    series = collected(run_id)["series"]
    loss = series.get((store.STEP_RANK, "loss"), {})
    done = max(loss, default=0)
    times = sorted(v[1] for v in loss.values())
    eta = (times[-1] - times[0]) / (len(times) - 1) * (run["steps"] - done) if len(times) > 1 else None
    running = run["state"] == store.RunState.RUNNING
    eta_text = f", about {format.elapsed(eta)} to go" if eta is not None and running else ""
    st.progress(
        min(done / run["steps"], 1.0),
        text=f"{run['state']}: step {format.number(done)} of {format.number(run['steps'])}, "
        f"{format.elapsed(run_duration(run))}{eta_text}",
    )
    reason = st.empty()  # slots drawn every time keep the elements below in their places
    if run["reason"]:
        reason.caption(md(run["reason"]))
    with st.container(horizontal=True, gap="small"):
        run_actions.stop_button(WHERE, run_id, run["state"] in store.ACTIVE, label="Stop run")
        resumable = run["state"] in RESUMABLE
        run_actions.resume_button(WHERE, run_id, resumable, runs_dir, label="Resume run")
    run_actions.stop_confirmation(WHERE, run_id, runs_dir)
    run_actions.show_notice(WHERE)

    view = run_view(conn, run, plan, series, runs_dir)
    problem = st.empty()
    if view.problem:
        problem.warning(md(view.problem))
    header(view)

    smoothing, log_y, overlay = loss_controls(others)
    left, right = st.columns(2)
    with left:
        loss_chart(run_id, series, smoothing, log_y, overlay)
    with right:
        # samples/s, as the header and the table: the same figure over time
        values = series.get((store.STEP_RANK, "samples_per_s"), {})
        st.plotly_chart(
            rate_figure(sorted(values), [values[s][0] for s in sorted(values)], "samples/s"),
            key="monitor_rate",
        )

    st.subheader("Predicted vs measured")
    table = view.table()
    st.dataframe(
        table,
        hide_index=True,
        key="monitor_comparison",
        column_config=view.column_config(),
        height=ROW_PX * (min(len(table), MAX_ROWS) + 1) + 3,
    )  # no scrolling below MAX_ROWS
    st.caption(
        f"{view.window_text().capitalize()}. Error: calibrated (else datasheet) against measured; the "
        "bubble's in points. Tensor memory: the peak since before the model was built."
    )

    ranks = range(run["world_size"])
    left, right = st.columns(2)
    left.plotly_chart(split_figure(view, ranks), key="monitor_split")
    right.plotly_chart(tensor_memory_figure(view, ranks), key="monitor_memory")

    cpu = per_rank(series, ranks, "cpu_percent")
    memory = per_rank(series, ranks, "peak_memory_bytes")
    scale, unit = byte_unit(max((v for by in memory.values() for v in by.values()), default=0.0))
    left, right = st.columns(2)
    left.plotly_chart(
        per_rank_figure(
            cpu, "CPU per rank", "CPU (% of one core)", lambda v: f"{format.percent(v / 100)} CPU"
        ),
        key="monitor_cpu",
    )
    right.plotly_chart(
        per_rank_figure(memory, "Memory per rank (peak resident)", f"Memory ({unit})", format.size, scale),
        key="monitor_rank_memory",
    )
    logs(Path(run["run_dir"]))


live(run_id, [r for r in ids if r != run_id])
