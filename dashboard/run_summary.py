"""What the dashboard says of a run: its plan's name, state, progress, duration and last loss.

A run's plan is read from its row in the runs database. A plan that does not load (written
by another version, edited by hand) is named in one line, never shown as a traceback.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from dashboard import format
from dashboard.messages import one_line
from dashboard.naming import model_name, strategy_name
from planner.plan import Plan, plan_from_json
from runtime.supervise import store

# A finished run continues only with more steps: `runtime resume --steps`.
RESUMABLE = (store.RunState.STOPPED, store.RunState.FAILED)


def read_plan(plan_json: str) -> tuple[Plan | None, str]:
    """(the plan, "") or (None, the one line that says why it does not load)."""
    try:
        return plan_from_json(plan_json), ""
    except Exception as exc:  # any failure of a stored document is data, shown as one line
        return None, f"plan unreadable: {one_line(exc)}"


def last_loss(conn: sqlite3.Connection, run_id: str) -> float | None:
    """The loss of the run's latest step, read from its newest step backwards (one row)."""
    row = conn.execute(
        "SELECT value, special FROM metrics WHERE run_id = ? AND rank = ? AND name = 'loss'"
        " ORDER BY step DESC LIMIT 1",
        (run_id, store.STEP_RANK),
    ).fetchone()
    return None if row is None else store.decode(*row)


def run_duration(run: dict, now: float | None = None) -> float | None:
    """Seconds from start to end, or to now while it is active."""
    if not run.get("started"):
        return None
    end = run.get("ended") or (now if now is not None else time.time())
    return max(end - run["started"], 0.0)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    model: str
    strategy: str
    state: str
    step: str
    duration: str
    last_loss: str
    reason: str
    active: bool
    resumable: bool


def summarize(conn: sqlite3.Connection, run: dict, now: float | None = None) -> RunSummary:
    """One run as the Runs list shows it; ``run`` is a row of `runtime.supervise.launch.list_runs`."""
    plan, problem = read_plan(run["plan_json"])
    loss = last_loss(conn, run["run_id"])
    last = run.get("last_step", 0)
    return RunSummary(
        run_id=run["run_id"],
        model=model_name(plan) if plan else "-",
        strategy=strategy_name(plan) if plan else problem,
        state=run["state"],
        step=f"{format.number(last)} / {format.number(run['steps'])}",
        duration=format.elapsed(run_duration(run, now)),
        last_loss=format.number(loss),
        reason=run.get("reason") or "",
        active=run["state"] in store.ACTIVE,
        resumable=run["state"] in RESUMABLE,
    )
