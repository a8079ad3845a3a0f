"""What a rank's memory holds: the tensor peak, the process's private pages, and no
parameters of stages another rank runs."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import pytest
import torch

from planner.cluster import parse_short_form
from planner.cost.price import price
from runtime.parallel.pipeline_parallel import _release_other_stages
from runtime.rank.tensor_memory import TensorPeak
from runtime.supervise import store
from tests.runs import ROOT, graph_of, run_ranks, zoo_plan

CPU = torch.device("cpu")
MB = 10**6
WIDE_MLP = {"hidden": [1024] * 4}


def test_the_tensor_peak_is_the_highest_total_allocated_since_the_start():
    before = torch.empty(3 * MB, dtype=torch.uint8)  # allocated before: not counted, even when freed
    probe = TensorPeak(CPU)
    probe.start()
    assert probe.counting and probe.peak() is None  # known only once the window ends
    del before
    first = torch.empty(MB, dtype=torch.uint8)
    second = torch.empty(2 * MB, dtype=torch.uint8)  # 3 MB held together
    del first, second
    kept = torch.empty(MB // 2, dtype=torch.uint8)
    probe.stop()
    assert not probe.counting
    assert probe.peak() == 3 * MB
    del kept
    probe.stop()  # a second stop changes nothing
    assert probe.peak() == 3 * MB


PRIVATE_PAGES = """
import torch
from runtime.rank.metrics import memory_peaks, reset_peak_memory
CPU, MB = torch.device("cpu"), 10**6
reset_peak_memory(CPU)
peak, private = memory_peaks(CPU)
assert 0 < private < peak, (private, peak)  # torch's libraries are mapped from files
block = torch.ones(64 * MB, dtype=torch.uint8)  # touched: resident, private
grown_peak, grown_private = memory_peaks(CPU)
assert grown_private - private >= 60 * MB and grown_peak - peak >= 60 * MB, (private, grown_private)
"""


def test_private_memory_leaves_out_pages_backed_by_files():
    # In a fresh process: in this one, freed heap pages of earlier tests may already be
    # resident and take the new block without any growth.
    done = subprocess.run(
        [sys.executable, "-c", PRIVATE_PAGES], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_pipeline_rank_keeps_no_parameters_of_the_stages_it_does_not_run():
    from torch.distributed.pipelining import SplitPoint, pipeline

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    first_stage_weight = weakref.ref(model[0].weight)
    pipe = pipeline(model, mb_args=(torch.zeros(1, 256),), split_spec={"1": SplitPoint.BEGINNING})
    del model
    # torch's stage keeps the split graph, and through its owning module every stage.
    graph_owner = pipe.split_gm
    _release_other_stages(pipe, mine=[1])
    del pipe
    gc.collect()
    assert first_stage_weight() is None
    kept = [p.shape for p in graph_owner.parameters()]
    assert kept == [torch.Size([256, 256]), torch.Size([256])]  # stage 1's Linear only


@pytest.mark.slow
def test_a_pipeline_ranks_measured_tensor_memory_is_its_stages_and_not_the_whole_model(tmp_path):
    # Four 1024x1024 layers, two per rank: had the other stage's weights stayed alive
    # (torch's split graph is freed only by the cycle collector), each rank would measure
    # 8 MB more than its prediction (about 25%).
    plan = zoo_plan(
        "mlp",
        WIDE_MLP,
        ranks=2,
        strategy="pp",
        global_batch=256,
        pp_degree=2,
        schedule="gpipe",
        micro_batches=4,
        cuts=[2],
    )
    graph = graph_of("mlp", json.dumps(WIDE_MLP, sort_keys=True))
    prices = price(graph, parse_short_form("cpu:2"), plan).memory
    predicted = {m.rank: m.total - m.overhead - m.runtime for m in prices}
    runs = run_ranks(plan, tmp_path, steps=3)
    rows, _ = store.read_metrics(store.connect(runs), "test", names=["tensor_memory_bytes"])
    measured = {m.rank: m.value for m in rows}
    assert sorted(measured) == [0, 1]
    for rank, value in measured.items():
        assert abs(predicted[rank] - value) / value < 0.10, (rank, predicted[rank], value)


def test_an_explained_peak_says_what_the_tensors_held_and_what_ran(tmp_path):
    path = tmp_path / "explained" / "rank0.json"
    probe = TensorPeak(CPU, explain=path)
    probe.start()
    layer = torch.nn.Linear(512, 512)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(64, 512)).sum().backward()
    optimizer.step()
    probe.stop()
    doc = json.loads(path.read_text())
    weight = 512 * 512 * 4
    assert doc["largest"]["PARAMETER"][0] == weight and doc["largest"]["GRADIENT"][0] == weight
    assert doc["categorized_bytes"] == sum(doc["by_category"].values()) <= probe.peak()
    assert any("backward" in name.lower() or "step" in name.lower() for name in doc["running"])


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "fp16-mixed", "bf16"])
@pytest.mark.parametrize(("optimizer", "momentum"), [("adamw", 0.0), ("sgd", 0.9), ("sgd", 0.0)])
def test_the_model_states_a_rank_holds_are_the_terms_its_precision_prices(precision, optimizer, momentum):
    from planner.precision import Precision
    from runtime.rank.model import make_optimizer
    from runtime.rank.tensor_memory import check_model_states, held_model_states

    training = {"precision": precision, "optimizer": {"name": optimizer, "momentum": momentum}}
    plan = zoo_plan("mlp", ranks=1, strategy="dp", global_batch=4, training=training)
    dtype = getattr(torch, Precision(precision).recipe.weights)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2)).to(dtype)
    opt = make_optimizer(plan, list(model.parameters()))
    model(torch.ones(4, 8, dtype=dtype)).sum().backward()
    opt.step()
    held = held_model_states(dict(model.named_parameters()), [opt])
    count = sum(p.numel() for p in model.parameters())
    assert check_model_states(Precision(precision), optimizer, momentum, held, count) == []
    if precision == "bf16":  # the same weights priced as fp32: every term named
        problems = check_model_states(Precision.FP32, optimizer, momentum, held, count)
        assert problems[0].startswith("parameters: holds 2.00 B/param, the fp32 plan prices 4.00")


@pytest.mark.slow
def test_a_model_too_big_for_one_rank_trains_as_a_pipeline_within_each_ranks_memory(tmp_path):
    from planner.cluster import Cluster
    from planner.search.search import search

    gpt = {"vocab_size": 4096, "d_model": 256, "n_layer": 4, "n_head": 4, "seq_len": 64}
    graph = graph_of("gpt", json.dumps(gpt, sort_keys=True))
    params = sum(graph.nodes[b]["param_count"] for b in graph.nodes)
    capacity = 12 * params  # fp32 AdamW needs 16 B a parameter for the weights' states alone

    def cluster(n: int) -> Cluster:  # cpu:n with a small memory each
        doc = parse_short_form(f"cpu:{n}").model_dump()
        return Cluster(**{**doc, "devices": [{**d, "memory_bytes": capacity} for d in doc["devices"]]})

    training = {"steps": 5, "optimizer": {"name": "adamw", "lr": 1e-3}}
    alone = search(graph, cluster(1), global_batch=8, strategy="dp", training=training)
    assert alone.best is None  # the planner says it cannot, naming the bytes over
    assert "GiB over" in alone.candidates[0].reason or "MiB over" in alone.candidates[0].reason
    plan = search(graph, cluster(2), global_batch=8, strategy="pp", training=training).best.plan
    assert plan.pp_degree == 2 and all(m.bytes <= capacity for m in plan.predicted.peak_memory)
    runs = run_ranks(plan, tmp_path, steps=5)
    rows, _ = store.read_metrics(store.connect(runs), "test", names=["tensor_memory_bytes"])
    measured = {m.rank: m.value for m in rows}
    assert sorted(measured) == [0, 1]
    for rank, value in measured.items():
        assert value < capacity, (rank, value, capacity)
