"""Train a plan for real with the runtime, as a user would: what the benches share."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from planner.plan import Plan, save_plan

ROOT = Path(__file__).resolve().parents[1]


def run_plan(
    plan: Plan, steps: int, runs_dir: Path, work: Path, *, timeout: float = 1800, one_thread: bool = True
) -> tuple[str, str]:
    """``python -m runtime run`` of ``plan`` (one thread per rank unless told otherwise);
    returns the run id and what the command wrote to stderr, or exits naming the failure."""
    path = work / f"plan-{time.monotonic_ns()}.json"
    save_plan(plan, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "runtime",
        "run",
        str(path),
        "--steps",
        str(steps),
        "--runs-dir",
        str(runs_dir),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    match = re.search(r"run (\S+): finished", done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return match.group(1), done.stderr
