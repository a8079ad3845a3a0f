"""The supervisor: owns a run from torchrun's start to the run's final state.

It hosts the run's rendezvous store on loopback, starts torchrun (argument list, no
shell) with its own PID in the workers' environment,
records every PID, redraws the progress bar, and decides the final state:
- torchrun exits 0 after the ranks agreed to stop: ``stopped`` (exit 3);
- torchrun exits 0 otherwise: ``finished`` (exit 0);
- anything else: ``failed`` (exit 1) with the first failing rank and why.
A stop request (``runtime stop``, SIGTERM or Ctrl-C here) reaches the workers as SIGUSR1:
they finish the step, checkpoint, and exit. Whatever is still alive 5 s after the request
(plus two steps' time, for the step in flight) is killed. Processes are never left behind:
workers die with torchrun (PR_SET_PDEATHSIG) and with the supervisor (they watch its PID),
and `reconcile` fails and cleans up a run whose supervisor died.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from planner.plan import Plan, plan_from_json
from runtime import compare, store
from runtime.control import STORE_ENV, SUPERVISOR_ENV, die_with_parent, pid_alive
from runtime.progress import ProgressLine, render

ROOT = Path(__file__).resolve().parents[1]
EXIT_FINISHED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 3
POLL_S = 0.5
STOP_GRACE_S = 5.0  # after a stop request (plus two steps): ranks agree at a flush (~1 s) or checkpoint
SHUTDOWN_TIMEOUT_S = 3  # torchrun's wait between SIGTERM and SIGKILL (its default: 30 s)


def loopback_store():
    """A rendezvous store that listens on 127.0.0.1 only, and its port.

    torchrun's own store (``--standalone``) listens on every interface, without
    authentication (FACTS.md). TCPStore binds to whatever socket it is given, so the
    supervisor binds one to loopback, hosts the store on it, and points torchrun at it
    as a client (``is_host=false``); the workers reuse torchrun's store.
    """
    import socket

    from torch.distributed import TCPStore

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free one, two runs never collide
    sock.listen(128)
    port = sock.getsockname()[1]
    fd = sock.detach()  # the store owns the socket from here on and closes it
    store = TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, multi_tenant=True, master_listen_fd=fd
    )
    return store, port


def torchrun_command(run: dict, plan: Plan, threads: int, resume_from: Path | None, port: int) -> list[str]:
    run_dir = Path(run["run_dir"])
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", f"--nproc-per-node={len(plan.ranks)}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run['run_id']}",
        "--rdzv-conf=is_host=false",
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
        "--log-dir", str(run_dir / "logs"), "--redirects", "3",
        "-m", "runtime.worker",
        "--plan", str(run_dir / "plan.json"), "--run-id", run["run_id"],
        "--runs-dir", str(run_dir.parent), "--steps", str(run["steps"]), "--threads", str(threads),
        *(["--resume-from", str(resume_from)] if resume_from else []),
    ]  # fmt: skip


def kill_all(pids) -> None:
    for pid in pids:
        if pid and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def signal_workers(conn, run_id: str, signum: int) -> None:
    for pid in store.worker_pids(conn, run_id).values():
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def rank_failures(log_text: str) -> list[tuple[int, int, str]]:
    r"""(rank, exit code, what) of every failed rank in torchrun's failure report.

    >>> rank_failures("[0]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 7)  (SIGKILL)\n"
    ...               "  traceback : Signal 9 (SIGKILL) received by PID 7\n")
    [(1, -9, 'Signal 9 (SIGKILL) received by PID 7')]
    """
    found = []
    pattern = r"^\s*rank\s*:\s*(\d+).*?^\s*exitcode\s*:\s*(-?\d+).*?^\s*traceback\s*:\s*(.+?)$"
    for match in re.finditer(pattern, log_text, re.M | re.S):
        found.append((int(match.group(1)), int(match.group(2)), match.group(3).strip()))
    return found


def failure_reason(run_dir: Path, returncode: int) -> str:
    """Which rank failed and why.

    A rank killed by a signal other than torchrun's own SIGTERM is the cause: when one
    rank dies the others fail too, only because they lost their peer. Otherwise the rank
    torchrun saw fail first, with the error the rank wrote itself.
    """
    if returncode < 0:
        return f"torchrun was killed by {signal.Signals(-returncode).name}"
    log = run_dir / "torchrun.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    failures = rank_failures(text.partition("Root Cause (first observed failure)")[2] + "\n" + text)
    killed = [(rank, what) for rank, code, what in failures if code < 0 and code != -signal.SIGTERM]
    if killed:
        rank, what = killed[0]
        return f"rank {rank}: {what}"
    for rank, _, what in failures:  # the root cause first
        own = run_dir / f"error-rank{rank}.txt"
        return own.read_text().splitlines()[0] if own.exists() else f"rank {rank}: {what}"
    errors = sorted(run_dir.glob("error-rank*.txt"), key=lambda p: p.stat().st_mtime)
    if errors:
        return errors[0].read_text().splitlines()[0]
    tail = [line for line in text.splitlines() if line.strip()][-3:]
    return f"torchrun exited with code {returncode}" + (": " + " | ".join(tail) if tail else "")


def reconcile(conn) -> None:
    """Fail (and clean up after) every active run whose supervisor is gone."""
    for run in store.runs(conn):
        pid = run["supervisor_pid"]
        if run["state"] not in store.ACTIVE or not pid or pid_alive(pid):
            continue
        kill_all([run["torchrun_pid"], *store.worker_pids(conn, run["run_id"]).values()])
        store.finish_once(conn, run["run_id"], "failed", f"supervisor (pid {pid}) died")


def supervise(
    runs_dir: Path, run_id: str, *, threads: int = 1, resume_from: Path | None = None, out=None
) -> int:
    """Run torchrun for an already prepared (queued) run and return the exit code."""
    out = out or sys.stderr
    conn = store.connect(runs_dir)
    run = store.run_row(conn, run_id)
    plan = plan_from_json(run["plan_json"])
    run_dir = Path(run["run_dir"])
    store.clear_workers(conn, run_id)
    rendezvous, port = loopback_store()  # kept alive until torchrun has exited
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        SUPERVISOR_ENV: str(os.getpid()),
        # Nothing of the run listens beyond loopback: the workers meet on the supervisor's
        # store, torchrun makes no store of its own for them, and the collectives' own
        # sockets are on loopback (every rank is on this machine).
        STORE_ENV: f"127.0.0.1:{port}",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    stop_now = {"asked": False}

    def ask_stop(signum, frame) -> None:
        if stop_now["asked"]:  # a second Ctrl-C: no more grace
            raise KeyboardInterrupt
        stop_now["asked"] = True

    previous = {s: signal.signal(s, ask_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open(run_dir / "torchrun.log", "ab") as log:
            # torchrun dies with the supervisor (and its workers with it); the supervisor
            # has no threads, so a preexec function is safe here.
            proc = subprocess.Popen(
                torchrun_command(run, plan, threads, resume_from, port), stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=ROOT, preexec_fn=die_with_parent,
            )  # fmt: skip
        store.update_run(
            conn,
            run_id,
            state="running",
            started=time.time(),
            supervisor_pid=os.getpid(),
            torchrun_pid=proc.pid,
        )
        try:
            ending = _follow(conn, run, plan, proc, stop_now, ProgressLine(run["steps"], out))
        except KeyboardInterrupt:
            ending = "killed to stop"
            kill_all([proc.pid, *store.worker_pids(conn, run_id).values()])
            proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        del rendezvous
    kill_all(store.worker_pids(conn, run_id).values())  # none should be left; make sure
    marker = run_dir / "stopped.json"
    if proc.returncode == 0 and marker.exists():
        step = json.loads(marker.read_text())["step"]
        marker.unlink()
        code, state, reason = EXIT_STOPPED, "stopped", f"stopped after step {step}, checkpoint saved"
        said = f"stopped after step {step}"
    elif ending == "killed to stop":
        code, state, reason = EXIT_STOPPED, "stopped", "stop requested; killed after the grace period"
        said = "stopped (killed)"
    elif proc.returncode == 0:
        code, state, reason, said = EXIT_FINISHED, "finished", "", "finished"
    else:
        # Torn down by us after a rank died: the rank's failure is the reason, not our SIGKILL.
        reason = failure_reason(run_dir, 1 if ending == "torn down" else proc.returncode)
        code, state, said = EXIT_FAILED, "failed", f"failed: {reason}"
    store.finish_once(conn, run_id, state, reason)
    print(f"run {run_id}: {said}", file=out)
    compare.record_after_run(conn, run_id, runs_dir, out)
    return code


def _follow(conn, run: dict, plan: Plan, proc, stop_now: dict, bar: ProgressLine) -> str:
    """Poll until torchrun exits, passing stop requests on. Returns how the run ended:
    "exited" (torchrun's own exit), "killed to stop" (past the stop grace period), or
    "torn down" (a rank was gone and torchrun did not end the others in time: a rank
    stopped with SIGSTOP ignores torchrun's SIGTERM, and torchrun then waited for ever)."""
    run_id, steps = run["run_id"], run["steps"]
    lm = plan.model.source == "gpt" or plan.model.source.startswith("hf:")
    unit, rate_name = ("tokens/s", "tokens_per_s") if lm else ("samples/s", "samples_per_s")
    after, latest, first = 0, {}, None
    began = time.time()  # a resumed run has older rows: they are shown, not used for the ETA
    deadline = teardown = None
    while True:
        done = proc.poll() is not None
        rows, after = store.read_metrics(
            conn, run_id, after_rowid=after, names=("loss", rate_name, "step_time_s")
        )
        for m in rows:
            if m.rank == store.STEP_RANK:
                latest[m.name] = m
                if m.time >= began:
                    first = first or (m.step, m.time)
        if "loss" in latest:
            step = latest["loss"].step
            eta = None
            if first and step > first[0]:
                eta = (latest["loss"].time - first[1]) / (step - first[0]) * (steps - step)
            rate = latest[rate_name].value if rate_name in latest else None
            bar.update(
                render(step, steps, loss=latest["loss"].value, rate=rate, unit=unit, eta_s=eta), final=done
            )
        if done:
            return "exited"
        requested = store.run_row(conn, run_id)["stop_requested"]
        if deadline is None and (stop_now["asked"] or requested):
            if not requested:
                store.update_run(conn, run_id, stop_requested=time.time())
            step_time = latest["step_time_s"].value if "step_time_s" in latest else 0.0
            deadline = time.time() + STOP_GRACE_S + 2 * step_time
        if deadline is not None:
            # Again at every poll: a worker that reported its PID late gets it too.
            signal_workers(conn, run_id, signal.SIGUSR1)
        if deadline is not None and time.time() > deadline:
            kill_all([proc.pid, *store.worker_pids(conn, run_id).values()])
            proc.wait()
            return "killed to stop"
        workers = store.worker_pids(conn, run_id)
        if teardown is None and deadline is None and any(not pid_alive(p) for p in workers.values()):
            teardown = time.time() + SHUTDOWN_TIMEOUT_S + 2  # torchrun's own shutdown first
        if teardown is not None and time.time() > teardown:
            kill_all([proc.pid, *workers.values()])
            proc.wait()
            return "torn down"
        time.sleep(POLL_S)
