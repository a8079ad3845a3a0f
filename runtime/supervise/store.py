"""The runs database: one SQLite file, `<runs-dir>/runs.sqlite`, written while it is read.

WAL mode, a 5 s busy timeout and `BEGIN IMMEDIATE` for every write: with them, 8 writers
and a polling reader saw no "database is locked" (docs/facts.md). Only rank 0 of a run and the
launcher write; the dashboard reads.

Metrics are long rows `(run_id, step, rank, name, value, special, time)`; rank -1 holds the
figures of the whole step (its loss, bubble, samples/s). SQLite turns NaN into NULL, so a
non-finite value is stored as NULL with ``special`` set to 'nan', 'inf' or '-inf', and read
back as that float: a diverged loss stays visible as NaN, never as a gap.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

RUNS_DIR_ENV = "STAGECRAFT_RUNS_DIR"
DB_NAME = "runs.sqlite"
STEP_RANK = -1  # metrics of a whole step, not of one rank

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    plan_sha256 TEXT NOT NULL,
    plan_json   TEXT NOT NULL,
    world_size  INTEGER NOT NULL,
    steps       INTEGER NOT NULL,
    run_dir     TEXT NOT NULL,
    started     REAL,
    ended       REAL,
    supervisor_pid INTEGER,
    torchrun_pid   INTEGER,
    stop_requested REAL
);
CREATE TABLE IF NOT EXISTS workers (
    run_id TEXT NOT NULL,
    rank   INTEGER NOT NULL,
    pid    INTEGER NOT NULL,
    host   TEXT NOT NULL,
    PRIMARY KEY (run_id, rank)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id  TEXT NOT NULL,
    step    INTEGER NOT NULL,
    rank    INTEGER NOT NULL,
    name    TEXT NOT NULL,
    value   REAL,
    special TEXT,
    time    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, step);
CREATE TABLE IF NOT EXISTS comparisons (
    run_id     TEXT NOT NULL,
    rank       INTEGER NOT NULL,
    name       TEXT NOT NULL,
    datasheet  REAL,
    calibrated REAL,
    measured   REAL,
    profile_sha256 TEXT,
    PRIMARY KEY (run_id, rank, name)
);
"""
TABLES = {"runs", "workers", "metrics", "comparisons"}


def new_run_id() -> str:
    """A run id that sorts by start time: ``20261128-101233-1743``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def connect(runs_dir: str | Path) -> sqlite3.Connection:
    """Open (and create) the runs database; autocommit, WAL, busy timeout 5 s.

    A fresh database is made whole (WAL mode, every table) under a temporary name and
    linked into place, so processes that open a new runs dir at once never race to set
    WAL or create tables: switching the journal mode and creating the schema both want
    the whole file, and SQLite answers some of those waits with "database is locked" at
    once instead of waiting (3-10 of 240 opens by 8 processes did).
    """
    path = Path(runs_dir)
    path.mkdir(parents=True, exist_ok=True)
    db = path / DB_NAME
    if not db.exists():
        _create(db)
    conn = _open(db)
    # A database made some other way (by an older version, or where links are not
    # possible): switch and complete it here, retrying the waits SQLite does not wait for.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    # The schema write takes the database's write lock: only when a table is missing, not
    # on every connect of a page that polls every 2 s.
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= TABLES:
        _retry_locked(lambda: _create_tables(conn))
    return conn


BUSY_TIMEOUT_MS = 5000
LOCKED_RETRY_S = 30.0  # how long a first open keeps retrying SQLite's immediate "locked"


def _open(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: every later statement may wait
    conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
    return conn


def _create_tables(conn: sqlite3.Connection) -> None:
    with write(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def _create(db: Path) -> None:
    """Make ``db`` complete under another name, then link it into place (first one wins)."""
    draft = db.with_name(f".{db.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        conn = _open(draft)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # stored in the file: every opener gets it
            _create_tables(conn)
        finally:
            conn.close()  # the last connection folds the WAL back in and removes it
        try:
            os.link(draft, db)
        except FileExistsError:
            pass  # another process made it first: theirs is as good
        except OSError:
            return  # no hard links on this file system: `connect` completes it in place
    finally:
        for leftover in (draft, Path(f"{draft}-wal"), Path(f"{draft}-shm")):
            leftover.unlink(missing_ok=True)


def _retry_locked(action):
    """Run ``action``, again while SQLite says at once that the database is locked."""
    deadline = time.monotonic() + LOCKED_RETRY_S
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc) or "busy" in str(exc)
            if not locked or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + secrets.randbelow(40) / 1000)


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (`BEGIN IMMEDIATE`) so it never deadlocks."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def encode(value: float) -> tuple[float | None, str | None]:
    """SQLite column values for a float: finite as itself, NaN/Inf as NULL plus a tag.

    >>> encode(1.5), encode(float("nan")), encode(float("-inf"))
    ((1.5, None), (None, 'nan'), (None, '-inf'))
    """
    if math.isfinite(value):
        return value, None
    return None, "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode(value: float | None, special: str | None) -> float:
    return float(special) if special is not None else float(value)


@dataclass(frozen=True)
class Metric:
    step: int
    rank: int
    name: str
    value: float
    time: float


def insert_metrics(conn: sqlite3.Connection, run_id: str, rows: Iterable[Metric]) -> None:
    with write(conn):
        conn.executemany(
            "INSERT INTO metrics (run_id, step, rank, name, value, special, time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, m.step, m.rank, m.name, *encode(m.value), m.time) for m in rows],
        )


def read_metrics(
    conn: sqlite3.Connection, run_id: str, *, after_rowid: int = 0, names: Iterable[str] | None = None
) -> tuple[list[Metric], int]:
    """Metrics of a run written after ``after_rowid``, and the last rowid seen (poll with it)."""
    query = "SELECT rowid, step, rank, name, value, special, time FROM metrics WHERE run_id = ? AND rowid > ?"
    params: list = [run_id, after_rowid]
    if names is not None:
        names = list(names)
        query += f" AND name IN ({', '.join('?' * len(names))})"
        params += names
    rows = conn.execute(query + " ORDER BY rowid", params).fetchall()
    last = rows[-1][0] if rows else after_rowid
    return [Metric(s, r, n, decode(v, sp), t) for _, s, r, n, v, sp, t in rows], last


class RunState(StrEnum):
    """A run's ``state`` column: queued and running are active; the others are final."""

    QUEUED = "queued"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    FINISHED = "finished"


ACTIVE = (RunState.QUEUED, RunState.RUNNING)
TERMINAL = (RunState.STOPPED, RunState.FAILED, RunState.FINISHED)
_ACTIVE_SQL = "(" + ", ".join(f"'{s.value}'" for s in ACTIVE) + ")"  # constants, not input


def plan_sha256(plan_json: str) -> str:
    """The hash a run records of its plan (of the JSON text as saved in the run folder)."""
    return hashlib.sha256(plan_json.encode()).hexdigest()


def create_run(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    plan_json: str,
    world_size: int,
    steps: int,
    run_dir: str,
    state: RunState = RunState.QUEUED,
    supervisor_pid: int | None = None,
) -> None:
    now = time.time()
    with write(conn):
        conn.execute(
            "INSERT INTO runs (run_id, created, state, plan_sha256, plan_json, world_size, steps,"
            " run_dir, started, supervisor_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                now,
                state,
                plan_sha256(plan_json),
                plan_json,
                world_size,
                steps,
                run_dir,
                now,
                supervisor_pid,
            ),
        )


def ensure_run(
    conn: sqlite3.Connection, *, run_id: str, plan_json: str, world_size: int, steps: int, run_dir: str
) -> None:
    """The run's row, created as running if no launcher made it (a hand-started torchrun)."""
    now = time.time()
    with write(conn):
        conn.execute(
            "INSERT OR IGNORE INTO runs (run_id, created, state, plan_sha256, plan_json, world_size, steps,"
            " run_dir, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                now,
                RunState.RUNNING,
                plan_sha256(plan_json),
                plan_json,
                world_size,
                steps,
                run_dir,
                now,
            ),
        )


def finish_once(conn: sqlite3.Connection, run_id: str, state: RunState, reason: str = "") -> bool:
    """Move an active run to a final state unless someone else already did; True if we did."""
    with write(conn):
        cur = conn.execute(
            f"UPDATE runs SET state = ?, reason = ?, ended = ? WHERE run_id = ? AND state IN {_ACTIVE_SQL}",
            (state, reason, time.time(), run_id),
        )
    return cur.rowcount == 1


def update_run(conn: sqlite3.Connection, run_id: str, **columns) -> None:
    allowed = {
        "state",
        "reason",
        "started",
        "supervisor_pid",
        "torchrun_pid",
        "stop_requested",
        "plan_json",
        "plan_sha256",
        "steps",
        "world_size",
        "ended",
    }
    if not columns or set(columns) - allowed:
        raise ValueError(f"cannot update {sorted(set(columns) - allowed)}")
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with write(conn):
        conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*columns.values(), run_id))


def clear_workers(conn: sqlite3.Connection, run_id: str) -> None:
    """Forget a previous attempt's workers (a resumed run gets new ones)."""
    with write(conn):
        conn.execute("DELETE FROM workers WHERE run_id = ?", (run_id,))


def worker_pids(conn: sqlite3.Connection, run_id: str) -> dict[int, int]:
    return dict(conn.execute("SELECT rank, pid FROM workers WHERE run_id = ?", (run_id,)).fetchall())


def last_step(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute(
        "SELECT MAX(step) FROM metrics WHERE run_id = ? AND rank = ? AND name = 'loss'", (run_id, STEP_RANK)
    ).fetchone()
    return int(row[0] or 0)


def drop_metrics_after(conn: sqlite3.Connection, run_id: str, step: int) -> None:
    """Forget the steps a resumed run will redo (those after its checkpoint)."""
    with write(conn):
        conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))


def runs(conn: sqlite3.Connection) -> list[dict]:
    cur = conn.execute("SELECT * FROM runs ORDER BY created")
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def record_workers(conn: sqlite3.Connection, run_id: str, workers: Iterable[tuple[int, int, str]]) -> None:
    with write(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO workers (run_id, rank, pid, host) VALUES (?, ?, ?, ?)",
            [(run_id, rank, pid, host) for rank, pid, host in workers],
        )


def record_comparisons(conn: sqlite3.Connection, run_id: str, profile_sha256: str | None, rows) -> None:
    """A run's predicted-vs-measured figures (runtime.measure.compare), replacing earlier ones."""
    with write(conn):
        conn.execute("DELETE FROM comparisons WHERE run_id = ?", (run_id,))
        conn.executemany(
            "INSERT INTO comparisons (run_id, rank, name, datasheet, calibrated, measured, profile_sha256)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, c.rank, c.name, c.datasheet, c.calibrated, c.measured, profile_sha256) for c in rows],
        )


def comparisons(conn: sqlite3.Connection, run_id: str) -> tuple[list[tuple], str | None]:
    """Stored rows ``(rank, name, datasheet, calibrated, measured)`` and the profile's sha256."""
    rows = conn.execute(
        "SELECT rank, name, datasheet, calibrated, measured, profile_sha256 FROM comparisons"
        " WHERE run_id = ? ORDER BY rowid",
        (run_id,),
    ).fetchall()
    return [r[:5] for r in rows], (rows[0][5] if rows else None)


def run_row(conn: sqlite3.Connection, run_id: str) -> dict | None:
    cur = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
    row = cur.fetchone()
    return None if row is None else dict(zip([c[0] for c in cur.description], row, strict=True))
