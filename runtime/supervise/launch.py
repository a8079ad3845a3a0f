"""Start, stop, resume and list runs: what `python -m runtime` does.

A run is prepared (plan and options checked, runs dir opened, folder and ``queued`` row
written) before anything starts, so bad input leaves nothing behind. Then the supervisor
(runtime.supervise.supervisor) runs it, in this process with a progress bar, or detached:
``--detach`` starts the supervisor as a new session whose parent exits at once (a double
fork), so the caller holds no child and no zombie is left; this is how the dashboard
launches runs. The run's lock (`RunOwner`) is taken before its state is checked and passes
to the detached supervisor, so two launchers never both start or resume one run.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from planner import limits
from planner.errors import PlanError
from planner.model_check import SKIPPED, check_against_model
from planner.plan import Plan, load_plan, plan_from_json
from runtime.parallel import checkpoint
from runtime.parallel.parallelize import check_levers
from runtime.parallel.tensor_parallel import check_tensor_parallel
from runtime.rank.control import pid_alive
from runtime.rank.model import model_config
from runtime.rank.task import plan_task
from runtime.supervise import store
from runtime.supervise.store import RunState
from runtime.supervise.supervisor import (
    EXIT_BAD_INPUT,
    ROOT,
    STOP_GRACE_S,
    RunError,
    RunOwner,
    kill_all,
    reconcile,
    signal_workers,
    supervise,
)

__all__ = ["RunError", "list_runs", "request_stop", "resume", "run", "stop"]


def check_start_options(steps: int | None, threads: int) -> None:
    """``--steps`` and ``--threads`` within their limits (planner.limits), or a `RunError`."""
    try:
        if steps is not None:
            limits.check_range(steps, "--steps", 1, limits.MAX_STEPS, "optimizer steps in all")
        limits.check_range(threads, "--threads", 1, limits.MAX_THREADS, "intra-op threads per rank")
    except limits.InputLimitError as exc:
        raise RunError(str(exc)) from None


def open_runs(runs_dir: Path, *, create: bool = True) -> sqlite3.Connection | None:
    """The runs database, or a `RunError` that says what is wrong with the runs dir.

    With ``create=False`` a runs dir that does not exist yet is not made (None: no runs).
    """
    if runs_dir.exists() and not runs_dir.is_dir():
        raise RunError(f"runs dir {runs_dir} is not a directory")
    if not create and not (runs_dir / store.DB_NAME).exists():
        return None
    try:
        return store.connect(runs_dir)
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RunError(f"runs dir {runs_dir}: cannot open its database ({why})") from None


def preflight(plan: Plan, *, check_model: bool = True, out: TextIO | None = None) -> None:
    """Refuse, before anything starts, a plan this machine cannot run (a `PlanError`).

    With ``check_model``, the plan is checked against a fresh trace of its model (blocks,
    order, digest, weights that fit: `planner.model_check`); a ``py:`` model is imported
    only with consent (`planner.capture.source`), before which nothing of it runs.
    """
    check_levers(plan)
    nodes = sorted({r.node for r in plan.ranks})
    if len(nodes) > 1:
        raise PlanError(
            f"ranks: the plan spans {len(nodes)} nodes; `runtime run` starts the ranks of one machine "
            "(`runtime command` prints the commands for several)"
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
    if check_model:
        check_against_model(plan)
    else:
        print(f"warning: --skip-model-check: {SKIPPED}", file=out or sys.stderr)
    # The model's config on the meta device (no memory), then its objective and data set.
    plan_task(plan, model_config(plan))
    check_tensor_parallel(plan)  # every split block's heads divide by the degree


def prepare(
    plan_path: Path, runs_dir: Path, steps: int | None, *, check_model: bool = True
) -> tuple[str, RunOwner]:
    """Check the plan and record a queued run, owned by this process; a `PlanError` or a
    `RunError` leaves nothing behind."""
    plan = load_plan(plan_path)
    preflight(plan, check_model=check_model)
    conn = open_runs(runs_dir)
    run_id = store.new_run_id()
    run_dir = runs_dir / run_id
    plan_json = plan.to_json()
    owner = None
    try:
        run_dir.mkdir(parents=True)
        owner = RunOwner.claim(run_dir, run_id)
        (run_dir / "plan.json").write_text(plan_json + "\n")
        store.create_run(
            conn,
            run_id=run_id,
            plan_json=plan_json,
            world_size=len(plan.ranks),
            steps=steps or plan.training.steps,
            run_dir=str(run_dir),
            supervisor_pid=os.getpid(),
        )
    except BaseException as exc:  # a full disk, a read-only folder, Ctrl-C: no half-made run
        if owner is not None:
            owner.release()
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, (OSError, sqlite3.Error)):
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RunError(f"runs dir {runs_dir}: cannot make the run there ({why})") from None
        raise
    return run_id, owner


def start(
    runs_dir: Path,
    run_id: str,
    *,
    detach: bool,
    threads: int,
    resume_from: Path | None,
    out: TextIO,
    owner: RunOwner,
) -> int:
    """Hand a prepared run to its supervisor: here, with a progress bar, or detached."""
    conn = store.connect(runs_dir)
    run = store.run_row(conn, run_id)
    plan = plan_from_json(run["plan_json"])
    what = f"resumed from step {checkpoint.step_of(resume_from)}" if resume_from else "started"
    print(
        f"run {run_id}: {what}, {plan.strategy} on {len(plan.ranks)} ranks, {run['steps']} steps, "
        f"logs in {run['run_dir']}",
        file=out,
    )
    if not detach:
        return supervise(runs_dir, run_id, threads=threads, resume_from=resume_from, out=out, owner=owner)
    try:
        pid = _start_detached(run, runs_dir, threads, resume_from, owner)
        # The owner's PID from now on (before this process exits, so `reconcile` never
        # sees the run without a live supervisor).
        owner.record(pid)
        store.update_run(conn, run_id, supervisor_pid=pid)
    finally:
        owner.release()  # this process's copy; the child's keeps the lock
    print(run_id, file=sys.stdout, flush=True)
    return 0


def _start_detached(
    run: dict, runs_dir: Path, threads: int, resume_from: Path | None, owner: RunOwner
) -> int:
    """Start ``python -m runtime supervise`` for the run as a new session; its PID."""
    cmd = [
        sys.executable,
        "-m",
        "runtime",
        "supervise",
        run["run_id"],
        "--runs-dir",
        str(runs_dir),
        "--threads",
        str(threads),
        "--owner-fd",
        str(owner.fd),
    ]
    if resume_from:
        cmd += ["--resume-from", str(resume_from)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(Path(run["run_dir"]) / "supervisor.log", "ab") as log:
        # A new session, no terminal; this process exits next, so the supervisor is
        # re-parented to init and nobody has to wait() for it. It inherits the run's
        # lock: the run is never without an owner.
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            pass_fds=(owner.fd,),
        )
    return child.pid


def run(
    plan_path: Path,
    *,
    runs_dir: Path,
    steps: int | None = None,
    threads: int = 1,
    detach: bool = False,
    out: TextIO | None = None,
    check_model: bool = True,
) -> int:
    out = out or sys.stderr
    try:
        check_start_options(steps, threads)
        run_id, owner = prepare(plan_path, runs_dir, steps, check_model=check_model)
    except (PlanError, RunError) as exc:
        print(f"error: {exc}", file=out)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C before the supervisor took over: nothing was made
        print("error: interrupted before the run started", file=out)
        return EXIT_BAD_INPUT
    return start(runs_dir, run_id, detach=detach, threads=threads, resume_from=None, out=out, owner=owner)


def resume(
    runs_dir: Path,
    run_id: str,
    *,
    plan_path: Path | None = None,
    steps: int | None = None,
    threads: int = 1,
    detach: bool = False,
    out: TextIO | None = None,
    check_model: bool = True,
) -> int:
    """Continue a run from its last complete checkpoint (a stopped or failed one, or a
    finished one for more steps), under the same plan or another plan of the same model:
    the checkpoint is resharded by FQN."""
    out = out or sys.stderr
    check_start_options(steps, threads)
    conn = open_runs(runs_dir, create=False)
    if conn is None:
        raise RunError(f"no run {run_id!r} in {runs_dir} (it has no runs database)")
    run = _run_or_error(conn, run_id)
    # Owned before its state is read: a second `resume` of the run waits for nobody, it is
    # refused here, with the owner's PID.
    owner = RunOwner.claim(Path(run["run_dir"]), run_id)
    try:
        reconcile(conn)
        run = _run_or_error(conn, run_id)
        total, latest, plan = _resumable(run, plan_path, steps, check_model)
        plan_json = plan.to_json()
        (Path(run["run_dir"]) / "plan.json").write_text(plan_json + "\n")
        store.drop_metrics_after(conn, run_id, latest.step)
        store.update_run(
            conn,
            run_id,
            state=RunState.QUEUED,
            reason="",
            plan_json=plan_json,
            world_size=len(plan.ranks),
            steps=total,
            stop_requested=None,
            ended=None,
            supervisor_pid=os.getpid(),
        )
    except BaseException:
        owner.release()
        raise
    return start(
        runs_dir, run_id, detach=detach, threads=threads, resume_from=latest.path, out=out, owner=owner
    )


def _resumable(
    run: dict, plan_path: Path | None, steps: int | None, check_model: bool
) -> tuple[int, checkpoint.Checkpoint, Plan]:
    """The steps in all, the checkpoint and the plan a run resumes with, or a `RunError`."""
    run_id = run["run_id"]
    if run["state"] in store.ACTIVE:
        raise RunError(f"run {run_id} is {run['state']}; stop it before resuming it")
    latest = checkpoint.latest_checkpoint(Path(run["run_dir"]))
    if latest is None:
        raise RunError(f"run {run_id} has no complete checkpoint to resume from")
    old = plan_from_json(run["plan_json"])
    plan = load_plan(plan_path) if plan_path else old
    if plan.model.graph_digest != old.model.graph_digest:
        raise RunError(
            f"the new plan is for another model (graph digest {plan.model.graph_digest[:12]}, "
            f"the run's is {old.model.graph_digest[:12]}); a checkpoint only continues the same model"
        )
    preflight(plan, check_model=check_model)
    total = steps or run["steps"]
    if latest.step >= total:
        raise RunError(
            f"run {run_id}'s checkpoint is at step {latest.step}, already at or past {total} steps"
        )
    return total, latest, plan


def request_stop(runs_dir: Path, run_id: str) -> dict:
    """Ask an active run to stop and return at once; its supervisor does the rest."""
    conn = open_runs(runs_dir, create=False)
    if conn is None:
        raise RunError(f"no run {run_id!r} in {runs_dir} (it has no runs database)")
    reconcile(conn)
    run = _run_or_error(conn, run_id)
    if run["state"] in store.ACTIVE:
        store.update_run(conn, run_id, stop_requested=time.time())
        signal_workers(conn, run_id, signal.SIGUSR1)
    return store.run_row(conn, run_id)


def stop(runs_dir: Path, run_id: str, *, wait_s: float = 60.0, out: TextIO | None = None) -> str:
    """Ask a run to stop (the ranks finish the step and checkpoint); wait for its final state."""
    out = out or sys.stderr
    run = request_stop(runs_dir, run_id)
    if run["state"] not in store.ACTIVE:
        print(f"run {run_id}: {run['state']}" + (f" ({run['reason']})" if run["reason"] else ""), file=out)
        return run["state"]
    conn = store.connect(runs_dir)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        run = store.run_row(conn, run_id)
        if run["state"] in store.TERMINAL:
            break
        if run["supervisor_pid"] and not pid_alive(run["supervisor_pid"]):
            # Nobody supervises it: give the ranks the grace period, then clean up here.
            time.sleep(STOP_GRACE_S)
            kill_all([run["torchrun_pid"], *store.worker_pids(conn, run_id).values()])
            store.finish_once(conn, run_id, RunState.STOPPED, "stopped; its supervisor was gone")
            break
        time.sleep(0.25)
    run = store.run_row(conn, run_id)
    print(f"run {run_id}: {run['state']}" + (f" ({run['reason']})" if run["reason"] else ""), file=out)
    return run["state"]


def list_runs(runs_dir: Path) -> list[dict]:
    """Every run with its state (dead supervisors found and their runs failed first)."""
    conn = open_runs(runs_dir, create=False)
    if conn is None:
        return []
    reconcile(conn)
    rows = store.runs(conn)
    for row in rows:
        row["last_step"] = store.last_step(conn, row["run_id"])
    return rows


def _run_or_error(conn, run_id: str) -> dict:
    run = store.run_row(conn, run_id)
    if run is None:
        raise RunError(f"no run {run_id!r} in this runs dir")
    return run
