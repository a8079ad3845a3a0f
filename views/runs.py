"""Runs page: launch the current plan, and every run with its plan, progress and controls.

The list redraws itself every 2 s (a fragment): states and steps change as the runs go,
without a click. Runs belong to their supervisor, not to this browser tab (dashboard.run_actions).
"""

from __future__ import annotations

import time

import streamlit as st

from dashboard import format, run_actions
from dashboard.messages import md
from dashboard.naming import model_name, strategy_name
from dashboard.run_summary import read_plan, summarize
from dashboard.shared import current_plan_json, current_plan_summary
from planner.limits import MAX_STEPS
from runtime.supervise import launch, store
from runtime.supervise.launch import RunError

REFRESH_S = 2.0
LISTED = 30  # newest runs listed; `python -m runtime list` has them all
WHERE = "runs"
COLUMNS = ("Run: model and strategy", "State", "Step", "Duration", "Last loss")
WIDTHS = [3.2, 1.0, 1.4, 1.2, 1.0, 2.8]  # the last: Monitor, Stop, Resume

st.title("Runs")
runs_dir = store.default_runs_dir().resolve()
st.caption(f"Runs database: {runs_dir / store.DB_NAME} (set STAGECRAFT_RUNS_DIR to use another).")

st.subheader("Launch")
text = current_plan_json()
summary = current_plan_summary() if text is not None else None
plan, problem = read_plan(text) if text is not None else (None, "No plan yet: choose one on the Plan page.")
if plan is None or summary is None:
    st.info(md(problem or "No plan yet: choose one on the Plan page."))
else:
    ranks = format.count(len(plan.ranks))
    st.markdown(f"Plan to launch: **{md(model_name(plan))}**: {md(strategy_name(plan))}, on {ranks} ranks")
    edited = f", edited: {'; '.join(summary.changes)}" if summary.edited else ""
    st.caption(md(f"The current plan ({summary.name}{edited}); change it on the Plan page."))
    if summary.step_time_s is not None:
        with st.container(horizontal=True, gap="large"):  # metrics as wide as their values: never cut
            st.metric("Step time (predicted)", format.duration(summary.step_time_s), width="content")
            st.metric(
                "Throughput (predicted)", format.rate(summary.samples_per_s, "samples/s"), width="content"
            )
            st.metric(
                "Peak memory (predicted)",
                format.size(summary.peak_memory_bytes),
                width="content",
                help="The most any one device holds.",
            )
            st.metric("Sent per step (predicted)", format.size(summary.bytes_sent_per_step), width="content")
    else:
        st.caption("This plan carries no prediction: the Plan page prices it.")
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    steps = int(left.number_input("Steps", 1, MAX_STEPS, plan.training.steps, key="runs_steps"))
    if right.button("Launch this plan", key="runs_launch", type="primary"):
        run_id, failure = run_actions.launch_plan(text, steps, runs_dir)
        if run_id:
            st.session_state["runs_selected"] = run_id
            st.success(f"Started run {run_id}")
        else:
            st.error(md(failure))


@st.fragment(run_every=REFRESH_S)
def run_list() -> None:
    st.subheader("Runs")
    try:
        rows = launch.list_runs(runs_dir)
    except RunError as exc:  # a runs dir that is not one: one line, and the list stays empty
        st.error(md(str(exc)))
        return
    run_actions.show_notice(WHERE)
    if not rows:
        st.info("No runs yet: launch the current plan above.")
        return
    header = st.container(key="runs-header").columns(WIDTHS)
    for col, name in zip(header, COLUMNS, strict=False):
        col.markdown(f"**{name}**")
    conn = store.connect(runs_dir)
    now = time.time()
    for row in list(reversed(rows))[:LISTED]:
        run = summarize(conn, row, now)
        with st.container(key=f"run-{run.run_id}"):
            cols = st.columns(WIDTHS, vertical_alignment="center")
            name = f"**{md(run.model)}**: {md(run.strategy)}" if run.model != "-" else md(run.strategy)
            cols[0].markdown(f"{name}  \n:gray[run {run.run_id}]")
            cols[1].markdown(run.state)
            cols[2].markdown(run.step)
            cols[3].markdown(run.duration)
            cols[4].markdown(md(run.last_loss))
            with cols[5].container(horizontal=True, gap="small", vertical_alignment="center"):
                st.page_link("views/monitor.py", label="Monitor", query_params={"run": run.run_id})
                run_actions.stop_button(WHERE, run.run_id, run.active)
                run_actions.resume_button(WHERE, run.run_id, run.resumable, runs_dir)
            reason = st.empty()  # a slot in every row: the rows keep their layout as states change
            if run.reason and not run.active:
                reason.caption(md(run.reason))
            run_actions.stop_confirmation(WHERE, run.run_id, runs_dir)
    if len(rows) > LISTED:
        st.caption(
            f"The newest {LISTED} of {format.count(len(rows))} runs; `python -m runtime list` lists all."
        )


run_list()
