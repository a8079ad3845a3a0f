"""The Runs page launches a real detached run, lists it, and stops it; the run outlives the tab."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from runtime import store

pytestmark = pytest.mark.slow
APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_runs_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/runs.py")
    return at.run()


def state_shown(at, run_id: str) -> str:
    table = at.dataframe[0].value
    return table.loc[table["run"] == run_id, "state"].iloc[0]


def test_launch_list_and_stop_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    at = open_runs_page()
    assert not at.exception and "No runs yet" in at.info[0].value
    at.number_input(key="runs_steps").set_value(100_000)
    at.button(key="runs_launch").click().run()
    assert not at.exception, at.exception
    assert at.success, [e.value for e in at.error]
    run_id = at.success[0].value.split()[-1]

    # A fresh tab (a new session) finds the run the first one started.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        fresh = open_runs_page()
        if state_shown(fresh, run_id) == "running" and store.last_step(
            store.connect(tmp_path / "runs"), run_id
        ):
            break
        time.sleep(1)
    assert state_shown(fresh, run_id) == "running"
    fresh.selectbox(key="runs_selected").set_value(run_id)
    fresh.button(key="runs_stop").click().run()
    assert not fresh.exception
    conn = store.connect(tmp_path / "runs")
    deadline = time.monotonic() + 60
    while store.run_row(conn, run_id)["state"] in store.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state_shown(open_runs_page(), run_id) == "stopped"


def test_monitor_page_draws_a_finished_run_and_reads_only_new_rows(tmp_path, monkeypatch):
    import base64
    import json

    import numpy as np

    from planner.cost import price
    from planner.plan import save_plan
    from tests.runs import graph_of, zoo_plan
    from tests.supervision import runtime_cli

    plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2)
    plan = plan.model_copy(update={"predicted": price(graph_of("mlp"), plan.cluster, plan).to_predicted()})
    save_plan(plan, tmp_path / "plan.json")
    runs = tmp_path / "runs"
    assert runtime_cli("run", tmp_path / "plan.json", "--steps", 6, "--runs-dir", runs).returncode == 0
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(runs))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/monitor.py")
    at.run()
    assert not at.exception
    labels = {m.label for m in at.metric}
    assert {"Step time (measured, median)", "Step time (predicted)", "Bubble (measured)"} <= labels
    loss = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if '"Loss"' in c.proto.spec)
    x = loss["data"][0]["x"]
    x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]).tolist() if isinstance(x, dict) else x
    assert x == [1, 2, 3, 4, 5, 6]
    run_id = store.runs(store.connect(runs))[0]["run_id"]
    cursor = at.session_state[f"monitor_data_{run_id}"]["cursor"]
    assert cursor == store.read_metrics(store.connect(runs), run_id)[1]  # everything read once
    at.run()
    assert at.session_state[f"monitor_data_{run_id}"]["cursor"] == cursor  # nothing new, nothing re-read

    # The comparison stored at the end of the run, next to its predictions.
    from runtime import compare

    def step_row(at):
        table = next(d.value for d in at.dataframe if "figure" in d.value.columns)
        return table[table["figure"] == "step_time_s"].iloc[0]

    stored = {c.name: c for c in compare.stored(store.connect(runs), run_id)[0] if c.rank == -1}
    assert step_row(at)["measured"] == f"{stored['step_time_s'].measured * 1e3:,.2f} ms"
    assert step_row(at)["datasheet"] == f"{stored['step_time_s'].datasheet * 1e3:,.2f} ms"
    assert any("stored at the end of the run" in c.value for c in at.caption)
    # Without it (a run still going), the page compares the recent steps itself: the same
    # steps after the warm-up here, so the same figures.
    with store.write(store.connect(runs)) as conn:
        conn.execute("DELETE FROM comparisons")
    live = AppTest.from_file(APP, default_timeout=300)
    live.switch_page("pages/monitor.py")
    live.run()
    assert not live.exception
    assert any("live: the last" in c.value for c in live.caption)
    assert step_row(live)["measured"] == step_row(at)["measured"]
