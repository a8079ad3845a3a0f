"""`python -m runtime run`: check a plan, start its ranks with torchrun, follow the run.

torchrun ``--standalone`` rendezvouses on ``localhost:0``, so the OS picks a free port and
two runs never collide. Workers' output goes to ``<run-dir>/logs``; torchrun's own to
``<run-dir>/torchrun.log``. The launcher reads rank 0's metrics back from the runs
database to draw the progress bar, and records the final state: finished, or failed with
the rank and the error that ended it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from planner.errors import PlanError
from planner.plan import Plan, load_plan
from runtime import store
from runtime.model import build_full_model
from runtime.progress import ProgressLine, render
from runtime.task import plan_task

ROOT = Path(__file__).resolve().parents[1]
EXIT_FINISHED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 3
POLL_S = 0.5


def preflight(plan: Plan) -> None:
    """Refuse, before anything starts, a plan this machine cannot run (a `PlanError`)."""
    nodes = sorted({r.node for r in plan.ranks})
    if len(nodes) > 1:
        raise PlanError(
            f"ranks: the plan spans {len(nodes)} nodes; `runtime run` starts the ranks of one machine"
        )
    gpus = [r.rank for r in plan.ranks if plan.cluster.device(r.device).kind != "cpu"]
    if gpus and len(gpus) < len(plan.ranks):
        raise PlanError("ranks: the plan mixes CPU and GPU ranks; one run uses one backend (gloo or nccl)")
    if gpus and not torch.cuda.is_available():
        raise PlanError(
            f"ranks: rank {gpus[0]} is placed on a GPU, and this machine has no CUDA; plan for cpu:N"
        )
    if len(gpus) > torch.cuda.device_count():
        raise PlanError(
            f"ranks: {len(gpus)} GPU ranks, but this machine has {torch.cuda.device_count()} GPUs"
        )
    # The model's config on the meta device (no memory), then its objective and data set.
    plan_task(plan, build_full_model(plan, "meta").config)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def torchrun_command(
    plan_path: Path, run_id: str, runs_dir: Path, nproc: int, steps: int, threads: int, logs: Path
):
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc-per-node={nproc}",
        "--log-dir", str(logs), "--redirects", "3",
        "-m", "runtime.worker",
        "--plan", str(plan_path), "--run-id", run_id, "--runs-dir", str(runs_dir),
        "--steps", str(steps), "--threads", str(threads),
    ]  # fmt: skip


def root_cause(log_text: str) -> tuple[int, str] | None:
    """torchrun's "Root Cause (first observed failure)": the rank and what ended it.

    >>> root_cause("Root Cause (first observed failure):\\n[0]:\\n  rank      : 1 (local_rank: 1)\\n"
    ...            "  traceback : Signal 9 (SIGKILL) received by PID 7\\n")
    (1, 'Signal 9 (SIGKILL) received by PID 7')
    """
    _, found, section = log_text.partition("Root Cause (first observed failure)")
    if not found:
        return None
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", section, re.M)
    what = re.search(r"^\s*traceback\s*:\s*(.+)$", section, re.M)
    if rank is None:
        return None
    return int(rank.group(1)), what.group(1).strip() if what else "exited"


def failure_reason(run_dir: Path, returncode: int) -> str:
    """Which rank failed first and why: its own error file, else torchrun's root cause."""
    log = run_dir / "torchrun.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    cause = root_cause(text)
    errors = sorted(run_dir.glob("error-rank*.txt"), key=lambda p: p.stat().st_mtime)
    if cause is not None:
        rank, what = cause
        own = run_dir / f"error-rank{rank}.txt"
        return own.read_text().splitlines()[0] if own.exists() else f"rank {rank}: {what}"
    if errors:  # the first rank to write one; the others usually only lost their peer
        return errors[0].read_text().splitlines()[0]
    tail = [line for line in text.splitlines() if line.strip()][-3:]
    return f"torchrun exited with code {returncode}" + (": " + " | ".join(tail) if tail else "")


def run(
    plan_path: Path, *, runs_dir: Path, steps: int | None = None, threads: int = 1, out: TextIO | None = None
) -> int:
    out = out or sys.stderr
    try:
        plan = load_plan(plan_path)
        preflight(plan)
    except PlanError as exc:
        print(f"error: {exc}", file=out)
        return EXIT_BAD_INPUT
    steps = steps or plan.training.steps
    run_id = new_run_id()
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    plan_json = plan.to_json()
    (run_dir / "plan.json").write_text(plan_json + "\n")
    conn = store.connect(runs_dir)
    store.create_run(
        conn, run_id=run_id, plan_json=plan_json, plan_sha256=hashlib.sha256(plan_json.encode()).hexdigest(),
        world_size=len(plan.ranks), steps=steps, run_dir=str(run_dir),
    )  # fmt: skip
    print(
        f"run {run_id}: {plan.strategy} on {len(plan.ranks)} ranks, {steps} steps, logs in {run_dir}",
        file=out,
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = torchrun_command(
        run_dir / "plan.json", run_id, runs_dir, len(plan.ranks), steps, threads, run_dir / "logs"
    )
    with open(run_dir / "torchrun.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        follow(conn, run_id, proc, steps, plan, ProgressLine(steps, out))
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        store.set_state(conn, run_id, "stopped", "interrupted from the keyboard")
        print(f"\nrun {run_id}: stopped", file=out)
        return EXIT_STOPPED
    if proc.returncode == 0:
        store.set_state(conn, run_id, "finished")
        print(f"run {run_id}: finished", file=out)
        return EXIT_FINISHED
    reason = failure_reason(run_dir, proc.returncode)
    store.set_state(conn, run_id, "failed", reason)
    print(f"run {run_id}: failed: {reason}", file=out)
    return EXIT_FAILED


def follow(conn, run_id: str, proc: subprocess.Popen, steps: int, plan: Plan, bar: ProgressLine) -> None:
    """Redraw the progress bar from the database until torchrun exits."""
    unit = "tokens/s" if plan.model.source == "gpt" or plan.model.source.startswith("hf:") else "samples/s"
    rate_name = "tokens_per_s" if unit == "tokens/s" else "samples_per_s"
    after, latest, first_time = 0, {}, None
    while True:
        done = proc.poll() is not None
        rows, after = store.read_metrics(conn, run_id, after_rowid=after, names=("loss", rate_name))
        for m in rows:
            if m.rank == store.STEP_RANK:
                latest[m.name] = m
                if first_time is None:
                    first_time = (m.step, m.time)
        if "loss" in latest:
            step = latest["loss"].step
            eta = None
            if first_time and step > first_time[0]:
                per_step = (latest["loss"].time - first_time[1]) / (step - first_time[0])
                eta = per_step * (steps - step)
            rate = latest[rate_name].value if rate_name in latest else None
            bar.update(
                render(step, steps, loss=latest["loss"].value, rate=rate, unit=unit, eta_s=eta), final=done
            )
        if done:
            return
        time.sleep(POLL_S)
