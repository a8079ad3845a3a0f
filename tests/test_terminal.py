"""Signals from a terminal or to the launcher's process group mean stop: a checkpoint,
state `stopped`, exit 3; a second Ctrl-C kills. Nothing is left running either way."""

from __future__ import annotations

import os
import signal
import time

import pytest

from runtime.parallel import checkpoint
from runtime.supervise import store
from tests.runs import zoo_plan
from tests.supervision import Terminal, all_gone, run_command, run_pids, start_run, the_run, wait_for

pytestmark = pytest.mark.slow


def endless_mlp():
    # Milliseconds a step: a stop is agreed at the next metrics flush, about a second on.
    return zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, training={"steps": 100_000})


def slow_gpt():
    # About 0.1 s a step, and a checkpoint of ~15 MB: a stop takes a while to complete, so
    # a second Ctrl-C right after the first lands before the ranks are done.
    return zoo_plan(
        "gpt",
        {"size": "1m"},
        ranks=2,
        strategy="dp",
        global_batch=16,
        dp_degree=2,
        training={"steps": 100_000},
    )


def training(runs) -> list[int]:
    """The PIDs of torchrun and every worker, once metrics are flowing."""
    pids = wait_for(lambda: (runs / store.DB_NAME).exists() and run_pids(runs), 90, "the workers")
    wait_for(lambda: store.last_step(store.connect(runs), the_run(runs)["run_id"]), 60, "metrics")
    return pids


def assert_stopped_with_a_checkpoint(runs, pids):
    wait_for(lambda: all_gone(pids), 10, "every process of the run to exit")
    row = the_run(runs)
    assert row["state"] == "stopped", (row["state"], row["reason"])
    assert row["reason"].startswith("stopped after step") and "checkpoint saved" in row["reason"]
    saved = checkpoint.latest_checkpoint(runs / row["run_id"])
    assert saved is not None and f"after step {saved.step}," in row["reason"]
    return row


def test_ctrl_c_in_a_terminal_stops_the_run_with_a_checkpoint(tmp_path):
    term = Terminal(run_command(endless_mlp(), tmp_path))
    runs = tmp_path / "runs"
    pids = training(runs)
    assert term.foreground_group() == term.proc.pid  # the launcher is the terminal's job
    term.type(b"\x03")
    assert term.wait(timeout=60) == 3
    row = assert_stopped_with_a_checkpoint(runs, pids)
    assert f"run {row['run_id']}: stopped after step" in term.text
    assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text


def test_a_second_ctrl_c_kills_at_once(tmp_path):
    term = Terminal(run_command(slow_gpt(), tmp_path))
    runs = tmp_path / "runs"
    pids = training(runs)
    term.type(b"\x03")
    time.sleep(0.1)  # the first is being honoured: the ranks are still before their flush
    term.type(b"\x03")
    assert term.wait(timeout=30) == 3
    wait_for(lambda: all_gone(pids), 10, "every process of the run to exit")
    row = the_run(runs)
    assert row["state"] == "stopped" and row["reason"] == "stop requested twice; killed"
    assert f"run {row['run_id']}: stopped (killed)" in term.text
    assert "Traceback" not in term.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_stops_the_run(tmp_path, signum):
    launcher = start_run(endless_mlp(), tmp_path, start_new_session=True)
    runs = tmp_path / "runs"
    pids = training(runs)
    os.killpg(launcher.pid, signum)  # what `kill -TERM -PGID` or a job-control shell does
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 3, err
    row = assert_stopped_with_a_checkpoint(runs, pids)
    assert f"run {row['run_id']}: stopped after step" in err and "Traceback" not in err
