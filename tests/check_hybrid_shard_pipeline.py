"""hybrid_shard inside pipeline stages against one process, on 8 ranks (run by hand).

    python tests/check_hybrid_shard_pipeline.py [SCHEDULE ...]

The toy GPT as 4 replicas of a 2-stage pipeline on two nodes of four CPU ranks
(``cpu:4x2``): each stage sharded over the two replicas on its node and replicated across
the nodes, a (pp, replicate, shard) mesh. Every step's loss and every parameter after 10
steps must match one process (`tests.test_parity.assert_parity`). Eight ranks are more
than the suite starts on a 2-core machine (it runs at most 4), so this is not collected by
pytest; each schedule takes about half a minute here.
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
from tests.test_parity import assert_parity

LAYOUTS = {"gpipe": 1, "1f1b": 1, "interleaved_1f1b": 2}  # schedule -> virtual stages


def main(schedules: list[str]) -> None:
    for schedule in schedules:
        plan = make_plan(
            graph_of("gpt", '{"size": "toy"}'),
            parse_short_form("cpu:4x2"),
            strategy="hybrid",
            global_batch=16,
            dp_degree=4,
            pp_degree=2,
            schedule=schedule,
            micro_batches=2,
            virtual_stages=LAYOUTS[schedule],
            dp_mode="hybrid_shard",
            training={"steps": 10, "optimizer": {"name": "adamw", "lr": 1e-3}},
        )
        tmp = Path(tempfile.mkdtemp(prefix="hsdp-pp-"))
        try:
            t = time.perf_counter()
            assert_parity(plan, tmp)
            print(f"{schedule}: parity holds on {len(plan.ranks)} ranks ({time.perf_counter() - t:.0f} s)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(LAYOUTS))
