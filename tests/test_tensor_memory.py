"""What a rank's memory holds: the tensor peak, the process's private pages, and no
parameters of stages another rank runs."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch

from planner.cluster import parse_short_form
from planner.cost.price import price
from runtime.parallel.pipeline_parallel import _release_other_stages
from runtime.rank.metrics import memory_peaks, reset_peak_memory
from runtime.rank.tensor_memory import TensorPeak
from runtime.supervise import store
from tests.runs import graph_of, run_ranks, zoo_plan

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


def test_private_memory_leaves_out_pages_backed_by_files():
    reset_peak_memory(CPU)
    peak, private = memory_peaks(CPU)
    assert 0 < private < peak  # torch's libraries are mapped from files
    block = torch.ones(64 * MB, dtype=torch.uint8)  # touched: resident, private
    grown_peak, grown_private = memory_peaks(CPU)
    assert grown_private - private >= 60 * MB and grown_peak - peak >= 60 * MB
    del block


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
