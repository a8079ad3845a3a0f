"""The runs database: non-finite values survive, polling reads only new rows."""

from __future__ import annotations

import math
import multiprocessing

from runtime.supervise import store


def test_nan_and_inf_are_kept(tmp_path):
    conn = store.connect(tmp_path)
    values = [1.25, float("nan"), float("inf"), float("-inf"), 0.0]
    store.insert_metrics(conn, "r", [store.Metric(i, -1, "loss", v, 0.0) for i, v in enumerate(values)])
    rows, _ = store.read_metrics(conn, "r")
    back = [m.value for m in rows]
    assert back[0] == 1.25 and math.isnan(back[1]) and back[2:] == [math.inf, -math.inf, 0.0]


def test_polling_reads_only_new_rows(tmp_path):
    conn = store.connect(tmp_path)
    store.insert_metrics(conn, "r", [store.Metric(1, 0, "loss", 1.0, 0.0)])
    store.insert_metrics(conn, "other", [store.Metric(1, 0, "loss", 9.0, 0.0)])
    first, cursor = store.read_metrics(conn, "r")
    store.insert_metrics(conn, "r", [store.Metric(2, 0, "loss", 2.0, 0.0), store.Metric(2, 0, "x", 3.0, 0.0)])
    second, _ = store.read_metrics(conn, "r", after_rowid=cursor, names=["loss"])
    assert [m.value for m in first] == [1.0]
    assert [(m.step, m.value) for m in second] == [(2, 2.0)]


def test_database_is_in_wal_mode(tmp_path):
    conn = store.connect(tmp_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert store.default_runs_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(store.RUNS_DIR_ENV)
    assert str(store.default_runs_dir()) == "runs"


def _open_and_write(runs_dir, barrier, errors) -> None:
    barrier.wait()  # all eight open the same fresh runs dir at the same moment
    try:
        conn = store.connect(runs_dir)
        store.insert_metrics(conn, "r", [store.Metric(1, 0, "loss", 1.0, 0.0)])
        conn.close()
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {exc}")
    errors.put(None)


def test_a_fresh_database_opened_by_8_processes_at_once_never_reports_locked(tmp_path):
    # Before the database was made under another name and linked into place, 3-10 of 240
    # such opens failed with "database is locked" (setting WAL and creating the tables race).
    ctx = multiprocessing.get_context("fork")  # no torch, no threads here: fork is safe and quick
    rounds, width = 30, 8
    found = []
    for i in range(rounds):
        runs_dir = tmp_path / f"runs-{i}"
        barrier, errors = ctx.Barrier(width), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(runs_dir, barrier, errors)) for _ in range(width)]
        for p in procs:
            p.start()
        found += [e for e in (errors.get(timeout=60) for _ in procs) if e is not None]
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * width
        conn = store.connect(runs_dir)
        assert len(store.read_metrics(conn, "r")[0]) == width - len(found)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert not [p.name for p in runs_dir.iterdir() if p.name.startswith(".")]  # no draft left
    assert found == []
