"""Helpers for supervision tests: start `python -m runtime ...`, watch processes and runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from planner.plan import Plan, save_plan
from runtime.rank.control import pid_alive
from runtime.supervise import store
from tests.runs import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def runtime_cli(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "runtime", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
        cwd=ROOT,
    )


def run_command(plan: Plan, tmp: Path, *args, runs: Path | None = None) -> list[str]:
    """The command line of `python -m runtime run` for ``plan``, in ``runs`` (``tmp/runs``)."""
    path = tmp / f"plan-{time.monotonic_ns()}.json"
    save_plan(plan, path)
    runs = runs or tmp / "runs"
    return [sys.executable, "-m", "runtime", "run", str(path), "--runs-dir", str(runs), *map(str, args)]


def start_run(plan: Plan, tmp: Path, *args, **popen) -> subprocess.Popen:
    """`python -m runtime run` in the foreground (the supervisor is this child)."""
    return subprocess.Popen(
        run_command(plan, tmp, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
        **popen,
    )


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
    rows = store.runs(conn)
    if not rows:  # the database is made a moment before the run's row
        return []
    (row,) = rows
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


class Terminal:
    """A command run as a terminal's foreground job, as a person runs it: its own session,
    a pseudo-terminal as its controlling terminal, so b"\\x03" typed there is Ctrl-C (the
    kernel sends SIGINT to the terminal's foreground process group)."""

    def __init__(self, cmd: list[str]) -> None:
        import fcntl
        import termios
        import threading

        self.master, slave = os.openpty()

        def take_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,
            env=ENV,
            cwd=ROOT,
        )
        os.close(slave)
        self._seen = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)  # a full pty would block it
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # the child closed its side
                return
            if not data:
                return
            self._seen.extend(data)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def foreground_group(self) -> int:
        return os.tcgetpgrp(self.master)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        os.close(self.master)
        return code

    @property
    def text(self) -> str:
        return self._seen.decode(errors="replace")


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A file system of ``size`` (a tmpfs) mounted at ``path`` for the block's length.

    Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped, saying so: a full
    disk cannot be made cheaply without it.
    """
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here: a full disk needs a small file system mounted")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a {size} tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
