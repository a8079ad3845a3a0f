"""The measured bubble: GPipe with 2 equal stages idles about half the time with one
micro-batch, and much less with eight (ideal: (p - 1) / (m + p - 1) = 1/2 and 1/9)."""

from __future__ import annotations

import statistics

import pytest

from tests.runs import run_ranks, step_losses, zoo_plan

pytestmark = pytest.mark.slow
# Four 1024x1024 blocks, two per stage: compute dominates sends and the (SGD) optimizer.
WIDE_MLP = {"hidden": [1024] * 5}
SGD = {"optimizer": {"name": "sgd", "lr": 0.01}}


def measured_bubble(tmp_path, micro_batches: int) -> float:
    plan = zoo_plan(
        "mlp",
        WIDE_MLP,
        ranks=2,
        strategy="pp",
        global_batch=256,
        pp_degree=2,
        schedule="gpipe",
        micro_batches=micro_batches,
        cuts=[3],
        training=SGD,
    )
    runs = run_ranks(plan, tmp_path / f"m{micro_batches}", steps=6)
    bubbles = step_losses(runs, "bubble_fraction")
    print(micro_batches, [round(b, 3) for b in bubbles])
    return statistics.median(bubbles[1:])  # step 1 warms up


def test_gpipe_bubble_shrinks_with_micro_batches(tmp_path):
    one = measured_bubble(tmp_path, 1)
    eight = measured_bubble(tmp_path, 8)
    assert 0.35 <= one <= 0.65, one
    assert eight < one, (one, eight)
