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
