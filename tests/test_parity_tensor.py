"""Tensor parallel against single-process training.

Real gloo processes, one thread each: every step's loss and every parameter after 10 steps
(gathered whole from the shards) match one process with assert_close(rtol=1e-5, atol=1e-6);
a run checkpointed tensor parallel resumes without it with the losses of an uninterrupted run.

The optimizer is SGD with momentum. A row-split layer's output is the sum of the ranks'
partial products, added in another order than one process adds them, so activations and
gradients differ in their last bits; AdamW divides each gradient element by its own running
magnitude and turns that rounding, on an element whose gradient is near zero, into an update
of the learning rate's size (with AdamW one element of 4,096 of a key projection was 3.3e-6
off after 10 steps, every loss within tolerance). A wrong split (a shard's gradient summed
twice, a replica not averaged) is off by the size of the update itself under either.
"""

from __future__ import annotations

import json

import pytest

from tests.runs import zoo_plan
from tests.test_materialise import LLAMA  # 3 layers, 4 heads, 2 key/value heads
from tests.test_parity import SGD, assert_parity, assert_resumes

pytestmark = pytest.mark.slow
TOY_GPT = {"size": "toy"}
GPT_SPLIT = ("attn.q.weight", "attn.proj.weight")
LLAMA_SPLIT = ("self_attn.q_proj.weight", "self_attn.o_proj.weight")


def assert_split(plan, tmp_path, colwise: str, rowwise: str, columns=("S(0)", "S(1)")) -> None:
    """Every rank held its own shard of the split layers it ran, not a whole copy: each
    parameter ending in ``colwise`` sharded along its output features (``columns[0]``: a
    linear layer's weight rows) on the tensor axis (the last), each ending in ``rowwise``
    along its input features (``columns[1]``); GPT-2's ``Conv1D`` weights are stored (in,
    out), and its fused q | k | v is a strided shard. Parity alone cannot tell: a model left
    whole on every rank trains the same."""
    out_features, in_features = columns
    for rank in range(len(plan.ranks)):
        held = json.loads((tmp_path / "runs" / "params" / f"rank{rank}.placements.json").read_text())
        cols = [pl[-1] for fqn, pl in held.items() if fqn.endswith(colwise)]
        rows = [pl[-1] for fqn, pl in held.items() if fqn.endswith(rowwise)]
        assert cols and set(cols) == {out_features}, (rank, held)
        assert rows and set(rows) == {in_features}, (rank, held)


@pytest.mark.parametrize("tp", [2, 4])
def test_the_gpt_split_across_a_tensor_group(tmp_path, tp):
    plan = zoo_plan("gpt", TOY_GPT, ranks=tp, strategy="dp", global_batch=8, tp_degree=tp, training=SGD)
    assert [r.coords for r in plan.ranks] == [(0, 0, t) for t in range(tp)]
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


def test_replicas_of_a_tensor_group_with_unequal_shares(tmp_path):
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=4,
        strategy="dp",
        global_batch=8,
        dp_degree=2,
        tp_degree=2,
        shares=[6, 2],
        training=SGD,
    )
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


@pytest.mark.parametrize(("dp_mode", "recompute"), [("full_shard", "none"), ("shard_grad_op", "full")])
def test_sharded_replicas_of_tensor_groups(tmp_path, dp_mode, recompute):
    # FSDP2 shards each rank's tensor-parallel shards over the dp group (2-D parameters).
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=4,
        strategy="dp",
        global_batch=8,
        dp_degree=2,
        tp_degree=2,
        dp_mode=dp_mode,
        recompute=recompute,
        training=SGD,
    )
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


@pytest.mark.parametrize("tp", [2, 4])
def test_sequence_parallel_gpt(tmp_path, tp):
    # Norms and residual adds on each rank's slice of the sequence, reduce-scatters and
    # all-gathers in place of the all-reduces; the head whole on every rank.
    sp = {"tp_degree": tp, "sequence_parallel": True}
    plan = zoo_plan("gpt", TOY_GPT, ranks=tp, strategy="dp", global_batch=8, training=SGD, **sp)
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


def test_sequence_parallel_under_sharded_replicas_recomputing(tmp_path):
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=4,
        strategy="dp",
        global_batch=8,
        dp_degree=2,
        tp_degree=2,
        sequence_parallel=True,
        dp_mode="full_shard",
        recompute="full",
        training=SGD,
    )
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


@pytest.mark.parametrize(
    ("schedule", "choices"),
    [("1f1b", {}), ("gpipe", {"sequence_parallel": True, "recompute": "full"})],
)
def test_pipeline_stages_split_across_tensor_groups(tmp_path, schedule, choices):
    # The stages are traced by pipeline(): their linear layers are traced modules, split by
    # the same layouts; each tensor index is a pipeline of its own, sending whole activations.
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=4,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        tp_degree=2,
        schedule=schedule,
        micro_batches=2,
        training=SGD,
        **choices,
    )
    assert [r.coords for r in plan.ranks] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


def test_a_tensor_parallel_block_recomputes_its_forward(tmp_path):
    plan = zoo_plan(
        "gpt", TOY_GPT, ranks=2, strategy="dp", global_batch=8, tp_degree=2, recompute="full", training=SGD
    )
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT_SPLIT)


def test_hugging_face_llama_with_grouped_query_attention_split_in_two(tmp_path):
    # At SGD's lr 0.1 this small Llama's loss rises after its first step (5.78, 5.58, 5.75):
    # unstable training grows last-bit differences (a 2-layer one's embedding ended 2e-5
    # apart after 10 steps, every loss within tolerance). At 0.01 it trains.
    sgd = {"optimizer": {**SGD["optimizer"], "lr": 0.01}}
    plan = zoo_plan("hf:llama", LLAMA, ranks=2, strategy="dp", global_batch=4, tp_degree=2, training=sgd)
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *LLAMA_SPLIT)


def test_hugging_face_llama_sharded_replicas_of_tensor_groups(tmp_path):
    sgd = {"optimizer": {**SGD["optimizer"], "lr": 0.01}}
    layout = {"dp_degree": 2, "tp_degree": 2, "dp_mode": "full_shard"}
    plan = zoo_plan("hf:llama", LLAMA, ranks=4, strategy="dp", global_batch=4, training=sgd, **layout)
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *LLAMA_SPLIT)


@pytest.mark.parametrize(
    ("overrides", "layout"),
    [({"num_key_value_heads": 4}, {"tp_degree": 4}), ({}, {"dp_degree": 2, "tp_degree": 2})],
)
def test_hugging_face_llama_at_tp_4_and_replicas_of_tensor_groups(tmp_path, overrides, layout):
    # tp 4 needs as many key/value heads (this Llama's 2 do not divide by 4).
    sgd = {"optimizer": {**SGD["optimizer"], "lr": 0.01}}
    plan = zoo_plan(
        "hf:llama", {**LLAMA, **overrides}, ranks=4, strategy="dp", global_batch=4, training=sgd, **layout
    )
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *LLAMA_SPLIT)


def test_hugging_face_llama_sequence_parallel(tmp_path):
    # The decoder layers take the sequence's slices; the attention (called with a
    # ``hidden_states`` keyword) gathers them, its rotary embeddings and mask made whole.
    sgd = {"optimizer": {**SGD["optimizer"], "lr": 0.01}}
    sp = {"tp_degree": 2, "sequence_parallel": True}
    plan = zoo_plan("hf:llama", LLAMA, ranks=2, strategy="dp", global_batch=4, training=sgd, **sp)
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *LLAMA_SPLIT)


GPT2 = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "seq_len": 32,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


@pytest.mark.parametrize(
    ("ranks", "choices"),
    [
        (2, {"tp_degree": 2}),
        (4, {"tp_degree": 4, "sequence_parallel": True}),
        (4, {"dp_degree": 2, "tp_degree": 2}),
    ],
)
def test_hugging_face_gpt2_with_its_fused_qkv_split_by_heads(tmp_path, ranks, choices):
    # c_attn holds q | k | v: each rank keeps its heads of each (a strided shard), and the
    # gathered weight is GPT-2's own. Dropout off; SGD (tests/test_parity.py says why).
    plan = zoo_plan("hf:gpt2", GPT2, ranks=ranks, strategy="dp", global_batch=4, training=SGD, **choices)
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT2_SPLIT, columns=GPT2_COLUMNS)


GPT2_SPLIT = ("attn.c_attn.weight", "attn.c_proj.weight")
GPT2_COLUMNS = ("_S(1, 3)", "S(0)")  # Conv1D weights are (in, out); c_attn a strided shard


@pytest.mark.parametrize(
    ("source", "overrides", "choices"),
    [
        ("hf:llama", LLAMA, {"schedule": "1f1b"}),
        ("hf:llama", LLAMA, {"schedule": "gpipe", "sequence_parallel": True, "recompute": "full"}),
        ("hf:gpt2", GPT2, {"schedule": "1f1b", "sequence_parallel": True}),
    ],
)
def test_hugging_face_pipeline_stages_split_across_tensor_groups(tmp_path, source, overrides, choices):
    # The stages are traced: grouped-query attention's head count left to the tensor, GPT-2's
    # Conv1D layers put back as built, its cut of q | k | v divided; under sequence
    # parallelism the traced attention's hidden state found among its inputs (GPT-2's comes
    # after the mask).
    sgd = {"optimizer": {**SGD["optimizer"], "lr": 0.01}} if source == "hf:llama" else SGD
    plan = zoo_plan(
        source,
        overrides,
        ranks=4,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        tp_degree=2,
        micro_batches=2,
        training=sgd,
        **choices,
    )
    assert_parity(plan, tmp_path)
    if source == "hf:llama":
        assert_split(plan, tmp_path, *LLAMA_SPLIT)
    else:
        assert_split(plan, tmp_path, *GPT2_SPLIT, columns=GPT2_COLUMNS)


def test_hugging_face_gpt2_sharded_replicas_of_tensor_groups(tmp_path):
    # FSDP2 shards c_attn's bias along the dim the tensor group strides: each rank's part is
    # gathered split by split (runtime.parallel.conv1d_parallel.whole), here and in checkpoints.
    layout = {"dp_degree": 2, "tp_degree": 2, "dp_mode": "full_shard"}
    plan = zoo_plan("hf:gpt2", GPT2, ranks=4, strategy="dp", global_batch=4, training=SGD, **layout)
    assert_parity(plan, tmp_path)
    assert_split(plan, tmp_path, *GPT2_SPLIT, columns=GPT2_COLUMNS)


@pytest.mark.parametrize("sharded_first", [True, False])
def test_a_sharded_gpt2_tensor_parallel_checkpoint_and_replicas_resume_each_other(tmp_path, sharded_first):
    # Saved whole from its two splits, and each rank's part taken back from the whole.
    def plan(ranks, **layout):
        train = {**SGD, "steps": 8, "checkpoint_every": 4}
        return zoo_plan("hf:gpt2", GPT2, ranks=ranks, strategy="dp", global_batch=4, training=train, **layout)

    sharded, replicas = plan(4, dp_degree=2, tp_degree=2, dp_mode="full_shard"), plan(2, dp_degree=2)
    assert_resumes(*((sharded, replicas) if sharded_first else (replicas, sharded)), tmp_path)


def test_a_gpt2_tensor_parallel_checkpoint_resumes_without_tensor_parallelism(tmp_path):
    # DCP writes a shard as one block of the whole: the fused q | k | v go through it whole.
    def plan(**layout):
        train = {**SGD, "steps": 8, "checkpoint_every": 4}
        return zoo_plan("hf:gpt2", GPT2, ranks=2, strategy="dp", global_batch=4, training=train, **layout)

    assert_resumes(plan(tp_degree=2), plan(dp_degree=2), tmp_path)


def test_a_tensor_parallel_checkpoint_resumes_without_tensor_parallelism(tmp_path):
    # Checkpoints are DCP keyed by FQN, the split blocks saved as DTensors: a plan of two
    # replicas reads them back whole.
    def plan(**layout):
        return zoo_plan(
            "gpt",
            TOY_GPT,
            ranks=2,
            strategy="dp",
            global_batch=8,
            training={**SGD, "steps": 8, "checkpoint_every": 4},
            **layout,
        )

    assert_resumes(plan(tp_degree=2), plan(dp_degree=2), tmp_path)
