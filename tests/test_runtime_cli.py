"""`python -m runtime run`: torchrun, progress, run state and metrics in the runs database."""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess

import pytest

from planner.plan import save_plan
from runtime.supervise import store
from tests.runs import run_ranks, step_losses, zoo_plan
from tests.supervision import ENV, runtime_cli, small_disk

pytestmark = pytest.mark.slow


def only_run(runs):
    conn = store.connect(runs)
    (run_id,) = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    return conn, run_id, store.run_row(conn, run_id)


def test_run_trains_and_records_every_step(tmp_path):
    plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2)
    save_plan(plan, tmp_path / "plan.json")
    done = runtime_cli("run", tmp_path / "plan.json", "--steps", 6, "--runs-dir", tmp_path / "runs")
    assert done.returncode == 0, done.stderr
    assert "step 6/6" in done.stderr and "finished" in done.stderr
    conn, run_id, row = only_run(tmp_path / "runs")
    assert row["state"] == "finished" and row["world_size"] == 2 and row["steps"] == 6
    assert json.loads(row["plan_json"])["strategy"] == "dp"
    workers = conn.execute("SELECT rank, pid FROM workers WHERE run_id = ?", (run_id,)).fetchall()
    assert sorted(r for r, _ in workers) == [0, 1] and all(pid > 0 for _, pid in workers)
    metrics, _ = store.read_metrics(conn, run_id)
    by = {(m.step, m.rank, m.name): m.value for m in metrics}
    assert [s for s in range(1, 7) if (s, -1, "loss") in by] == list(range(1, 7))
    for step in range(1, 7):
        for rank in (0, 1):
            step_time, compute = by[(step, rank, "step_time_s")], by[(step, rank, "compute_s")]
            opt, wait = by[(step, rank, "optimizer_s")], by[(step, rank, "comm_wait_s")]
            assert 0 < compute < step_time and 0 < opt < step_time
            assert wait == pytest.approx(max(step_time - compute - opt, 0.0))
            assert by[(step, rank, "peak_memory_bytes")] > 50 * 2**20  # torch alone is more
            assert by[(step, rank, "cpu_percent")] > 0
        assert 0 < by[(step, -1, "bubble_fraction")] < 1
        assert by[(step, -1, "samples_per_s")] == pytest.approx(32 / by[(step, -1, "step_time_s")])


def test_a_pipeline_rank_splits_its_wait_by_cause_and_can_record_its_timeline(tmp_path):
    plan = zoo_plan(
        "mlp", ranks=2, strategy="pp", pp_degree=2, schedule="1f1b", micro_batches=4, global_batch=32
    )
    save_plan(plan, tmp_path / "plan.json")
    env = {**ENV, "STAGECRAFT_TIMELINE": str(tmp_path / "timeline")}
    done = runtime_cli("run", tmp_path / "plan.json", "--steps", 5, "--runs-dir", tmp_path / "runs", env=env)
    assert done.returncode == 0, done.stderr
    conn, run_id, _ = only_run(tmp_path / "runs")
    by = {(m.step, m.rank, m.name): m.value for m in store.read_metrics(conn, run_id)[0]}
    for step in range(2, 6):
        for rank in (0, 1):
            parts = [by[(step, rank, n)] for n in ("peer_wait_s", "communication_s", "idle_end_s", "host_s")]
            assert all(x >= 0 for x in parts)
            assert parts[0] + parts[1] + parts[3] <= by[(step, rank, "comm_wait_s")] + 1e-9
    # The last stage waits for its micro-batches' activations.
    assert statistics.median(by[(s, 1, "peer_wait_s")] for s in range(2, 6)) > 0

    moved = {}
    for rank, peer in ((0, 1), (1, 0)):
        steps = json.loads((tmp_path / "timeline" / f"rank{rank}.json").read_text())["steps"]
        assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
        events = steps[-1]["events"]
        assert {"compute", "post", "wait", "optimizer"} <= {e["kind"] for e in events}
        assert all(0 <= e["start"] <= e["end"] <= steps[-1]["end"] + 1e-6 for e in events)
        ops = [op for e in events if e["kind"] == "post" for op in e["ops"]]
        assert {op["peer"] for op in ops} == {peer}
        for way in ("send", "recv"):
            moved[rank, way] = sum(op["bytes"] for op in ops if op["op"] == way)
    # Four micro-batches' activations one way, their gradients (as large) the other.
    assert moved[0, "send"] == moved[1, "recv"] == moved[1, "send"] == moved[0, "recv"] > 0


def test_bad_plan_starts_nothing(tmp_path):
    plan = json.loads(zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2).to_json())
    plan["replicas"][0]["batch_share"] = 20  # shares no longer sum to the global batch
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 2
    assert "replicas" in done.stderr and "global_batch" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_fp16_mixed_sharded_is_refused_before_anything_starts(tmp_path):
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
        dp_mode="full_shard",
        recompute="full",
    )
    doc = json.loads(plan.to_json())
    doc["training"]["precision"] = "fp16-mixed"
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 2
    assert "training.precision: fp16-mixed is not trained sharded" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_tensor_degree_that_does_not_divide_the_heads_is_refused_before_anything_starts(tmp_path):
    plan = zoo_plan("gpt", {"size": "toy"}, ranks=3, strategy="dp", global_batch=6, tp_degree=3)  # 4 heads
    (tmp_path / "plan.json").write_text(plan.to_json())
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 2
    assert "tp_degree: block 'blocks.0': tp_degree 3 does not divide its 4 attention heads" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_gpu_plan_is_refused_on_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from planner.cluster import parse_short_form
    from planner.search.build import make_plan
    from tests.runs import graph_of

    plan = make_plan(graph_of("mlp"), parse_short_form("h100:2"), strategy="dp", global_batch=32, dp_degree=2)
    save_plan(plan, tmp_path / "plan.json")
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 2 and "no CUDA" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_diverged_loss_is_stored_as_nan_not_as_a_gap(tmp_path):
    plan = zoo_plan(
        "mlp",
        ranks=2,
        strategy="dp",
        global_batch=32,
        dp_degree=2,
        training={"optimizer": {"name": "sgd", "lr": 1e6}},
    )
    losses = step_losses(run_ranks(plan, tmp_path, steps=8))
    assert len(losses) == 8
    assert any(math.isnan(x) or math.isinf(x) for x in losses), losses


def mlp_plan_file(tmp_path):
    save_plan(zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2), tmp_path / "plan.json")
    return tmp_path / "plan.json"


def one_error_line(done) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    return done.stderr


@pytest.mark.parametrize(
    "option, value, said",
    [
        ("--steps", 10**20, "--steps is 100,000,000,000,000,000,000; it must be from 1 to 1,000,000,000"),
        ("--steps", 0, "--steps is 0; it must be from 1 to 1,000,000,000"),
        ("--threads", 0, "--threads is 0; it must be from 1 to 1,024"),
        ("--threads", 10**6, "--threads is 1,000,000; it must be from 1 to 1,024"),
    ],
)
def test_out_of_range_start_options_are_refused_before_anything_is_made(tmp_path, option, value, said):
    runs = tmp_path / "runs"
    done = runtime_cli("run", mlp_plan_file(tmp_path), option, value, "--runs-dir", runs)
    assert said in one_error_line(done)
    assert not runs.exists()  # no runs dir, no run folder, no row


def test_resume_with_steps_out_of_range_is_refused(tmp_path):
    done = runtime_cli("resume", "20260101-000000-abcd", "--steps", 10**20, "--runs-dir", tmp_path / "runs")
    assert "--steps is 100,000,000,000,000,000,000" in one_error_line(done)
    assert not (tmp_path / "runs").exists()


def test_profile_into_a_missing_folder_is_refused_before_measuring(tmp_path):
    out, runs = tmp_path / "missing" / "profile.json", tmp_path / "runs"
    done = runtime_cli("profile", "--model", "mlp", "--cluster", "cpu:1", "-o", out, "--runs-dir", runs)
    assert one_error_line(done) == f"error: -o {out}: the folder {out.parent} does not exist\n"
    assert not out.parent.exists() and not runs.exists()


@pytest.mark.parametrize("command", ["run", "list", "stop", "resume"])
def test_a_runs_dir_that_is_a_file_is_refused(tmp_path, command):
    runs = tmp_path / "runs"
    runs.write_text("not a folder\n")
    args = {"list": [], "stop": ["r1"], "resume": ["r1"]}.get(command)
    args = [mlp_plan_file(tmp_path)] if args is None else args
    done = runtime_cli(command, *args, "--runs-dir", runs)
    assert one_error_line(done) == f"error: runs dir {runs} is not a directory\n"
    assert runs.read_text() == "not a folder\n"
    made = ["plan.json", "runs"] if command == "run" else ["runs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == made


@contextlib.contextmanager
def read_only(path, fill=lambda path: None):
    """``path``, filled by ``fill``, then read-only for the block, as a folder is to a user
    who does not own it. Root ignores file modes: for root it is a file system remounted
    read-only."""
    if os.geteuid() != 0:
        path.mkdir()
        fill(path)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with small_disk(path, "4m"):
        fill(path)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path


def test_a_read_only_runs_dir_is_refused_and_left_as_it_was(tmp_path):
    with read_only(tmp_path / "runs") as runs:
        done = runtime_cli("run", mlp_plan_file(tmp_path), "--runs-dir", runs)
        assert one_error_line(done).startswith(f"error: runs dir {runs}: cannot open its database (")
        assert list(runs.iterdir()) == []
        listed = runtime_cli("list", "--runs-dir", runs)  # no runs in it: an empty list, nothing made
        assert listed.returncode == 0 and listed.stdout.splitlines()[1:] == [], listed.stderr
        assert list(runs.iterdir()) == []


def test_a_runs_database_that_cannot_be_opened_is_one_line(tmp_path):
    with read_only(tmp_path / "runs", fill=lambda path: store.connect(path).close()) as runs:
        before = sorted(p.name for p in runs.iterdir())
        for command in (["list"], ["stop", "r1"], ["resume", "r1"]):
            said = one_error_line(runtime_cli(*command, "--runs-dir", runs))
            assert said.startswith(f"error: runs dir {runs}: cannot open its database ("), command
        assert sorted(p.name for p in runs.iterdir()) == before


@pytest.mark.parametrize("source", ["py:os:system", "py:subprocess:run"])
def test_a_plan_with_a_py_payload_runs_nothing(tmp_path, source):
    marker = tmp_path / "payload-ran"
    doc = json.loads(mlp_plan_file(tmp_path).read_text())
    doc["model"].update(
        source=source, overrides={"command": f"touch {marker}", "args": ["touch", str(marker)]}
    )
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    env = {k: v for k, v in ENV.items() if k != "STAGECRAFT_ALLOWED_PY"}
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs", env=env)
    module = source.split(":")[1]
    assert f"would import {module!r}" in one_error_line(done) and f"--allow-py {module}" in done.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_allowed_py_model_is_imported_and_refused_for_having_no_objective(tmp_path, monkeypatch):
    from planner.cluster import parse_short_form
    from planner.search.build import make_plan
    from tests.runs import graph_of

    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "tests.fixtures.models")  # to plan it here
    graph = graph_of("py:tests.fixtures.models:two_linear")
    plan = make_plan(graph, parse_short_form("cpu:2"), strategy="dp", global_batch=8, dp_degree=2)
    save_plan(plan, tmp_path / "plan.json")
    runs = tmp_path / "runs"
    env = {k: v for k, v in ENV.items() if k != "STAGECRAFT_ALLOWED_PY"}
    refused = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", runs, env=env)
    assert "nobody allowed it" in one_error_line(refused)
    allowed = ("--allow-py", "tests.fixtures.models")
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", runs, *allowed, env=env)
    assert "a py: factory has no objective" in one_error_line(done)  # imported with consent, then refused
    assert not runs.exists()


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested 100000 deep"),
        (b'{"schema_version": "\xff"}', "not UTF-8 text"),
    ],
    ids=["deep", "not-utf8"],
)
def test_hostile_plan_files_are_one_line_and_start_nothing(tmp_path, data, said):
    (tmp_path / "plan.json").write_bytes(data)
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert said in one_error_line(done)
    assert not (tmp_path / "runs").exists()


def test_a_plan_for_another_model_is_refused_before_anything_starts(tmp_path):
    doc = json.loads(mlp_plan_file(tmp_path).read_text())
    doc["model"]["overrides"] = {"hidden": [8]}  # another MLP than the one it was planned for
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert "model." in one_error_line(done)
    assert not (tmp_path / "runs").exists()


def test_a_timeline_folder_that_cannot_be_written_is_one_warning(tmp_path, capsys):
    from runtime.rank.timeline import Timeline

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    events = Timeline(blocker / "timeline" / "rank0.json")  # a folder under a file
    events.begin_step(1)
    events.end_step()
    events.save()
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("warning: STAGECRAFT_TIMELINE: cannot write")
