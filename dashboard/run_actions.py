"""Launch, stop (asked once to confirm) and resume runs, from the Runs and Monitor pages.

Runs belong to their supervisor, not to the browser tab: they are started detached
(`python -m runtime run --detach`), so closing or reloading the tab leaves them running.
Buttons act in callbacks, before the page is drawn again, so what the page then shows
already includes the action; a failure is one line, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import streamlit as st

from runtime.supervise import launch, store
from runtime.supervise.launch import RunError

ROOT = Path(__file__).resolve().parents[1]
PENDING_STOP = "run_stop_pending"  # (where, run id) whose Stop awaits its confirmation
NOTICE = "run_notice"  # (where, kind, text, time) of the last action's outcome
NOTICE_S = 20.0  # how long an outcome stays on a page that redraws itself every 2 s


def runtime_command(*args: str) -> subprocess.CompletedProcess:
    # An argument list, no shell; `--detach` returns at once and is waited for here, so the
    # page holds no child process (the supervisor is re-parented away from it).
    cmd = [sys.executable, "-m", "runtime", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _failure(done: subprocess.CompletedProcess, what: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else f"the {what} failed (exit code {done.returncode})"


def launch_plan(plan_json: str, steps: int, runs_dir: Path) -> tuple[str | None, str]:
    """Start a plan detached: (run id, "") or (None, the one line that says why not)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"plan-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(plan_json)
    try:
        done = runtime_command(
            "run", str(path), "--detach", "--steps", str(steps), "--runs-dir", str(runs_dir)
        )
    except subprocess.TimeoutExpired:
        return None, "the launch did not answer within 120 s"
    if done.returncode != 0:
        path.unlink(missing_ok=True)  # nothing was started: leave nothing behind
        return None, _failure(done, "launch")
    printed = done.stdout.split()
    return (
        (printed[-1], "") if printed else (None, "the launch printed no run id; see `python -m runtime list`")
    )


def _notify(where: str, kind: str, text: str) -> None:
    st.session_state[NOTICE] = (where, kind, text, time.time())


def show_notice(where: str) -> None:
    """The outcome of this page's last Stop or Resume, for a little while."""
    slot = st.empty()  # always there, so what follows keeps its place while the page redraws
    notice = st.session_state.get(NOTICE)
    if notice and notice[0] == where and time.time() - notice[3] < NOTICE_S:
        getattr(slot, notice[1])(notice[2])


def _ask_stop(where: str, run_id: str) -> None:
    st.session_state[PENDING_STOP] = (where, run_id)


def _cancel_stop() -> None:
    st.session_state.pop(PENDING_STOP, None)


def _stop(where: str, run_id: str, runs_dir: Path) -> None:
    st.session_state.pop(PENDING_STOP, None)
    try:
        run = launch.request_stop(runs_dir, run_id)
    except RunError as exc:
        _notify(where, "error", str(exc))
        return
    if run["state"] not in store.ACTIVE:
        _notify(where, "info", f"Run {run_id} is already {run['state']}.")
        return
    _notify(where, "info", f"Asked run {run_id} to stop: its ranks finish the step and save a checkpoint.")


def _resume(where: str, run_id: str, runs_dir: Path) -> None:
    try:
        done = runtime_command("resume", run_id, "--detach", "--runs-dir", str(runs_dir))
    except subprocess.TimeoutExpired:
        _notify(where, "error", f"run {run_id}: the resume did not answer within 120 s")
        return
    if done.returncode == 0:
        _notify(where, "success", f"Resumed run {run_id} from its last checkpoint.")
    else:
        _notify(where, "error", f"run {run_id}: {_failure(done, 'resume')}")


def stop_button(where: str, run_id: str, active: bool, label: str = "Stop") -> None:
    """Stop: asks for a confirmation first (`stop_confirmation` draws it)."""
    st.button(
        label,
        key=f"{where}_stop_{run_id}",
        disabled=not active,
        on_click=_ask_stop,
        args=(where, run_id),
        help="Finish the current step, save a checkpoint, end the run.",
    )


def resume_button(where: str, run_id: str, resumable: bool, runs_dir: Path, label: str = "Resume") -> None:
    st.button(
        label,
        key=f"{where}_resume_{run_id}",
        disabled=not resumable,
        on_click=_resume,
        args=(where, run_id, runs_dir),
        help="Continue from the last checkpoint.",
    )


def stop_confirmation(where: str, run_id: str, runs_dir: Path) -> None:
    """The one question Stop asks, drawn only while it waits for an answer."""
    slot = st.container()  # always there, so what follows keeps its place while the page redraws
    if st.session_state.get(PENDING_STOP) != (where, run_id):
        return
    box = slot.container(border=True, key=f"{where}_confirm_{run_id}")
    box.warning(f"Stop run {run_id}? Its ranks finish the current step, save a checkpoint and exit.")
    yes, no, _ = box.columns([1, 1, 4])
    yes.button(
        "Stop now",
        key=f"{where}_stop_yes_{run_id}",
        type="primary",
        on_click=_stop,
        args=(where, run_id, runs_dir),
    )
    no.button("Keep running", key=f"{where}_stop_no_{run_id}", on_click=_cancel_stop)
