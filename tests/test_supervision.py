"""Supervision: nothing outlives a run, failures are named, stop and resume are exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from planner.plan import save_plan
from runtime.parallel import checkpoint
from runtime.rank.control import pid_alive
from runtime.supervise import store
from tests.runs import run_ranks, step_losses, zoo_plan
from tests.supervision import (
    ENV,
    ROOT,
    all_gone,
    losses,
    run_command,
    run_pids,
    runtime_cli,
    small_disk,
    start_run,
    the_run,
    wait_for,
)

pytestmark = pytest.mark.slow
LONG = {"steps": 100_000}
GPT_1M = {"size": "1m"}  # about 0.1 s a step on 2 ranks: slow enough to stop mid-run
# Long enough that `runtime stop` (a new process, ~2 s to import torch) always lands before
# the last step; with 20 steps a loaded machine could finish first.
STOP_STEPS = 60


def endless_mlp(**training):
    return zoo_plan(
        "mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, training={**LONG, **training}
    )


def started(tmp_path, plan):
    launcher = start_run(plan, tmp_path)
    runs = tmp_path / "runs"
    pids = wait_for(lambda: (runs / store.DB_NAME).exists() and run_pids(runs), 60, "the workers")
    wait_for(lambda: store.last_step(store.connect(runs), the_run(runs)["run_id"]), 30, "metrics")
    return launcher, pids


def assert_failed_and_clean(tmp_path, pids, launcher, *, reason: str):
    wait_for(lambda: all_gone(pids), 10, "every process of the run to exit")
    if launcher.poll() is None:
        launcher.wait(timeout=20)
    row = the_run(tmp_path / "runs")
    if row["state"] == "running":  # the launcher itself died: the next command notices
        runtime_cli("list", "--runs-dir", tmp_path / "runs")
        row = the_run(tmp_path / "runs")
    assert row["state"] == "failed"
    assert reason in row["reason"], row["reason"]
    assert store.last_step(store.connect(tmp_path / "runs"), row["run_id"]) > 0  # metrics kept


def test_kill_9_of_a_worker(tmp_path):
    launcher, pids = started(tmp_path, endless_mlp())
    os.kill(pids[2], signal.SIGKILL)  # rank 1
    assert_failed_and_clean(tmp_path, pids, launcher, reason="rank 1: Signal 9 (SIGKILL)")
    assert launcher.returncode == 1


def test_kill_9_of_torchrun(tmp_path):
    launcher, pids = started(tmp_path, endless_mlp())
    os.kill(pids[0], signal.SIGKILL)
    assert_failed_and_clean(tmp_path, pids, launcher, reason="torchrun was killed by SIGKILL")
    assert launcher.returncode == 1


def test_kill_9_of_the_launcher(tmp_path):
    launcher, pids = started(tmp_path, endless_mlp())
    supervisor = launcher.pid
    launcher.kill()
    launcher.wait()
    assert_failed_and_clean(tmp_path, pids, launcher, reason=f"supervisor (pid {supervisor}) died")


def test_a_hung_rank_fails_the_run_within_the_timeout(tmp_path):
    launcher, pids = started(tmp_path, endless_mlp(pg_timeout_s=5))
    t0 = time.monotonic()
    os.kill(pids[2], signal.SIGSTOP)  # rank 1 stops answering, without dying
    try:
        launcher.wait(timeout=30)
        assert time.monotonic() - t0 < 5 + 10
    finally:
        if pid_alive(pids[2]):
            os.kill(pids[2], signal.SIGKILL)
    # Blamed on the rank that stopped answering, not on rank 0, which waited for it.
    assert_failed_and_clean(tmp_path, pids, launcher, reason="rank 1 stopped answering: rank 0: ")


def test_stop_then_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    plan = zoo_plan(
        "gpt",
        GPT_1M,
        ranks=2,
        strategy="pp",
        global_batch=16,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=4,
        training={"steps": STOP_STEPS, "checkpoint_every": 5},
    )
    straight = step_losses(run_ranks(plan, tmp_path / "straight", steps=STOP_STEPS))
    runs = tmp_path / "runs"
    launcher = start_run(plan, tmp_path)
    run_dir = wait_for(lambda: runs.exists() and [p for p in runs.iterdir() if p.is_dir()], 60, "the run")[0]
    wait_for(lambda: checkpoint.latest_checkpoint(run_dir), 120, "the checkpoint at step 5")
    stopped = runtime_cli("stop", the_run(runs)["run_id"], "--runs-dir", runs)
    assert stopped.returncode == 0, stopped.stderr
    assert launcher.wait(timeout=60) == 3
    row = the_run(runs)
    assert row["state"] == "stopped"
    at = checkpoint.latest_checkpoint(run_dir).step
    assert 5 <= at < STOP_STEPS and f"after step {at}" in row["reason"]
    resumed = runtime_cli("resume", row["run_id"], "--runs-dir", runs)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {at}" in resumed.stderr
    assert the_run(runs)["state"] == "finished"
    assert losses(runs, row["run_id"]) == straight  # exactly


def test_a_stop_is_honoured_when_checkpoints_come_more_often_than_metrics_flushes(tmp_path):
    # A step of this MLP takes milliseconds: metrics flush every few hundred steps, and a
    # checkpoint (which flushes them too) comes every step.
    launcher, _ = started(tmp_path, endless_mlp(checkpoint_every=1))
    runs = tmp_path / "runs"
    stopped = runtime_cli("stop", the_run(runs)["run_id"], "--runs-dir", runs)
    assert stopped.returncode == 0, stopped.stderr
    assert launcher.wait(timeout=60) == 3
    row = the_run(runs)
    assert row["state"] == "stopped" and "after step" in row["reason"], row["reason"]


def test_pipeline_resume_after_kill_9_matches_the_uninterrupted_run(tmp_path):
    plan = zoo_plan(
        "gpt",
        GPT_1M,
        ranks=2,
        strategy="pp",
        global_batch=16,
        pp_degree=2,
        schedule="gpipe",
        micro_batches=4,
        training={"steps": 12, "checkpoint_every": 4},
    )
    straight = step_losses(run_ranks(plan, tmp_path / "straight", steps=12))
    runs = tmp_path / "runs"
    launcher = start_run(plan, tmp_path)
    run_dir = wait_for(lambda: runs.exists() and [p for p in runs.iterdir() if p.is_dir()], 60, "the run")[0]
    wait_for(lambda: checkpoint.latest_checkpoint(run_dir), 120, "a checkpoint")
    pids = run_pids(runs)
    os.kill(pids[1], signal.SIGKILL)
    assert launcher.wait(timeout=60) == 1
    resumed = runtime_cli("resume", the_run(runs)["run_id"], "--runs-dir", runs)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(runs, the_run(runs)["run_id"]) == straight


def test_an_interrupted_checkpoint_is_never_loaded(tmp_path):
    plan = zoo_plan(
        "mlp",
        ranks=2,
        strategy="dp",
        global_batch=32,
        dp_degree=2,
        training={"steps": 8, "checkpoint_every": 4},
    )
    runs = run_ranks(plan, tmp_path, steps=8)
    run_dir = runs / "test"
    assert [c.step for c in checkpoint.complete_checkpoints(run_dir)] == [4, 8]
    # What kill -9 in the middle of a save leaves: shards, maybe metadata, no complete.json.
    (run_dir / "checkpoints" / "step-000008" / "complete.json").unlink()
    assert checkpoint.latest_checkpoint(run_dir).step == 4
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.step_of(run_dir / "checkpoints" / "step-000008")


def test_data_parallel_checkpoint_continues_as_a_pipeline(tmp_path):
    choices = dict(global_batch=16, training={"steps": 10, "checkpoint_every": 5})
    dp = zoo_plan("gpt", {"size": "toy"}, ranks=2, strategy="dp", dp_degree=2, **choices)
    pp = zoo_plan(
        "gpt",
        {"size": "toy"},
        ranks=2,
        strategy="pp",
        pp_degree=2,
        schedule="1f1b",
        micro_batches=4,
        **choices,
    )
    straight = step_losses(run_ranks(dp, tmp_path / "straight", steps=10))
    save_plan(dp, tmp_path / "dp.json")
    save_plan(pp, tmp_path / "pp.json")
    runs = tmp_path / "runs"
    first = runtime_cli("run", tmp_path / "dp.json", "--steps", 5, "--runs-dir", runs)
    assert first.returncode == 0, first.stderr
    run_id = the_run(runs)["run_id"]
    second = runtime_cli("resume", run_id, "--plan", tmp_path / "pp.json", "--steps", 10, "--runs-dir", runs)
    assert second.returncode == 0, second.stderr
    row = the_run(runs)
    assert row["state"] == "finished" and '"strategy": "pp"' in row["plan_json"]
    import torch

    torch.testing.assert_close(
        torch.tensor(losses(runs, run_id)), torch.tensor(straight), rtol=1e-5, atol=1e-6
    )


def test_resume_refuses_another_model(tmp_path):
    plan = zoo_plan(
        "mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, training={"checkpoint_every": 2}
    )
    save_plan(plan, tmp_path / "mlp.json")
    save_plan(
        zoo_plan("gpt", {"size": "toy"}, ranks=2, strategy="dp", global_batch=8, dp_degree=2),
        tmp_path / "gpt.json",
    )
    runs = tmp_path / "runs"
    assert runtime_cli("run", tmp_path / "mlp.json", "--steps", 2, "--runs-dir", runs).returncode == 0
    refused = runtime_cli(
        "resume", the_run(runs)["run_id"], "--plan", tmp_path / "gpt.json", "--steps", 4, "--runs-dir", runs
    )
    assert refused.returncode == 2 and "another model" in refused.stderr


def test_two_detached_runs_at_once_and_a_polling_reader(tmp_path):
    plan = zoo_plan(
        "gpt", {"size": "toy"}, ranks=2, strategy="dp", global_batch=8, dp_degree=2, training={"steps": 150}
    )
    save_plan(plan, tmp_path / "plan.json")
    runs = tmp_path / "runs"
    ids = []
    for _ in range(2):
        done = runtime_cli("run", tmp_path / "plan.json", "--detach", "--runs-dir", runs, timeout=60)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    conn = store.connect(runs)
    pids_of = lambda: [store.run_row(conn, i)["supervisor_pid"] for i in ids]
    supervisors = wait_for(lambda: all(pids_of()) and pids_of(), 60, "the supervisors")
    for pid in supervisors:  # re-parented away from us: we hold no child to reap
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid != os.getpid()
    errors, seen = [], {run_id: set() for run_id in ids}

    def poll():  # the dashboard's way: 2 Hz, only new rows
        conn, cursors = store.connect(runs), dict.fromkeys(ids, 0)
        while not stop.is_set():
            try:
                for run_id in ids:
                    rows, cursors[run_id] = store.read_metrics(
                        conn, run_id, after_rowid=cursors[run_id], names=["loss"]
                    )
                    seen[run_id].update(m.step for m in rows if m.rank == store.STEP_RANK)
            except Exception as exc:  # a lock error would land here
                errors.append(exc)
            time.sleep(0.5)

    stop = threading.Event()
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        conn = store.connect(runs)
        wait_for(
            lambda: all(store.run_row(conn, i)["state"] in store.TERMINAL for i in ids), 180, "both runs"
        )
        time.sleep(1.0)  # one more poll after the last rows
    finally:
        stop.set()
        reader.join()
    assert not errors
    for run_id in ids:
        assert store.run_row(conn, run_id)["state"] == "finished"
        assert seen[run_id] == set(range(1, 151))


def test_kill_9_during_a_checkpoint_save_resumes_from_the_previous_one(tmp_path):
    # 12.7M parameters: params + Adam's two moments are ~150 MB a checkpoint, a save
    # takes a good fraction of a second, long enough to be caught in the middle of one.
    plan = zoo_plan(
        "mlp",
        {"hidden": [2048] * 4},
        ranks=2,
        strategy="dp",
        global_batch=32,
        dp_degree=2,
        training={"steps": 8, "checkpoint_every": 1},
    )
    straight = step_losses(run_ranks(plan, tmp_path / "straight", steps=8))
    runs = tmp_path / "runs"
    launcher = start_run(plan, tmp_path)

    def saving():
        for run_dir in runs.iterdir() if runs.exists() else ():
            for folder in (run_dir / "checkpoints").glob("step-*"):
                step = int(folder.name.split("-")[1])
                shards = list(folder.glob("*.distcp"))
                if step >= 3 and shards and not (folder / "complete.json").exists():
                    return folder
        return None

    folder = wait_for(saving, 120, "a checkpoint save in progress", period=0.01)
    pids = run_pids(runs)
    os.kill(pids[2], signal.SIGKILL)
    assert launcher.wait(timeout=60) == 1
    assert not (folder / "complete.json").exists()
    run_id = the_run(runs)["run_id"]
    previous = checkpoint.latest_checkpoint(runs / run_id)
    assert previous.step < int(folder.name.split("-")[1])
    resumed = runtime_cli("resume", run_id, "--runs-dir", runs)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {previous.step}" in resumed.stderr
    assert losses(runs, run_id) == straight


def test_hybrid_resume_matches_the_uninterrupted_run(tmp_path):
    # The replicas' gradients are views of one flat buffer, made at the first step; the
    # optimizer state loaded from the checkpoint must pair with the gradients in it.
    plan = zoo_plan(
        "gpt",
        {"size": "toy"},
        ranks=4,
        strategy="hybrid",
        global_batch=8,
        dp_degree=2,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=2,
        training={"steps": 8, "checkpoint_every": 4},
    )
    straight = step_losses(run_ranks(plan, tmp_path / "straight", steps=8))
    first = run_ranks(plan, tmp_path / "first", steps=4)
    saved = checkpoint.latest_checkpoint(first / "test")
    assert saved is not None and saved.step == 4
    resumed = run_ranks(plan, tmp_path / "resumed", steps=8, resume_from=saved.path)
    assert step_losses(resumed) == straight[4:]  # exactly


def test_two_resumes_of_one_run_at_once_train_it_once(tmp_path):
    plan = zoo_plan(
        "mlp",
        ranks=2,
        strategy="dp",
        global_batch=32,
        dp_degree=2,
        training={"steps": 20, "checkpoint_every": 10},
    )
    save_plan(plan, tmp_path / "plan.json")
    runs = tmp_path / "runs"
    assert runtime_cli("run", tmp_path / "plan.json", "--runs-dir", runs).returncode == 0
    run_id = the_run(runs)["run_id"]
    resume = [sys.executable, "-m", "runtime", "resume", run_id, "--steps", "300", "--runs-dir", str(runs)]
    both = [
        subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        for _ in range(2)
    ]
    ends = [(p.pid, p.returncode, err) for p in both for _, err in [p.communicate(timeout=180)]]
    (winner,) = [e for e in ends if e[1] == 0]
    (refused,) = [e for e in ends if e[1] != 0]
    assert refused[1] == 2
    assert (
        refused[2] == f"error: run {run_id} is already supervised by pid {winner[0]}; wait for it or "
        "`runtime stop` it\n"
    )
    assert the_run(runs)["state"] == "finished"
    rows, _ = store.read_metrics(store.connect(runs), run_id, names=["loss"])
    assert sorted(m.step for m in rows if m.rank == store.STEP_RANK) == list(range(1, 301))  # each once


def test_a_second_launcher_of_a_detached_run_is_refused_with_the_owners_pid(tmp_path):
    save_plan(endless_mlp(), tmp_path / "plan.json")
    runs = tmp_path / "runs"
    started = runtime_cli("run", tmp_path / "plan.json", "--detach", "--runs-dir", runs, timeout=60)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    conn = store.connect(runs)
    wait_for(lambda: store.run_row(conn, run_id)["state"] == "running", 60, "the run to start")
    owner = store.run_row(conn, run_id)["supervisor_pid"]
    assert pid_alive(owner)
    for second in (("supervise", run_id), ("resume", run_id)):
        refused = runtime_cli(*second, "--runs-dir", runs)
        assert refused.returncode == 2
        assert refused.stderr == (
            f"error: run {run_id} is already supervised by pid {owner}; wait for it or `runtime stop` it\n"
        )
    row = store.run_row(conn, run_id)
    assert row["state"] == "running" and row["supervisor_pid"] == owner
    assert runtime_cli("stop", run_id, "--runs-dir", runs).returncode == 0
    assert store.run_row(conn, run_id)["state"] == "stopped"
    wait_for(lambda: not pid_alive(owner), 10, "the supervisor to exit")


def test_a_full_disk_fails_the_run_with_that_reason_and_leaves_nothing_running(tmp_path):
    # A checkpoint of this MLP (parameters and Adam's two moments) is ~13 MB: the second
    # one does not fit on a 16 MB disk.
    plan = zoo_plan(
        "mlp",
        {"hidden": [1024] * 2},
        ranks=2,
        strategy="dp",
        global_batch=32,
        dp_degree=2,
        training={"steps": 100_000, "checkpoint_every": 10},
    )
    with small_disk(tmp_path / "disk", "16m") as disk:
        launcher = subprocess.Popen(
            run_command(plan, tmp_path, runs=disk / "runs"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        runs = disk / "runs"
        pids = wait_for(lambda: (runs / store.DB_NAME).exists() and run_pids(runs), 90, "the workers")
        _, err = launcher.communicate(timeout=180)
        assert launcher.returncode == 1, err
        wait_for(lambda: all_gone(pids), 10, "every process of the run to exit")
        assert "Traceback" not in err
        failed = [line for line in err.splitlines() if ": failed: " in line]
        assert len(failed) == 1 and "No space left on device" in failed[0], err
        conn = store.connect(runs)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = the_run(runs)
        assert row["state"] == "failed" and f"out of disk space in {runs}" in row["reason"], row["reason"]
        assert failed[0] == f"run {row['run_id']}: failed: {row['reason']}"
        assert store.last_step(conn, row["run_id"]) >= 10  # the metrics written before are kept
        assert not (runs / row["run_id"] / "disk-reserve").exists()
