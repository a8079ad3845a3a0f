"""The supervisor: owns a run from torchrun's start to the run's final state.

It hosts the run's rendezvous store on loopback, starts torchrun (argument list, no
shell) with its own PID in the workers' environment,
records every PID, redraws the progress bar, and decides the final state:
- torchrun exits 0 after the ranks agreed to stop: ``stopped`` (exit 3);
- torchrun exits 0 otherwise: ``finished`` (exit 0);
- anything else: ``failed`` (exit 1) with the first real cause (`failure_reason`).
A stop request (``runtime stop``, or SIGTERM, SIGINT, SIGHUP here: Ctrl-C in a terminal)
reaches the workers as SIGUSR1: they finish the step, checkpoint, and exit. Whatever is
still alive 5 s after the request (plus two steps' time, for the step in flight) is
killed; a second Ctrl-C kills at once. torchrun runs in a session of its own, so a
terminal's signals reach the supervisor alone: torchrun would otherwise pass SIGINT on to
the workers, which would die in the middle of a step without a checkpoint.

One supervisor owns a run at a time (`RunOwner`, a lock held for its whole life), so two
``resume`` of one run cannot both train it. Processes are never left behind: workers die
with torchrun (PR_SET_PDEATHSIG) and with the supervisor (they watch its PID), and
`reconcile` fails and cleans up a run whose supervisor died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from planner.plan import Plan, plan_from_json
from runtime.measure import compare
from runtime.rank.control import STORE_ENV, SUPERVISOR_ENV, die_with_parent, pid_alive
from runtime.rank.task import Objective, objective_of
from runtime.supervise import store
from runtime.supervise.progress import ProgressLine, render
from runtime.supervise.store import RunState

ROOT = Path(__file__).resolve().parents[2]  # the repository (runtime/supervise/supervisor.py)
EXIT_FINISHED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 3
POLL_S = 0.5
STOP_GRACE_S = 5.0  # after a stop request (plus two steps): ranks agree at a flush (~1 s) or checkpoint
SHUTDOWN_TIMEOUT_S = 3  # torchrun's wait between SIGTERM and SIGKILL (its default: 30 s)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
OWNER_LOCK = "supervisor.lock"
STOPPED_MARKER = "stopped.json"  # rank 0's word that the ranks stopped and saved (runtime.rank.worker)
# Kept free on the runs dir's disk while a run lasts, and let go once its processes are
# gone: the run's final state (a few SQLite pages) is then written even when the ranks
# have filled the disk.
DISK_RESERVE = "disk-reserve"
DISK_RESERVE_BYTES = 2**20


class RunError(Exception):
    """A request about runs that cannot be done (unknown run, wrong state, owned); exit 2."""


class RunOwner:
    """The one supervisor of a run: an exclusive `flock` on ``<run-dir>/supervisor.lock``.

    Taken before a run is started or resumed and held until its supervisor exits; the
    kernel lets go of it when the process dies, however it dies. The file holds the
    owner's PID, to name it when someone else is refused. A detached supervisor inherits
    the lock (the same open file) from the launcher that took it, so there is no moment
    in which the run is free.
    """

    def __init__(self, fd: int, run_dir: Path) -> None:
        self.fd, self.run_dir = fd, run_dir

    @classmethod
    def claim(cls, run_dir: Path, run_id: str) -> RunOwner:
        try:
            fd = os.open(run_dir / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunError(f"run {run_id}: cannot take its lock in {run_dir} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = ""
            for _ in range(50):  # the owner writes its PID just after it takes the lock
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if owner:
                    break
                time.sleep(0.01)
            os.close(fd)
            owner = owner or "unknown"
            raise RunError(
                f"run {run_id} is already supervised by pid {owner}; wait for it or `runtime stop` it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        owner = cls(fd, run_dir)
        owner.record(os.getpid())
        return owner

    @classmethod
    def inherited(cls, fd: int, run_dir: Path, run_id: str) -> RunOwner:
        """The lock a launcher passed down as ``fd`` (locking it again is a no-op then)."""
        try:
            same = os.fstat(fd).st_ino == os.stat(run_dir / OWNER_LOCK).st_ino
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            same = False
        if not same:
            raise RunError(f"run {run_id}: file descriptor {fd} is not this run's lock")
        return cls(fd, run_dir)

    def record(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the last descriptor of the open file: the lock goes with it
            self.fd = -1


def loopback_store():
    """A rendezvous store that listens on 127.0.0.1 only, and its port.

    torchrun's own store (``--standalone``) listens on every interface, without
    authentication (docs/facts.md). TCPStore binds to whatever socket it is given, so the
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
        "-m", "runtime.rank.worker",
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


@dataclass(frozen=True)
class RankEnd:
    """What is known of how one rank ended."""

    rank: int
    exitcode: int | None = None  # in torchrun's report; negative: killed by that signal
    what: str = ""  # torchrun's line for it
    error: str | None = None  # the first line of the exception the rank wrote down itself
    error_ns: int | None = None  # when it wrote it (None: it wrote nothing)
    stuck: bool = False  # alive after torchrun's shutdown, so the supervisor killed it


TIMEOUT_WORDS = ("timed out", "timeout")
DISK_FULL_WORDS = (os.strerror(errno.ENOSPC), "[Errno 28]", "database or disk is full")


def root_cause(ends: list[RankEnd]) -> str | None:
    """The first real cause among the ranks' ends, as one line (None: nothing is known).

    A rank's own exception is its cause, whatever signal ended it afterwards (ranks
    segfault on the way out). Among ranks that wrote nothing, one killed by a signal other
    than torchrun's SIGTERM died first: the others failed only because they lost their
    peer. But when the first exception is a timeout, the rank did not lose its peer, it
    waited for it, and the ranks that raised nothing are the ones that stopped answering.

    >>> root_cause([RankEnd(0, 1, error="rank 0: RuntimeError: Connection closed by peer", error_ns=2),
    ...             RankEnd(1, -9, "Signal 9 (SIGKILL) received by PID 7")])
    'rank 1: Signal 9 (SIGKILL) received by PID 7'
    >>> root_cause([RankEnd(0, -11, "Signal 11 (SIGSEGV)", error="rank 0: ValueError: bad", error_ns=1),
    ...             RankEnd(1, -15, "Signal 15 (SIGTERM)")])
    'rank 0: ValueError: bad'
    >>> root_cause([RankEnd(0, 1, error="rank 0: RuntimeError: Timed out waiting 5000ms", error_ns=1),
    ...             RankEnd(1, stuck=True)])
    'rank 1 stopped answering: rank 0: RuntimeError: Timed out waiting 5000ms'
    """
    raised = sorted((e for e in ends if e.error_ns is not None), key=lambda e: e.error_ns)
    silent = [e for e in ends if e.error_ns is None]
    first = raised[0] if raised else None
    if first is not None and any(w in (first.error or "").lower() for w in TIMEOUT_WORDS):
        hung = [e.rank for e in silent if e.stuck] or [e.rank for e in silent if e.exitcode is not None]
        if hung:
            who = f"rank {hung[0]}" if len(hung) == 1 else "ranks " + ", ".join(map(str, hung))
            return f"{who} stopped answering: {first.error}"
    killed = [e for e in silent if (e.exitcode or 0) < 0 and e.exitcode != -signal.SIGTERM]
    if killed:
        return f"rank {killed[0].rank}: {killed[0].what}"
    if first is not None:
        empty = f"error-rank{first.rank}.txt is empty"
        return first.error or f"rank {first.rank}: failed, and its error could not be written ({empty})"
    reported = [e for e in ends if e.exitcode is not None]
    return f"rank {reported[0].rank}: {reported[0].what}" if reported else None


def first_line(path: Path) -> str | None:
    """The first line of text in ``path``; None when it is empty, partial or unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else None


def rank_ends(run_dir: Path, world_size: int, stuck: set[int] = frozenset()) -> list[RankEnd]:
    """Every rank's end, from torchrun's report, the ranks' error files and ``stuck``."""
    log = run_dir / "torchrun.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    # The root cause section first: its entry wins when a rank is reported twice.
    reported: dict[int, tuple[int, str]] = {}
    root = text.partition("Root Cause (first observed failure)")[2]
    for rank, code, what in rank_failures(root + "\n" + text):
        reported.setdefault(rank, (code, what))
    written = {}
    for path in run_dir.glob("error-rank*.txt"):
        match = re.fullmatch(r"error-rank(\d+)\.txt", path.name)
        with contextlib.suppress(OSError):
            if match:
                written[int(match.group(1))] = (first_line(path), path.stat().st_mtime_ns)
    ranks = set(range(world_size)) | set(reported) | set(written)
    return [
        RankEnd(
            rank,
            *reported.get(rank, (None, "")),
            *written.get(rank, (None, None)),
            stuck=rank in stuck,
        )
        for rank in sorted(ranks)
    ]


def disk_is_full(path: Path, reason: str) -> bool:
    """The reason says the disk is full, or nothing was said and the disk has no room."""
    if any(w in reason for w in DISK_FULL_WORDS):
        return True
    try:
        fs = os.statvfs(path)
    except OSError:
        return False
    unknown = "could not be written" in reason or reason.startswith("torchrun exited with code")
    return unknown and fs.f_bavail * fs.f_frsize < DISK_RESERVE_BYTES


def failure_reason(run_dir: Path, returncode: int, world_size: int = 0, stuck: set[int] = frozenset()) -> str:
    """Which rank failed and why, in one line (see `root_cause`); a full disk is said first."""
    if returncode < 0:
        reason = f"torchrun was killed by {signal.Signals(-returncode).name}"
    else:
        reason = root_cause(rank_ends(run_dir, world_size, stuck))
        if reason is None:
            text = ""
            with contextlib.suppress(OSError):
                text = (run_dir / "torchrun.log").read_text(errors="replace")
            tail = [line for line in text.splitlines() if line.strip()][-3:]
            reason = f"torchrun exited with code {returncode}" + (": " + " | ".join(tail) if tail else "")
    if disk_is_full(run_dir, reason):
        reason = f"out of disk space in {run_dir.parent} ({os.strerror(errno.ENOSPC)}): {reason}"
    return reason


def reconcile(conn) -> None:
    """Fail (and clean up after) every active run whose supervisor is gone."""
    for run in store.runs(conn):
        pid = run["supervisor_pid"]
        if run["state"] not in store.ACTIVE or not pid or pid_alive(pid):
            continue
        kill_all([run["torchrun_pid"], *store.worker_pids(conn, run["run_id"]).values()])
        store.finish_once(conn, run["run_id"], RunState.FAILED, f"supervisor (pid {pid}) died")
        with contextlib.suppress(OSError):
            (Path(run["run_dir"]) / DISK_RESERVE).unlink(missing_ok=True)


def supervise(
    runs_dir: Path,
    run_id: str,
    *,
    threads: int = 1,
    resume_from: Path | None = None,
    out=None,
    owner: RunOwner | None = None,
    owner_fd: int | None = None,
) -> int:
    """Run torchrun for an already prepared (queued) run and return the exit code.

    ``owner`` is the run's lock when the caller took it (``owner_fd``: its descriptor,
    inherited from a launcher); without either the lock is taken here, and a run that
    another supervisor owns is refused (a `RunError`).
    """
    out = out or sys.stderr
    conn = store.connect(runs_dir)
    run = store.run_row(conn, run_id)
    if run is None:
        raise RunError(f"no run {run_id!r} in this runs dir")
    run_dir = Path(run["run_dir"])
    if owner is None and owner_fd is not None:
        owner = RunOwner.inherited(owner_fd, run_dir, run_id)
    owner = owner or RunOwner.claim(run_dir, run_id)
    try:
        owner.record(os.getpid())
        if run["state"] != RunState.QUEUED:
            raise RunError(f"run {run_id} is {run['state']}, not queued; `runtime resume` it")
        store.update_run(conn, run_id, supervisor_pid=os.getpid())
        return _supervise(conn, runs_dir, run, threads, resume_from, out)
    finally:
        owner.release()


def _supervise(conn, runs_dir: Path, run: dict, threads: int, resume_from: Path | None, out) -> int:
    run_id, run_dir = run["run_id"], Path(run["run_dir"])
    plan = plan_from_json(run["plan_json"])
    store.clear_workers(conn, run_id)
    for old in [*run_dir.glob("error-rank*.txt"), run_dir / STOPPED_MARKER]:  # a previous attempt's
        old.unlink(missing_ok=True)
    reserve = _reserve_disk(run_dir)
    rendezvous, port = loopback_store()  # kept alive until torchrun has exited
    # What the signal handler needs: it may run between any two lines below.
    state = {"asked": False, "kill": False, "pids": set()}

    def ask_stop(signum, frame) -> None:
        if state["asked"]:  # a second Ctrl-C: no more grace
            state["kill"] = True
            kill_all(state["pids"])
        state["asked"] = True

    previous = {s: signal.signal(s, ask_stop) for s in STOP_SIGNALS}
    proc = None
    ending, stuck = "exited", set()
    try:
        proc = _start_torchrun(run, plan, threads, resume_from, port)
        state["pids"].add(proc.pid)
        if state["kill"]:
            kill_all(state["pids"])
        store.update_run(conn, run_id, state=RunState.RUNNING, started=time.time(), torchrun_pid=proc.pid)
        ending, stuck = _follow(conn, run, plan, proc, state, ProgressLine(run["steps"], out))
    except Exception as exc:  # the supervisor's own failure: the run must not stay `running`
        with contextlib.suppress(sqlite3.Error):
            store.finish_once(conn, run_id, RunState.FAILED, f"supervisor: {type(exc).__name__}: {exc}")
        raise
    finally:
        if proc is not None and proc.poll() is None:  # an error here: leave nothing running
            kill_all([proc.pid, *store.worker_pids(conn, run_id).values()])
        if proc is not None:
            proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        del rendezvous
    kill_all(store.worker_pids(conn, run_id).values())  # none should be left; make sure
    end = _final_state(run, proc.returncode, killed=state["kill"], ending=ending, stuck=stuck)
    if reserve is not None:  # every process of the run is gone: the room is for the record
        reserve.unlink(missing_ok=True)
    store.finish_once(conn, run_id, end.state, end.reason)
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP), the log's disk full
        print(f"run {run_id}: {end.said}", file=out)
        try:
            compare.record_after_run(conn, run_id, runs_dir, out)
        except sqlite3.Error as exc:  # a full disk: the run's state is what matters
            print(f"run {run_id}: not compared with its plan: {exc}", file=out)
    return end.exit_code


def worker_env(threads: int, port: int) -> dict[str, str]:
    """The environment torchrun and its workers run in."""
    return {
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


def _start_torchrun(run: dict, plan: Plan, threads: int, resume_from: Path | None, port: int):
    """torchrun for the run, its output appended to ``<run-dir>/torchrun.log``."""
    with open(Path(run["run_dir"]) / "torchrun.log", "ab") as log:
        # A session of its own: a terminal's Ctrl-C reaches the supervisor only (torchrun
        # would pass SIGINT on to the workers). It still dies with the supervisor, and its
        # workers with it; the supervisor has no threads, so a preexec function is safe here.
        return subprocess.Popen(
            torchrun_command(run, plan, threads, resume_from, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(threads, port),
            cwd=ROOT,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )


@dataclass(frozen=True)
class FinalState:
    """How a run ended: its exit code, its state and reason in the runs database, and what
    the supervisor says of it."""

    exit_code: int
    state: RunState
    reason: str
    said: str


def _final_state(run: dict, returncode: int, *, killed: bool, ending: str, stuck: set[int]) -> FinalState:
    """The run's final state once torchrun has exited (``killed``: a second stop request)."""
    run_dir = Path(run["run_dir"])
    step = _stopped_at(run_dir)
    if step is not None:
        # The ranks agreed, saved and flushed: a stop, also when exiting took them past the
        # grace period (a loaded machine) or one crashed on its way out.
        reason = f"stopped after step {step:,}, checkpoint saved"
        return FinalState(EXIT_STOPPED, RunState.STOPPED, reason, f"stopped after step {step:,}")
    if killed or ending == "killed to stop":
        reason = "stop requested twice; killed" if killed else "stop requested; killed after the grace period"
        return FinalState(EXIT_STOPPED, RunState.STOPPED, reason, "stopped (killed)")
    if returncode == 0:
        return FinalState(EXIT_FINISHED, RunState.FINISHED, "", "finished")
    # Torn down by us after a rank died: the rank's failure is the reason, not our SIGKILL.
    returncode = 1 if ending == "torn down" else returncode
    reason = failure_reason(run_dir, returncode, run["world_size"], stuck)
    return FinalState(EXIT_FAILED, RunState.FAILED, reason, f"failed: {reason}")


def _stopped_at(run_dir: Path) -> int | None:
    """The step the ranks stopped after, from the marker rank 0 writes once the stop's
    checkpoint is complete and the metrics flushed (taken away); None if there is none."""
    marker = run_dir / STOPPED_MARKER
    try:
        step = json.loads(marker.read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or cut short by a full disk: no stop is claimed
    marker.unlink(missing_ok=True)
    return step if isinstance(step, int) else None


def _reserve_disk(run_dir: Path) -> Path | None:
    """Set DISK_RESERVE_BYTES aside in the run folder (None if the disk has not that much)."""
    path = run_dir / DISK_RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, DISK_RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    return path


class _Progress:
    """The progress bar of a run, redrawn from the step rows rank 0 writes."""

    def __init__(self, run: dict, plan: Plan, bar: ProgressLine) -> None:
        self.run_id, self.steps, self.bar = run["run_id"], run["steps"], bar
        # Language models report tokens/s; the plan passed preflight, so its objective is known.
        lm = objective_of(plan.model.source, adversarial=plan.adversarial) == Objective.NEXT_TOKEN
        self.unit, self.rate_name = ("tokens/s", "tokens_per_s") if lm else ("samples/s", "samples_per_s")
        self.after, self.latest, self.first = 0, {}, None
        self.began = time.time()  # a resumed run has older rows: they are shown, not used for the ETA

    def redraw(self, conn, final: bool) -> None:
        rows, self.after = store.read_metrics(
            conn, self.run_id, after_rowid=self.after, names=("loss", self.rate_name, "step_time_s")
        )
        for m in rows:
            if m.rank == store.STEP_RANK:
                self.latest[m.name] = m
                if m.time >= self.began:
                    self.first = self.first or (m.step, m.time)
        if "loss" not in self.latest:
            return
        step, steps = self.latest["loss"].step, self.steps
        eta = None
        if self.first and step > self.first[0]:
            eta = (self.latest["loss"].time - self.first[1]) / (step - self.first[0]) * (steps - step)
        rate = self.latest[self.rate_name].value if self.rate_name in self.latest else None
        line = render(step, steps, loss=self.latest["loss"].value, rate=rate, unit=self.unit, eta_s=eta)
        self.bar.update(line, final=final)

    def step_time(self) -> float:
        """The last step's time (0 before the first is known)."""
        return self.latest["step_time_s"].value if "step_time_s" in self.latest else 0.0


def _follow(conn, run: dict, plan: Plan, proc, state: dict, bar: ProgressLine) -> tuple[str, set[int]]:
    """Poll until torchrun exits, passing stop requests on. Returns how the run ended and
    the ranks that had to be killed: "exited" (torchrun's own exit), "killed to stop" (past
    the stop grace period), or "torn down" (a rank was gone and torchrun did not end the
    others in time: a rank stopped with SIGSTOP ignores torchrun's SIGTERM, and torchrun
    then waited for ever; the ranks still alive then are the ones that stopped answering)."""
    run_id = run["run_id"]
    progress = _Progress(run, plan, bar)
    deadline = teardown = None
    while True:
        done = proc.poll() is not None
        progress.redraw(conn, final=done)
        if done:
            return "exited", set()
        workers = store.worker_pids(conn, run_id)
        state["pids"].update(workers.values())
        if state["kill"]:
            kill_all([proc.pid, *workers.values()])
            proc.wait()
            return "killed to stop", set()
        requested = store.run_row(conn, run_id)["stop_requested"]
        if deadline is None and (state["asked"] or requested):
            if not requested:
                store.update_run(conn, run_id, stop_requested=time.time())
            deadline = time.time() + STOP_GRACE_S + 2 * progress.step_time()
        if deadline is not None:
            # Again at every poll: a worker that reported its PID late gets it too.
            signal_workers(conn, run_id, signal.SIGUSR1)
        if deadline is not None and time.time() > deadline:
            kill_all([proc.pid, *workers.values()])
            proc.wait()
            return "killed to stop", set()
        if teardown is None and deadline is None and any(not pid_alive(p) for p in workers.values()):
            teardown = time.time() + SHUTDOWN_TIMEOUT_S + 2  # torchrun's own shutdown first
        if teardown is not None and time.time() > teardown:
            stuck = {rank for rank, pid in workers.items() if pid_alive(pid)}
            kill_all([proc.pid, *workers.values()])
            proc.wait()
            return "torn down", stuck
        time.sleep(POLL_S)
