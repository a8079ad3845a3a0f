"""`python -m runtime run`: torchrun, progress, run state and metrics in the runs database."""

from __future__ import annotations

import json
import math

import pytest

from planner.plan import save_plan
from runtime import store
from tests.runs import run_ranks, step_losses, zoo_plan
from tests.supervision import runtime_cli

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


def test_bad_plan_starts_nothing(tmp_path):
    plan = json.loads(zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2).to_json())
    plan["replicas"][0]["batch_share"] = 20  # shares no longer sum to the global batch
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 2
    assert "replicas" in done.stderr and "global_batch" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_gpu_plan_is_refused_on_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from planner.build import make_plan
    from planner.cluster import parse_short_form
    from tests.runs import graph_of

    plan = make_plan(graph_of("mlp"), parse_short_form("h100:2"), strategy="dp", global_batch=32, dp_degree=2)
    save_plan(plan, tmp_path / "plan.json")
    done = runtime_cli("run", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 2 and "no CUDA" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_diverged_loss_is_stored_as_nan_not_as_a_gap(tmp_path):
    plan = zoo_plan(
        "mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2,
        training={"optimizer": {"name": "sgd", "lr": 1e6}},
    )  # fmt: skip
    losses = step_losses(run_ranks(plan, tmp_path, steps=8))
    assert len(losses) == 8
    assert any(math.isnan(x) or math.isinf(x) for x in losses), losses
