"""The search: hand-checked placements, pure strategies always listed, reasons for misfits."""

import subprocess
import sys

import pytest

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import Cluster, resolve_cluster
from planner.cost.price import price
from planner.errors import PlannerError
from planner.plan import load_plan
from planner.search.build import make_plan
from planner.search.search import search

BIG_VOCAB = {"vocab_size": 16384, "d_model": 256, "n_layer": 8, "seq_len": 128, "n_head": 8}


def _layers(blocks):
    return sum(b.startswith("blocks.") for b in blocks)


def test_a_large_vocabulary_head_gets_fewer_blocks_than_the_embedding():
    # Measured on cpu:2 (docs/facts.md, Where the time goes): the fastest 2-stage split was
    # embedding + 6 or 7 blocks | the rest + head.
    graph = coarsen(trace("gpt", BIG_VOCAB))
    for schedule in ("gpipe", "1f1b"):
        result = search(
            graph,
            resolve_cluster("cpu:2"),
            global_batch=16,
            strategy="pp",
            schedule=schedule,
            micro_batches=8,
        )
        first, second = result.best.plan.stage_blocks()
        assert first[:2] == ["tok_emb", "pos_emb"] and second[-1] == "head"
        assert _layers(first) in (6, 7), first


def test_a_device_twice_as_fast_gets_about_twice_the_layers():
    # fp32 peaks: L4 30.3 TFLOP/s, V100 15.7 (1.9x); compute-bound blocks (d_model 1024).
    graph = coarsen(trace("gpt", {"n_layer": 12, "d_model": 1024, "seq_len": 256, "n_head": 16}))
    result = search(
        graph,
        resolve_cluster("l4:1+v100-16gb:1"),
        global_batch=8,
        strategy="pp",
        schedule="gpipe",
        micro_batches=4,
    )
    plan = result.best.plan
    layers = {
        plan.cluster.device(plan.ranks[s.pp_rank].device).kind: _layers(b)
        for s, b in zip(plan.stages, plan.stage_blocks(), strict=True)
    }
    assert layers == {"l4": 8, "v100-16gb": 4}


def test_a100s_get_more_layers_than_v100s():
    # fp16 peaks: A100 312 TFLOP/s, V100 125.
    graph = coarsen(trace("gpt", {"n_layer": 16, "d_model": 512, "seq_len": 128, "n_head": 8}))
    cluster = resolve_cluster("a100-80gb:4+v100-32gb:4")
    result = search(graph, cluster, global_batch=64, training={"precision": "fp16-mixed"})
    best = result.best
    per_kind = {"a100-80gb": [], "v100-32gb": []}
    for s, blocks in zip(best.plan.stages, best.plan.stage_blocks(), strict=True):
        rank = next(r for r in best.plan.ranks if r.pp_index == s.pp_rank and r.dp_index == 0)
        per_kind[best.plan.cluster.device(rank.device).kind].append(_layers(blocks))
    assert per_kind["a100-80gb"] and per_kind["v100-32gb"], "the best plan uses both kinds"
    assert min(per_kind["a100-80gb"]) > max(per_kind["v100-32gb"]), per_kind


def test_pure_strategies_are_always_listed_with_the_reason_they_do_not_fit():
    graph = coarsen(trace("gpt", {"size": "7b", "seq_len": 256}))
    # Replicated, without recomputation: the levers that would make data parallel fit pinned off.
    result = search(
        graph, resolve_cluster("a100-80gb:4"), global_batch=8, dp_mode="replicate", recompute="none"
    )
    by_strategy = {c.strategy: c for c in result.candidates}
    assert {"dp", "pp"} <= set(by_strategy)
    dp = next(c for c in result.candidates if c.strategy == "dp" and c.dp_degree == 4)
    assert not dp.feasible
    assert (
        "stage 0 on device" in dp.reason
        and "(a100-80gb) needs" in dp.reason
        and "over its 80.00 GiB" in dp.reason
    )
    # 7B with AdamW needs ~107 GB: the model is split, into stages or tensor groups.
    assert result.best is not None and (result.best.pp_degree > 1 or result.best.tp_degree > 1)
    # Sharded over the four replicas (ZeRO-2 holds 107 / 4 GB and the gathered blocks), it fits.
    sharded = search(graph, resolve_cluster("a100-80gb:4"), global_batch=8, strategy="dp", tp=1)
    assert sharded.best is not None and sharded.best.dp_mode != "replicate"


def test_the_gan_goes_to_two_devices_when_one_cannot_hold_both():
    graph = coarsen(trace("gan", {"hidden": 2048}))
    roomy = resolve_cluster("cpu:2")
    assert search(graph, roomy, global_batch=64).best.strategy == "dp"  # the transfer is not worth it
    # Give each device just what its network needs in the mp plan: neither holds both.
    mp = search(graph, roomy, global_batch=64, strategy="mp").best.prediction
    need = {m.device: m.total for m in mp.memory}
    alone = search(graph, roomy, global_batch=64, strategy="dp").candidates
    both = min(c.prediction.memory[0].total for c in alone)
    tight = Cluster(
        devices=[{"id": d, "kind": "cpu", "node": 0, "memory_bytes": need[d] + 2**20} for d in (0, 1)],
        links=[{"a": 0, "b": 1, "kind": "loopback"}],
    )
    assert both > max(need.values()) + 2**20
    result = search(graph, tight, global_batch=64)
    best = result.best
    assert best.strategy == "mp"
    assert [(s.name, best.plan.ranks[s.pp_rank].device) for s in best.plan.stages] == [
        ("generator", 0),
        ("discriminator", 1),
    ]
    assert [c.reason for c in result.candidates if c.strategy == "dp"]
    assert all("over its" in c.reason for c in result.candidates if c.strategy == "dp")


def test_pins_are_respected_and_bad_requests_explained():
    graph = coarsen(trace("gpt"))
    result = search(
        graph, resolve_cluster("cpu:4"), global_batch=16, strategy="pp", schedule="1f1b", micro_batches=4
    )
    assert {(c.strategy, c.schedule, c.micro_batches) for c in result.candidates} == {("pp", "1f1b", 4)}
    with pytest.raises(PlannerError, match="mp places named sub-networks"):
        search(graph, resolve_cluster("cpu:2"), global_batch=8, strategy="mp")
    with pytest.raises(PlannerError, match="no pp plan with schedule=1f1b, micro-batches=3"):
        search(
            graph, resolve_cluster("cpu:2"), global_batch=8, strategy="pp", schedule="1f1b", micro_batches=3
        )


def test_plan_command_prints_the_table_and_writes_the_best(tmp_path):
    out = tmp_path / "plan.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "planner",
            "plan",
            "--model",
            "gpt",
            "--set",
            "n_layer=4",
            "--cluster",
            "cpu:2",
            "--global-batch",
            "16",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "strategy devices" in run.stdout and "samples/s" in run.stdout and "bubble" in run.stdout
    assert run.stdout.count("* ") == 1
    plan = load_plan(out)
    assert plan.predicted is not None and plan.predicted.step_time_s > 0
    assert plan.model.source == "gpt" and plan.model.overrides == {"n_layer": 4}
    assert f"{plan.model.seq_len:,} tokens per sample" in run.stdout  # what the table is for
    assert plan.training.precision == "fp32"


@pytest.mark.parametrize(
    ("flags", "precision"),
    [(["--precision", "bf16-mixed"], "bf16-mixed"), (["--dtype", "bfloat16"], "bf16-mixed"), ([], "fp32")],
)
def test_the_plan_command_takes_a_precision_and_the_older_dtype(tmp_path, flags, precision):
    out = tmp_path / "plan.json"
    command = [
        "plan",
        "--model",
        "gpt",
        "--set",
        "size=toy",
        "--cluster",
        "cpu:2",
        "--global-batch",
        "8",
        "-o",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "planner", *command, str(out), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert load_plan(out).training.precision == precision


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--precision", "fp8"],
            "invalid choice: 'fp8' (choose from 'fp32', 'bf16-mixed', 'fp16-mixed', 'bf16')",
        ),
        (["--dtype", "float64"], "'float64' is not one of float32, bfloat16, float16"),
        (["--precision", "fp16-mixed"], "cpu has no float16 peak; it supports float32, bfloat16"),
    ],
)
def test_an_unknown_precision_is_one_line_naming_the_choices(flags, message):
    command = ["plan", "--model", "gpt", "--set", "size=toy", "--cluster", "cpu:2", "--global-batch", "8"]
    run = subprocess.run([sys.executable, "-m", "planner", *command, *flags], capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_data_parallel_replicas_of_different_speeds_take_unequal_shares():
    graph = coarsen(trace("gpt", {"n_layer": 4, "d_model": 512, "n_head": 8, "seq_len": 128}))
    cluster = resolve_cluster("h100:1+a100-80gb:1")  # fp32 peaks 67 vs 19.5 TFLOP/s
    best = search(graph, cluster, global_batch=64, strategy="dp").best
    share = {best.plan.ranks[r.dp_index].device: r.batch_share for r in best.plan.replicas}
    assert best.dp_degree == 2 and share[0] > 2 * share[1] and sum(share.values()) == 64
    even = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=64)
    assert best.prediction.step_time_s < price(graph, cluster, even).step_time_s


def test_tensor_parallel_degrees_are_searched_where_the_heads_and_nodes_allow():
    graph = coarsen(trace("gpt", {"d_model": 192, "n_head": 12, "n_layer": 4, "seq_len": 64}))
    result = search(graph, resolve_cluster("h100:8"), global_batch=16)
    assert (
        "tp 8 not tried: block 'blocks.0': tp_degree 8 does not divide its 12 attention heads" in result.notes
    )
    degrees = {c.tp_degree for c in result.candidates}
    assert degrees == {1, 2, 4}  # the best of each degree is priced and listed
    for c in result.candidates:
        assert c.plan.tp_degree == c.tp_degree
        for r in c.plan.ranks:  # a tensor group's ranks lie in one node
            assert r.node == c.plan.rank_of(r.dp_index, r.pp_index).node
    # Across nodes a tensor group stays in one: 4 devices per node allow 1, 2 and 4 only.
    two_nodes = search(graph, resolve_cluster("h100:4x2"), global_batch=16, tp=4)
    assert {c.tp_degree for c in two_nodes.candidates} == {4}
    with pytest.raises(PlannerError, match=r"tp: 8 does not divide every node's devices of a kind \(4\)"):
        search(graph, resolve_cluster("h100:4x2"), global_batch=16, tp=8)


def test_a_model_without_layouts_is_searched_without_tensor_parallelism():
    result = search(coarsen(trace("mlp", {})), resolve_cluster("h100:8"), global_batch=16)
    assert result.notes == ["tp 1 only: no block of this model has a tensor-parallel layout"]
    assert {c.tp_degree for c in result.candidates} == {1}


def test_a_batch_over_memory_is_split_into_as_many_micro_batches_as_it_takes():
    """512 samples of a 125M GPT on one L4 need 16 micro-batches or more: more than three
    halvings, with the largest op's temporaries shrinking along; and at 32 they fit without
    recomputing, which is faster than 16 with it."""
    result = search(
        coarsen(trace("gpt", {"size": "125m"})),
        resolve_cluster("l4:1"),
        global_batch=512,
        training={"precision": "bf16-mixed"},
    )
    best = result.best
    assert best is not None, [c.reason for c in result.candidates]
    assert best.plan.training.micro_batches >= 16
    assert all(m.fits for m in best.prediction.memory)
    assert best.recompute == "none"
    recomputing = search(
        coarsen(trace("gpt", {"size": "125m"})),
        resolve_cluster("l4:1"),
        global_batch=512,
        micro_batches=16,
        training={"precision": "bf16-mixed"},
    ).best
    assert recomputing.recompute != "none"
    assert best.prediction.step_time_s < recomputing.prediction.step_time_s
