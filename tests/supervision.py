"""Helpers for supervision tests: start `python -m runtime ...`, watch processes and runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from planner.plan import Plan, save_plan
from runtime import store
from runtime.control import pid_alive
from tests.runs import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def runtime_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "runtime", *map(str, args)], capture_output=True, text=True, env=ENV,
        timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def start_run(plan: Plan, tmp: Path, *args) -> subprocess.Popen:
    """`python -m runtime run` in the foreground (the supervisor is this child)."""
    path = tmp / f"plan-{time.monotonic_ns()}.json"
    save_plan(plan, path)
    cmd = [
        sys.executable,
        "-m",
        "runtime",
        "run",
        str(path),
        "--runs-dir",
        str(tmp / "runs"),
        *map(str, args),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def wait_for(predicate, timeout: float, what: str, period: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def the_run(runs: Path) -> dict:
    conn = store.connect(runs)
    (row,) = store.runs(conn)
    return row


def run_pids(runs: Path) -> list[int]:
    """torchrun's and every worker's PID, once all workers have reported."""
    conn = store.connect(runs)
    (row,) = store.runs(conn)
    workers = store.worker_pids(conn, row["run_id"])
    if len(workers) < row["world_size"] or not row["torchrun_pid"]:
        return []
    return [row["torchrun_pid"], *workers.values()]


def all_gone(pids) -> bool:
    return not any(pid_alive(p) for p in pids)


def losses(runs: Path, run_id: str) -> list[float]:
    rows, _ = store.read_metrics(store.connect(runs), run_id, names=["loss"])
    by_step = {m.step: m.value for m in rows if m.rank == store.STEP_RANK}
    assert sorted(by_step) == list(range(1, len(by_step) + 1)), f"missing steps: {sorted(by_step)}"
    return [by_step[s] for s in sorted(by_step)]
