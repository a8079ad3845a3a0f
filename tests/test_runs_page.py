"""The Runs and Monitor pages through AppTest: a real detached run launched, listed and
stopped; and runs written straight into the runs database (rows, metrics, log files) for
the list's columns, the confirmation before a stop, the Monitor's header against its table,
other runs overlaid, and the latest attempt's logs."""

from __future__ import annotations

import base64
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import format
from runtime.supervise import store

pytestmark = pytest.mark.slow
APP = str(Path(__file__).resolve().parents[1] / "app.py")
STEPS = 30  # written per synthetic run; the live window is the last 20 of steps 3..30


def plain(text: str) -> str:
    """Markdown as the browser shows it (the pages escape what they quote)."""
    return text.replace("\\", "")


def open_page(page: str, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    for name, value in query.items():
        at.query_params[name] = value
    at.switch_page(page)
    return at.run()


def find_block(node, suffix: str):
    """The block a page drew with ``st.container(key=...)`` (its id ends with the key)."""
    if getattr(getattr(node, "proto", None), "id", "").endswith(suffix):
        return node
    for child in getattr(node, "children", {}).values():
        found = find_block(child, suffix)
        if found is not None:
            return found
    return None


def elements(node, kind: str) -> list:
    out = [node] if getattr(node, "type", None) == kind else []
    for child in getattr(node, "children", {}).values():
        out += elements(child, kind)
    return out


def row_cells(at, run_id: str) -> list[str]:
    """The text cells of a run's row in the Runs list, in column order."""
    block = find_block(at.main, f"-run-{run_id}")
    assert block is not None, f"run {run_id} is not listed"
    return [m.value for m in elements(block, "markdown")]


def state_shown(at, run_id: str) -> str:
    return row_cells(at, run_id)[1]


def spec(at, title: str) -> dict:
    return next(
        json.loads(c.proto.spec) for c in at.get("plotly_chart") if f'"text":"{title}' in c.proto.spec
    )


def values(array) -> list[float]:
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def fake_run(runs: Path, run_id: str, plan, *, state: str = "running", loss_scale: float = 1.0) -> Path:
    """A run row with STEPS steps of metrics, as a run's rank 0 would have written them."""
    conn = store.connect(runs)
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    store.create_run(
        conn,
        run_id=run_id,
        plan_json=plan.to_json(),
        world_size=len(plan.ranks),
        steps=100,
        run_dir=str(run_dir),
        state=state,
    )
    start = time.time() - 125
    if state in store.TERMINAL:
        store.update_run(conn, run_id, ended=start + 125)
    store.update_run(conn, run_id, started=start)
    rows = []
    for step in range(1, STEPS + 1):
        t = start + step
        step_time = 0.1 + 0.003 * step + (0.05 if step % 7 == 0 else 0.0)  # medians differ by window
        rows += [
            store.Metric(step, store.STEP_RANK, "loss", loss_scale * 3.0 / step, t),
            store.Metric(step, store.STEP_RANK, "step_time_s", step_time, t),
            store.Metric(step, store.STEP_RANK, "samples_per_s", 32 / step_time, t),
            store.Metric(step, store.STEP_RANK, "bubble_fraction", 0.15 + 0.004 * step, t),
        ]
        for rank in range(len(plan.ranks)):
            rows += [
                store.Metric(step, rank, "loss", loss_scale * 3.0 / step, t),
                store.Metric(step, rank, "step_time_s", step_time, t),
                store.Metric(step, rank, "compute_s", 0.6 * step_time, t),
                store.Metric(step, rank, "optimizer_s", 0.1 * step_time, t),
                store.Metric(step, rank, "comm_wait_s", 0.3 * step_time, t),
                store.Metric(step, rank, "cpu_percent", 80.0 + rank + step / 10, t),
                store.Metric(step, rank, "peak_memory_bytes", 300e6 + 1e6 * step, t),
                store.Metric(step, rank, "tensor_memory_bytes", 20e6 + rank, t),
            ]
    store.insert_metrics(conn, run_id, rows)
    return run_dir


@pytest.fixture(scope="module")
def plans():
    from tests.runs import zoo_plan

    dp = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2)
    pp = zoo_plan(
        "mlp", ranks=2, strategy="pp", global_batch=32, pp_degree=2, schedule="1f1b", micro_batches=4
    )
    return dp, pp


@pytest.fixture
def runs(tmp_path, monkeypatch, plans):
    runs = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(runs))
    dp, pp = plans
    fake_run(runs, "20260101-000000-aaaa", dp, state="stopped")
    fake_run(runs, "20260101-000100-bbbb", pp, state="running", loss_scale=2.0)
    return runs


OLD, NEW = "20260101-000000-aaaa", "20260101-000100-bbbb"


def test_runs_list_shows_each_runs_plan_progress_and_controls(runs, plans):
    with store.write(store.connect(runs)) as conn:  # a third run whose plan no longer loads
        conn.execute("UPDATE runs SET plan_json = '{\"schema_version\": 1' WHERE run_id = ?", (OLD,))
    fake_run(runs, "20260101-000200-cccc", plans[1], state="failed")
    at = open_page("views/runs.py")
    assert not at.exception, at.exception
    header = [m.value for m in elements(find_block(at.main, "-runs-header"), "markdown")]
    assert header == ["**Run: model and strategy**", "**State**", "**Step**", "**Duration**", "**Last loss**"]
    run, state, step, duration, loss = row_cells(at, NEW)
    assert run == f"**mlp**: pipeline × 2, 1F1B, 4 micro-batches  \n:gray[run {NEW}]"
    assert state == "running" and step == "30 / 100"
    assert duration.endswith(" s") and duration.startswith("2 min")
    assert loss == format.number(2.0 * 3.0 / STEPS) == "0.2"
    failed = row_cells(at, "20260101-000200-cccc")
    assert failed[1:] == ["failed", "30 / 100", "2 min 05 s", "0.1"]

    # A plan that does not load: one line in its row, nothing else breaks.
    name, *rest = row_cells(at, OLD)
    problem, run_line = name.split("  \n")
    assert plain(problem).startswith("plan unreadable:") and run_line == f":gray[run {OLD}]"
    assert rest[0] == "stopped"

    # Its Monitor view, and Stop only while it runs, Resume only once it stopped or failed.
    link = next(x for x in elements(find_block(at.main, f"-run-{NEW}"), "page_link"))
    assert link.proto.label == "Monitor" and link.proto.query_string == f"run={NEW}"
    assert not at.button(key=f"runs_stop_{NEW}").disabled and at.button(key=f"runs_resume_{NEW}").disabled
    assert at.button(key=f"runs_stop_{OLD}").disabled and not at.button(key=f"runs_resume_{OLD}").disabled


@pytest.mark.parametrize(("page", "where"), [("views/runs.py", "runs"), ("views/monitor.py", "monitor")])
def test_stop_asks_once_before_it_stops(runs, page, where):
    conn = store.connect(runs)
    at = open_page(page, run=NEW)
    at.button(key=f"{where}_stop_{NEW}").click().run()
    assert not at.exception
    assert any(f"Stop run {NEW}?" in w.value for w in at.warning)
    assert store.run_row(conn, NEW)["stop_requested"] is None  # asked, not yet stopped
    at.button(key=f"{where}_stop_no_{NEW}").click().run()
    assert not any("Stop run" in w.value for w in at.warning)
    assert store.run_row(conn, NEW)["stop_requested"] is None

    at.button(key=f"{where}_stop_{NEW}").click().run()
    at.button(key=f"{where}_stop_yes_{NEW}").click().run()
    assert not at.exception
    assert store.run_row(conn, NEW)["stop_requested"] is not None
    assert any(f"Asked run {NEW} to stop" in i.value for i in at.info)
    assert not any("Stop run" in w.value for w in at.warning)  # asked once, answered


def test_monitor_header_and_table_show_the_same_figures_of_the_same_steps(runs):
    at = open_page("views/monitor.py", run=NEW)
    assert not at.exception, at.exception
    assert at.selectbox(key="monitor_run").value == NEW
    metrics = {m.label: m.value for m in at.metric}
    table = at.dataframe[0].value
    whole = table[table["Rank"] == "whole step"].set_index("Figure")
    for label in ("Step time", "Bubble", "Throughput"):
        assert metrics[f"{label} (measured)"] == whole.loc[label, "Measured"]
        assert metrics[f"{label} (predicted)"] == whole.loc[label, "Datasheet"]  # no profile here
    # The window named on the page is the one measured: the last 20 steps after the warm-up.
    conn = store.connect(runs)
    step_times = {
        m.step: m.value
        for m in store.read_metrics(conn, NEW, names=["step_time_s"])[0]
        if m.rank == store.STEP_RANK
    }
    window = range(STEPS - 19, STEPS + 1)
    assert metrics["Step time (measured)"] == format.duration(
        statistics.median(step_times[s] for s in window)
    )
    assert metrics["Step time (measured)"] != format.duration(statistics.median(step_times.values()))
    assert any(f"medians of steps {STEPS - 19} to {STEPS}, the last 20" in c.value for c in at.caption)
    assert set(table.columns) == {"Figure", "Rank", "Datasheet", "Measured", "Error"}
    assert "Tensor memory" in set(table["Figure"]) and "rank 1" in set(table["Rank"])
    assert all(not isinstance(v, float) for v in table.to_numpy().ravel())  # text in its unit
    assert table.loc[(table["Figure"] == "Tensor memory") & (table["Rank"] == "rank 0"), "Measured"].iloc[
        0
    ] == (format.size(20e6))

    # Charts per rank over time, from the per-rank metrics.
    cpu = spec(at, "CPU per rank")
    assert [t["name"] for t in cpu["data"]] == ["rank 0", "rank 1"]
    assert values(cpu["data"][1]["y"])[-1] == pytest.approx(80.0 + 1 + STEPS / 10)
    memory = spec(at, "Memory per rank")
    assert memory["layout"]["yaxis"]["title"]["text"] == "Memory (MiB)"


def test_monitor_overlays_runs_smoothed_and_on_a_log_scale(runs):
    at = open_page("views/monitor.py", run=NEW)
    at.slider(key="monitor_smoothing").set_value(0.0).run()
    loss = spec(at, "Loss")
    assert len(loss["data"]) == 1 and values(loss["data"][0]["y"])[-1] == pytest.approx(6.0 / STEPS)
    at.slider(key="monitor_smoothing").set_value(0.9)
    at.multiselect(key="monitor_overlay").set_value([OLD])
    at.toggle(key="monitor_log").set_value(True).run()
    assert not at.exception, at.exception
    loss = spec(at, "Loss")
    names = [t["name"] for t in loss["data"]]
    assert names == [f"{NEW} (raw)", NEW, OLD]
    raw, smooth, other = (values(t["y"]) for t in loss["data"])
    assert raw[-1] == pytest.approx(6.0 / STEPS) and smooth[-1] > raw[-1]  # the average lags a falling loss
    assert other[0] == pytest.approx(3.0) and len(other) == STEPS
    assert loss["layout"]["yaxis"]["type"] == "log"


def test_monitor_shows_the_latest_attempts_logs_with_warnings_folded(runs):
    run_dir = runs / NEW
    first = run_dir / "logs" / f"{NEW}_aaaa"
    later = run_dir / "logs" / f"{NEW}_bbbb"
    for folder, attempt, text in (
        (first, 0, "from the first launch"),
        (later, 2, "attempt two"),
        (later, 10, "attempt ten\nwarn-free line"),
    ):
        for rank in (0, 1):
            (folder / f"attempt_{attempt}" / str(rank)).mkdir(parents=True, exist_ok=True)
            (folder / f"attempt_{attempt}" / str(rank) / "stderr.log").write_text(f"rank {rank}: {text}\n")
    os.utime(first, (time.time() - 100, time.time() - 100))
    warnings = [
        "/x/torch/a.py:12: UserWarning: something is slow",
        "  warnings.warn('something is slow')",
        "[W1201 14:38:59.123 ProcessGroupGloo.cpp:5] Warning: no IB",
    ]
    log = later / "attempt_10" / "0" / "stderr.log"
    log.write_text("\n".join(["step 1 done", *warnings, "step 2 done"]) + "\n")
    (later / "attempt_10" / "1" / "stderr.log").unlink()
    (later / "attempt_10" / "1" / "stderr.log").mkdir()  # a log that cannot be read

    at = open_page("views/monitor.py", run=NEW)
    assert not at.exception, at.exception
    shown = [c.value for c in at.code]
    folded = "[3 warning lines folded: /x/torch/a.py:12: UserWarning: something is slow]"
    assert shown[0] == f"step 1 done\n{folded}\nstep 2 done"
    assert shown[1] == "\n".join(warnings)  # the expander keeps them
    assert not any("first launch" in s or "attempt two" in s for s in shown)
    assert any("attempt 10" in c.value for c in at.caption)
    assert [plain(w.value) for w in at.warning if "rank 1" in w.value] == [
        "rank 1: log unreadable (Is a directory)"
    ]


def test_monitor_names_a_run_whose_plan_does_not_load_in_one_line(runs):
    with store.write(store.connect(runs)) as conn:
        conn.execute("UPDATE runs SET plan_json = 'not json' WHERE run_id = ?", (NEW,))
    at = open_page("views/monitor.py", run=NEW)
    assert not at.exception
    (error,) = at.error
    assert plain(error.value).startswith(f"Run {NEW}: plan unreadable:") and "\n" not in error.value
    assert "Traceback" not in error.value


def test_launch_list_and_stop_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    at = open_page("views/runs.py")
    assert not at.exception and "No runs yet" in at.info[0].value
    assert any(m.value.startswith("Plan to launch: **gpt**: ") for m in at.markdown)
    assert "Step time (predicted)" in {m.label for m in at.metric}
    at.number_input(key="runs_steps").set_value(100_000)
    at.button(key="runs_launch").click().run()
    assert not at.exception, at.exception
    assert at.success, [e.value for e in at.error]
    run_id = at.success[0].value.split()[-1]

    # A fresh tab (a new session) finds the run the first one started.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        fresh = open_page("views/runs.py")
        if state_shown(fresh, run_id) == "running" and store.last_step(
            store.connect(tmp_path / "runs"), run_id
        ):
            break
        time.sleep(1)
    assert state_shown(fresh, run_id) == "running"
    fresh.button(key=f"runs_stop_{run_id}").click().run()
    fresh.button(key=f"runs_stop_yes_{run_id}").click().run()
    assert not fresh.exception
    conn = store.connect(tmp_path / "runs")
    deadline = time.monotonic() + 60
    while store.run_row(conn, run_id)["state"] in store.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state_shown(open_page("views/runs.py"), run_id) == "stopped"


def test_monitor_page_draws_a_finished_run_and_reads_only_new_rows(tmp_path, monkeypatch):
    from planner.cost.price import price
    from planner.plan import save_plan
    from runtime.measure import compare
    from tests.runs import graph_of, zoo_plan
    from tests.supervision import runtime_cli

    plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2)
    plan = plan.model_copy(update={"predicted": price(graph_of("mlp"), plan.cluster, plan).to_predicted()})
    save_plan(plan, tmp_path / "plan.json")
    runs = tmp_path / "runs"
    assert runtime_cli("run", tmp_path / "plan.json", "--steps", 6, "--runs-dir", runs).returncode == 0
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(runs))
    at = open_page("views/monitor.py")
    assert not at.exception
    loss = spec(at, "Loss")
    assert values(loss["data"][0]["x"]) == [1, 2, 3, 4, 5, 6]
    run_id = store.runs(store.connect(runs))[0]["run_id"]
    cursor = at.session_state[f"monitor_data_{run_id}"]["cursor"]
    assert cursor == store.read_metrics(store.connect(runs), run_id)[1]  # everything read once
    at.run()
    assert at.session_state[f"monitor_data_{run_id}"]["cursor"] == cursor  # nothing new, nothing re-read

    # The comparison stored at the end of the run, in the header and the table alike.
    def step_row(at):
        table = at.dataframe[0].value
        return table[table["Figure"] == "Step time"].iloc[0]

    stored = {c.name: c for c in compare.stored(store.connect(runs), run_id)[0] if c.rank == -1}
    assert step_row(at)["Measured"] == format.duration(stored["step_time_s"].measured)
    assert step_row(at)["Datasheet"] == format.duration(stored["step_time_s"].datasheet)
    assert {m.label: m.value for m in at.metric}["Step time (measured)"] == step_row(at)["Measured"]
    assert any("stored when the run ended" in c.value for c in at.caption)
    assert any("steps 3 to 6" in c.value for c in at.caption)
    # Without it, the page compares the steps after the warm-up itself: the same figures.
    with store.write(store.connect(runs)) as conn:
        conn.execute("DELETE FROM comparisons")
    again = open_page("views/monitor.py")
    assert not again.exception
    assert any("the run has ended" in c.value for c in again.caption)
    assert step_row(again)["Measured"] == step_row(at)["Measured"]


def test_resume_without_a_checkpoint_says_why_in_one_line(runs):
    at = open_page("views/runs.py")
    at.button(key=f"runs_resume_{OLD}").click().run()
    assert not at.exception
    (error,) = at.error
    assert error.value == f"run {OLD}: run {OLD} has no complete checkpoint to resume from"
    assert store.run_row(store.connect(runs), OLD)["state"] == "stopped"  # nothing changed
