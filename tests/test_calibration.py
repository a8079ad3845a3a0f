"""Measured speeds drive the plan, and runs are compared with their predictions."""

from __future__ import annotations

import json
import statistics

import pytest

from planner.capture.graph import graph_digest
from planner.cluster import resolve_cluster
from planner.cost.price import price
from planner.plan import save_plan
from planner.profile import BlockTiming, Profile
from planner.search.build import model_blocks
from planner.search.search import search
from runtime.measure import compare
from runtime.supervise import store
from tests.runs import graph_of, zoo_plan
from tests.supervision import runtime_cli


def measured_profile(graph, slowdown: dict[str, float]) -> Profile:
    """Every block 1 ms forward and 2 ms backward per sample, times each kind's slowdown."""
    return Profile(
        graph_digest=graph_digest(graph),
        blocks=[
            BlockTiming(
                block=b, device_kind=kind, micro_batch_size=1, forward_s=1e-3 * x, backward_s=2e-3 * x
            )
            for b in model_blocks(graph)
            for kind, x in slowdown.items()
        ],
    )


def stage_blocks(plan, blocks: list[str]) -> dict[int, int]:
    """Blocks per device."""
    out: dict[int, int] = {}
    for stage in plan.stages:
        rank = next(r for r in plan.ranks if r.pp_index == stage.pp_rank)
        count = blocks.index(stage.last) - blocks.index(stage.first) + 1
        out[rank.device] = out.get(rank.device, 0) + count
    return out


def test_a_device_measured_twice_as_slow_gets_about_half_the_work():
    # The datasheet says the H100 is 3.4x the A100 in fp32; this profile measured it at half
    # the A100's speed (a throttled card, say). The measurement wins.
    graph = graph_of("gpt", json.dumps({"n_layer": 8}))
    blocks = model_blocks(graph)
    cluster = resolve_cluster("h100:1+a100-80gb:1")
    slow, fast = (d.id for d in cluster.devices)
    profile = measured_profile(graph, {"h100-80gb": 2.0, "a100-80gb": 1.0})

    pp = search(graph, cluster, global_batch=8, strategy="pp", profile=profile).best.plan
    work = stage_blocks(pp, blocks)
    assert work[slow] / work[fast] == pytest.approx(0.5, abs=0.1), work

    dp = search(graph, cluster, global_batch=30, strategy="dp", profile=profile).best.plan
    share = {r.device: next(p.batch_share for p in dp.replicas if p.dp_index == r.dp_index) for r in dp.ranks}
    assert share[slow] / share[fast] == pytest.approx(0.5, abs=0.1), share

    # Without the profile the datasheet rules, and the H100 gets the larger part.
    datasheet = search(graph, cluster, global_batch=8, strategy="pp").best.plan
    assert stage_blocks(datasheet, blocks)[slow] > stage_blocks(datasheet, blocks)[fast]


def test_measured_contention_makes_ranks_that_compute_together_slower():
    graph = graph_of("gpt")
    plan = zoo_plan("gpt", ranks=2, strategy="dp", dp_degree=2, global_batch=8)
    quiet = measured_profile(graph, {"cpu": 1.0})
    busy = quiet.model_copy(update={"contention": {"cpu": 0.5}})
    alone, shared = price(graph, plan.cluster, plan, quiet), price(graph, plan.cluster, plan, busy)
    compute = [
        sum(i.end - i.start for i in p.timeline if i.rank == 0 and i.kind in ("forward", "backward"))
        for p in (alone, shared)
    ]
    assert compute[1] == pytest.approx(1.5 * compute[0])  # both replicas compute at once throughout
    assert busy.digest() != quiet.digest()  # the plan cites which measurement it used


def test_a_run_finds_the_profile_its_plan_cites_else_the_newest_of_its_graph(tmp_path):
    import os

    graph = graph_of("gpt")
    plan = zoo_plan("gpt", ranks=2, strategy="dp", dp_degree=2, global_batch=8)
    ours, newer = measured_profile(graph, {"cpu": 1.0}), measured_profile(graph, {"cpu": 2.0})
    for age, profile in ((200, ours), (100, newer)):
        path = compare.save_profile(profile, tmp_path)
        os.utime(path, (path.stat().st_mtime - age,) * 2)
    (tmp_path / "profiles" / "broken.json").write_text("{")  # the newest file: passed over
    cited = plan.model_copy(update={"predicted": price(graph, plan.cluster, plan, ours).to_predicted()})
    # Measured blocks, datasheet links (the profile has none): the citation joins the two.
    assert cited.predicted.sources["step_time_s"] == f"profile:{ours.digest()}+datasheet"
    assert compare.find_profile(cited, tmp_path) == ours
    assert compare.find_profile(plan, tmp_path) == newer
    assert (
        compare.find_profile(zoo_plan("mlp", ranks=2, strategy="dp", dp_degree=2, global_batch=8), tmp_path)
        is None
    )


def test_measured_figures_are_medians_after_the_warm_up_and_memory_is_the_last_peak():
    rows = []
    for step, t in enumerate([9.0, 8.0, 1.0, 3.0, 2.0], start=1):
        rows += [
            store.Metric(step, store.STEP_RANK, "step_time_s", t, 0.0),
            store.Metric(step, 0, "comm_wait_s", t / 10, 0.0),
            store.Metric(step, 0, "tensor_memory_bytes", 100.0 * step, 0.0),
        ]
    measured = compare.measured_figures(rows, warmup=2)
    assert measured[(store.STEP_RANK, "step_time_s")] == 2.0  # median of 1, 3, 2
    assert measured[(0, "wait_s")] == pytest.approx(0.2)
    assert measured[(0, "tensor_memory_bytes")] == 500.0
    assert compare.measured_figures(rows[:6], warmup=2) == {}  # nothing past the warm-up


def test_errors_are_relative_and_the_bubble_is_compared_in_points():
    step = compare.Comparison(-1, "step_time_s", datasheet=2.0, calibrated=1.1, measured=1.0)
    assert step.predicted == 1.1 and step.error == pytest.approx(0.1)
    bubble = compare.Comparison(-1, "bubble_fraction", datasheet=0.3, calibrated=None, measured=0.2)
    assert bubble.predicted == 0.3 and bubble.error == pytest.approx(0.1)
    assert compare.Comparison(0, "compute_s", 1.0, None, None).error is None


def test_predicted_figures_use_the_runtime_definitions():
    graph = graph_of("gpt")
    plan = zoo_plan(
        "gpt", ranks=2, strategy="pp", pp_degree=2, schedule="1f1b", micro_batches=4, global_batch=8
    )
    prediction = price(graph, plan.cluster, plan)
    figures = compare.predicted_figures(plan, prediction)
    step = prediction.step_time_s
    compute = 0.0
    for r in plan.ranks:
        mine = [i for i in prediction.timeline if i.rank == r.rank]
        fwd_bwd = sum(i.end - i.start for i in mine if i.kind in ("forward", "backward"))
        opt = sum(i.end - i.start for i in mine if i.kind == "optimizer")
        compute += fwd_bwd
        assert figures[(r.rank, "compute_s")] == pytest.approx(fwd_bwd)
        assert figures[(r.rank, "wait_s")] == pytest.approx(step - fwd_bwd - opt)
        memory = prediction.memory[r.rank]
        # What the tensor count sees: neither the fixed per-process bytes nor the runtime's.
        assert figures[(r.rank, "tensor_memory_bytes")] == memory.total - memory.overhead - memory.runtime
    # Measured bubble = 1 - forward and backward / (ranks x step): the optimizer is not in it.
    assert figures[(-1, "bubble_fraction")] == pytest.approx(1 - compute / (2 * step))


@pytest.mark.slow
def test_a_recorded_run_is_stored_next_to_its_predictions(tmp_path):
    plan = zoo_plan(
        "gpt", ranks=2, strategy="pp", pp_degree=2, schedule="gpipe", micro_batches=4, global_batch=8
    )
    save_plan(plan, tmp_path / "plan.json")
    runs = tmp_path / "runs"
    graph = graph_of("gpt")
    profile = measured_profile(graph, {"cpu": 1.0})
    compare.save_profile(profile, runs)
    done = runtime_cli("run", tmp_path / "plan.json", "--steps", 8, "--runs-dir", runs)
    assert done.returncode == 0, done.stderr
    assert "measured" in done.stderr and "predicted (calibrated" in done.stderr

    conn = store.connect(runs)
    (run_id,) = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    rows, sha = compare.stored(conn, run_id)
    assert sha == profile.digest()
    by = {(c.rank, c.name): c for c in rows}
    assert set(by) == {(-1, n) for n in compare.STEP_FIGURES} | {
        (r, n) for r in (0, 1) for n in compare.RANK_FIGURES
    }

    # Measured: the stored metrics, read back independently.
    def values(rank, name):
        return [
            v
            for (v,) in conn.execute(
                "SELECT value FROM metrics WHERE run_id = ? AND rank = ? AND name = ? AND step > ?"
                " ORDER BY step",
                (run_id, rank, name, compare.WARMUP),
            )
        ]

    assert by[(-1, "step_time_s")].measured == statistics.median(values(-1, "step_time_s"))
    assert by[(-1, "bubble_fraction")].measured == statistics.median(values(-1, "bubble_fraction"))
    for rank in (0, 1):
        assert by[(rank, "wait_s")].measured == statistics.median(values(rank, "comm_wait_s"))
        peak, tensors = values(rank, "peak_memory_bytes")[-1], values(rank, "tensor_memory_bytes")[-1]
        assert by[(rank, "tensor_memory_bytes")].measured == tensors
        assert 0 < tensors < peak  # the interpreter, torch and gloo are not the plan's
        # The memory model counts what this rank's tensors peak at (parameters, gradients,
        # optimizer state, activations in flight, receive buffers, temporaries).
        assert abs(by[(rank, "tensor_memory_bytes")].error) < 0.25

    # Predicted: exactly what price() says, with and without the profile.
    datasheet, calibrated = price(graph, plan.cluster, plan), price(graph, plan.cluster, plan, profile)
    assert by[(-1, "step_time_s")].datasheet == pytest.approx(datasheet.step_time_s)
    assert by[(-1, "step_time_s")].calibrated == pytest.approx(calibrated.step_time_s)
    assert by[(-1, "step_time_s")].error == pytest.approx(
        (calibrated.step_time_s - by[(-1, "step_time_s")].measured) / by[(-1, "step_time_s")].measured
    )
