"""Checks against one process that need 8 ranks (run by hand).

    python tests/check_eight_ranks.py [CASE ...]

Every step's loss and every parameter after 10 steps must match one process
(`tests.test_parity.assert_parity`), for the toy GPT on two nodes of four CPU ranks
(``cpu:4x2``):

- ``gpipe``, ``1f1b``, ``interleaved_1f1b``: ``hybrid_shard`` inside pipeline stages, 4
  replicas of a 2-stage pipeline, each stage sharded over the two replicas on its node and
  replicated across the nodes (a (pp, replicate, shard) mesh);
- ``tensor``: ``hybrid_shard`` over tensor groups, 4 replicas of a tensor group of 2 (a
  (replicate, shard, tp) mesh);
- ``fsdp_tp_pp`` and ``fsdp_tp_pp_sp``: ``full_shard`` x pp 2 x tp 2, with 1F1B, and with
  interleaved 1F1B and sequence parallelism.

Eight ranks are more than the suite starts on a 2-core machine (it runs at most 4), so this
is not collected by pytest; each case takes about half a minute here.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.cluster import parse_short_form
from planner.search.build import make_plan
from tests.runs import graph_of
from tests.test_parity import SGD, assert_parity

PIPELINES = {"gpipe": 1, "1f1b": 1, "interleaved_1f1b": 2}  # schedule -> virtual stages
TENSOR_PIPELINE = {
    "strategy": "hybrid",
    "dp_degree": 2,
    "pp_degree": 2,
    "tp_degree": 2,
    "micro_batches": 2,
    "dp_mode": "full_shard",
    "training": {"steps": 10, **SGD},
}
CASES = {
    **{
        schedule: {
            "strategy": "hybrid",
            "dp_degree": 4,
            "pp_degree": 2,
            "schedule": schedule,
            "micro_batches": 2,
            "virtual_stages": virtual,
        }
        for schedule, virtual in PIPELINES.items()
    },
    # Each node's four ranks two tensor groups of two, sharded over the two groups and
    # replicated across the nodes: a (replicate, shard, tp) mesh, 2-D DTensor parameters.
    # Tensor-parallel cases train with SGD, as tests/test_parity_tensor.py says why.
    "tensor": {"strategy": "dp", "dp_degree": 4, "tp_degree": 2, "training": {"steps": 10, **SGD}},
    "fsdp_tp_pp": {**TENSOR_PIPELINE, "schedule": "1f1b"},
    "fsdp_tp_pp_sp": {
        **TENSOR_PIPELINE,
        "schedule": "interleaved_1f1b",
        "virtual_stages": 2,
        "sequence_parallel": True,
    },
}
ADAMW = {"steps": 10, "optimizer": {"name": "adamw", "lr": 1e-3}}


def main(cases: list[str]) -> None:
    for case in cases:
        plan = make_plan(
            graph_of("gpt", '{"size": "toy"}'),
            parse_short_form("cpu:4x2"),
            global_batch=16,
            **{"dp_mode": "hybrid_shard", "training": ADAMW, **CASES[case]},
        )
        tmp = Path(tempfile.mkdtemp(prefix="eight-"))
        try:
            t = time.perf_counter()
            assert_parity(plan, tmp)
            print(f"{case}: parity holds on {len(plan.ranks)} ranks ({time.perf_counter() - t:.0f} s)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
