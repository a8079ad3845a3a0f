"""Runs page: launch the current plan, list the runs, stop and resume them.

Runs belong to their supervisor, not to this browser session: they are started detached
(`python -m runtime run --detach`), so closing or reloading the tab leaves them running,
and any tab finds them in the runs database.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import streamlit as st

from dashboard.shared import current_plan_json
from planner.plan import plan_from_json
from runtime import launch, store
from runtime.launch import RunError

ROOT = Path(__file__).resolve().parents[1]


def runtime_command(*args: str) -> subprocess.CompletedProcess:
    # An argument list, no shell; `run --detach` returns at once and is waited for here,
    # so the page holds no child process (the supervisor is re-parented away from it).
    cmd = [sys.executable, "-m", "runtime", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


st.title("Runs")
runs_dir = store.default_runs_dir().resolve()
st.caption(f"Runs database: {runs_dir / store.DB_NAME} (set STAGECRAFT_RUNS_DIR to use another).")

text = current_plan_json()
if text is not None:
    plan = plan_from_json(text)
    left, right = st.columns([1, 3])
    steps = int(left.number_input("Steps", 1, 1_000_000, plan.training.steps, key="runs_steps"))
    right.caption(
        f"Current plan: {plan.model.source}, {plan.strategy} dp{plan.dp_degree}×pp{plan.pp_degree} "
        f"on {len(plan.ranks)} ranks (from the Plan or Export page)."
    )
    if st.button("Launch the current plan", key="runs_launch"):
        runs_dir.mkdir(parents=True, exist_ok=True)
        path = runs_dir / f"plan-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(text)
        done = runtime_command(
            "run", str(path), "--detach", "--steps", str(steps), "--runs-dir", str(runs_dir)
        )
        if done.returncode == 0:
            st.session_state["runs_selected"] = done.stdout.strip()
            st.success(f"Started run {done.stdout.strip()}")
        else:
            st.error(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "the launch failed")

rows = launch.list_runs(runs_dir) if (runs_dir / store.DB_NAME).exists() else []
if not rows:
    st.info("No runs yet: launch the current plan above.")
    st.stop()
table = [
    {
        "run": r["run_id"],
        "state": r["state"],
        "step": f"{r['last_step']}/{r['steps']}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])) if r["started"] else "",
        "reason": r["reason"],
    }
    for r in reversed(rows)
]
st.dataframe(table, key="runs_table", hide_index=True)
ids = [r["run"] for r in table]
if st.session_state.get("runs_selected") not in ids:
    st.session_state["runs_selected"] = ids[0]
selected = st.selectbox("Run", ids, key="runs_selected")
row = next(r for r in rows if r["run_id"] == selected)
st.markdown(f"Run `{selected}` is **{row['state']}** at step {row['last_step']} of {row['steps']}.")
cols = st.columns(3)
if cols[0].button("Stop", key="runs_stop", disabled=row["state"] not in store.ACTIVE):
    try:
        launch.request_stop(runs_dir, selected)
        st.info(f"Asked run {selected} to stop: the ranks finish their step and save a checkpoint.")
    except RunError as exc:
        st.error(str(exc))
if cols[1].button("Resume", key="runs_resume", disabled=row["state"] in store.ACTIVE):
    done = runtime_command("resume", selected, "--detach", "--runs-dir", str(runs_dir))
    if done.returncode == 0:
        st.success(f"Resumed run {selected}")
    else:
        st.error(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "the resume failed")
cols[2].button("Refresh", key="runs_refresh")
