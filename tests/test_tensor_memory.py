"""What a rank's memory holds: the tensor peak, the process's private pages, and no
parameters of stages another rank runs."""

from __future__ import annotations

import gc
import weakref

import torch

from runtime.metrics import memory_peaks, reset_peak_memory
from runtime.pipeline_parallel import _release_other_stages
from runtime.tensor_memory import TensorPeak

CPU = torch.device("cpu")
MB = 10**6


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
