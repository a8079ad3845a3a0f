"""Sharded data parallel (FSDP2) and recomputation against single-process training.

Real gloo processes, one thread each: every step's loss and every parameter after 10 steps
(gathered whole from the shards) match one process with assert_close(rtol=1e-5, atol=1e-6);
recomputation changes nothing of either; a run checkpointed under DDP resumes sharded with the
losses of an uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch

from planner.cluster import parse_short_form
from planner.search.build import make_plan
from tests.runs import graph_of, zoo_plan
from tests.test_parity import SGD, assert_parity, assert_resumes

pytestmark = pytest.mark.slow
TOY_GPT = {"size": "toy"}


@pytest.mark.parametrize("dp_mode", ["full_shard", "shard_grad_op"])
def test_sharded_data_parallel_two_ranks(tmp_path, dp_mode):
    plan = zoo_plan("gpt", TOY_GPT, ranks=2, strategy="dp", global_batch=8, dp_degree=2, dp_mode=dp_mode)
    assert_parity(plan, tmp_path)


def test_full_shard_with_a_tied_embedding_and_head_in_one_unit(tmp_path):
    plan = zoo_plan(
        "gpt",
        {**TOY_GPT, "tie_embeddings": True},
        ranks=2,
        strategy="dp",
        global_batch=8,
        dp_degree=2,
        dp_mode="full_shard",
        training=SGD,
    )
    assert_parity(plan, tmp_path)


def test_full_shard_with_unequal_shares(tmp_path):
    plan = zoo_plan(
        "mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, shares=[24, 8], dp_mode="full_shard"
    )
    assert_parity(plan, tmp_path)


def test_hybrid_shard_two_nodes_of_two(tmp_path):
    plan = make_plan(
        graph_of("mlp"),
        parse_short_form("cpu:2x2"),  # shard in a node, replicate across the two
        strategy="dp",
        global_batch=32,
        dp_degree=4,
        dp_mode="hybrid_shard",
        training={"steps": 10, "optimizer": {"name": "adamw", "lr": 1e-3}},
    )
    assert_parity(plan, tmp_path)


@pytest.mark.parametrize("dp_mode", ["replicate", "full_shard"])
def test_recomputation_changes_no_loss_and_no_parameter(tmp_path, dp_mode):
    plan = zoo_plan(
        "gpt", TOY_GPT, ranks=2, strategy="dp", global_batch=8, dp_degree=2, dp_mode=dp_mode, recompute="full"
    )
    assert {s.recompute for s in plan.stages} == {"full"}
    assert_parity(plan, tmp_path)


def test_a_ddp_checkpoint_resumes_fully_sharded_with_the_uninterrupted_losses(tmp_path):
    def plan(dp_mode):
        return zoo_plan(
            "gpt",
            TOY_GPT,
            ranks=2,
            strategy="dp",
            global_batch=8,
            dp_degree=2,
            dp_mode=dp_mode,
            training={"steps": 8, "checkpoint_every": 4},
        )

    assert_resumes(plan("replicate"), plan("full_shard"), tmp_path)


def dp2_pp2(schedule: str, overrides: dict | None = None, **choices):
    """The toy GPT as 2 replicas of a 2-stage pipeline on 4 ranks, 2 micro-batches."""
    return zoo_plan(
        "gpt",
        {**TOY_GPT, **(overrides or {})},
        ranks=4,
        strategy="hybrid",
        global_batch=8,
        dp_degree=2,
        pp_degree=2,
        schedule=schedule,
        micro_batches=2,
        **choices,
    )


@pytest.mark.parametrize(("schedule", "virtual_stages"), [("gpipe", 1), ("1f1b", 1), ("interleaved_1f1b", 2)])
def test_fully_sharded_pipeline_stages_with_each_schedule(tmp_path, schedule, virtual_stages):
    # dp 2 x pp 2 on 4 ranks: each stage sharded over its two replicas, torch's schedule
    # deferring the reduce-scatter to the stage's last backward.
    plan = dp2_pp2(schedule, virtual_stages=virtual_stages, dp_mode="full_shard")
    assert len(plan.stages) == 2 * virtual_stages
    assert_parity(plan, tmp_path)


def test_pipeline_stages_recomputing_sharded_after_forward_with_unequal_shares(tmp_path):
    # shard_grad_op keeps each block gathered for its backward; replica shares 6 and 2 are
    # weighted into FSDP's average; every block of both stages runs its forward twice.
    plan = dp2_pp2("1f1b", shares=[6, 2], dp_mode="shard_grad_op", recompute="full")
    assert [s.recompute for s in plan.stages] == ["full", "full"]
    assert_parity(plan, tmp_path)


def test_pipeline_recomputing_every_other_block(tmp_path):
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=2,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=4,
        recompute="every-2",
    )
    assert_parity(plan, tmp_path)


def test_sharded_pipeline_sums_a_tied_embedding_and_head_shard_by_shard(tmp_path):
    plan = dp2_pp2("gpipe", {"tie_embeddings": True}, dp_mode="full_shard", training=SGD)
    per_rank = assert_parity(plan, tmp_path)
    assert [(r.dp_index, r.pp_index) for r in plan.ranks[:2]] == [(0, 0), (0, 1)]
    # The first and the last stage's copies of the tied weight stay equal.
    torch.testing.assert_close(per_rank[0]["head.weight"], per_rank[1]["head.weight"], rtol=0, atol=0)
