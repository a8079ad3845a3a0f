"""Every parallel mode against single-process training on the same data and seed.

Real processes on gloo, one thread each: every step's loss and every parameter after 10
steps must match one process with assert_close(rtol=1e-5, atol=1e-6).
"""

from __future__ import annotations

import pytest
import torch

from runtime.measure.reference import train_single
from runtime.rank.model import build_full_model, shared_parameter_groups
from tests.runs import rank_parameters, run_ranks, step_losses, zoo_plan
from tests.test_materialise import LLAMA

pytestmark = pytest.mark.slow
STEPS = 10
TOY_GPT = {"size": "toy"}
SGD = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}


def assert_parity(plan, tmp_path, *, extra_losses=()):
    reference = train_single(plan, STEPS)
    runs = run_ranks(plan, tmp_path, steps=STEPS)
    losses = step_losses(runs)
    assert len(losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference.losses), rtol=1e-5, atol=1e-6)
    for name in extra_losses:
        torch.testing.assert_close(
            torch.tensor(step_losses(runs, name)), torch.tensor(reference.extra[name]), rtol=1e-5, atol=1e-6
        )
    held: dict[str, torch.Tensor] = {}
    per_rank = []
    for rank in range(len(plan.ranks)):
        params = rank_parameters(runs, rank)
        per_rank.append(params)
        for fqn, value in params.items():
            torch.testing.assert_close(value, reference.parameters[fqn], rtol=1e-5, atol=1e-6, msg=fqn)
            held[fqn] = value
    tied = {fqn for group in shared_parameter_groups(build_full_model(plan).module) for fqn in group}
    assert set(reference.parameters) - set(held) <= tied  # every parameter is held by some rank
    return per_rank


def assert_resumes(before, after, tmp_path, *, steps: int = 8) -> None:
    """A run of ``before`` checkpointed half way and resumed as ``after`` has the losses of an
    uninterrupted run of ``after`` (both plans of one model, checkpointing at steps / 2)."""
    from runtime.parallel import checkpoint

    straight = step_losses(run_ranks(after, tmp_path / "straight", steps=steps))
    first = run_ranks(before, tmp_path / "first", steps=steps // 2)
    saved = checkpoint.latest_checkpoint(first / "test")
    assert saved is not None and saved.step == steps // 2
    resumed = run_ranks(after, tmp_path / "resumed", steps=steps, resume_from=saved.path)
    torch.testing.assert_close(
        torch.tensor(step_losses(resumed)), torch.tensor(straight[steps // 2 :]), rtol=1e-5, atol=1e-6
    )


def test_data_parallel_two_ranks(tmp_path):
    plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2)
    assert_parity(plan, tmp_path)


def test_data_parallel_unequal_shares(tmp_path):
    plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, shares=[24, 8])
    assert_parity(plan, tmp_path)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_two_stages(tmp_path, schedule):
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=2,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule=schedule,
        micro_batches=4,
    )
    per_rank = assert_parity(plan, tmp_path)
    assert "tok_emb.weight" in per_rank[0] and "tok_emb.weight" not in per_rank[1]
    assert "head.weight" in per_rank[1] and "head.weight" not in per_rank[0]


def test_pipeline_interleaved_two_virtual_stages(tmp_path):
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=2,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule="interleaved_1f1b",
        micro_batches=4,
        virtual_stages=2,
    )
    assert len(plan.stages) == 4
    assert_parity(plan, tmp_path)


def test_hybrid_dp2_pp2_on_plan_coordinates(tmp_path):
    # Replica 0 is ranks 0 and 2, replica 1 is ranks 1 and 3: not the default row-major grid.
    plan = zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=4,
        strategy="hybrid",
        global_batch=8,
        dp_degree=2,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=2,
        coords=[(0, 0), (1, 0), (0, 1), (1, 1)],
    )
    per_rank = assert_parity(plan, tmp_path)
    assert "tok_emb.weight" in per_rank[1] and "head.weight" in per_rank[3]


def test_pipeline_tied_embedding_and_head(tmp_path):
    # SGD: the two copies' gradients are summed in another order than autograd sums them
    # in one process; Adam's normalisation blows that last-bit difference up to ~1e-6 on
    # weights with tiny gradients within 10 steps, SGD keeps it at the rounding level.
    plan = zoo_plan(
        "gpt",
        {**TOY_GPT, "tie_embeddings": True},
        ranks=2,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule="gpipe",
        micro_batches=2,
        training=SGD,
    )
    per_rank = assert_parity(plan, tmp_path)
    # Both stages hold a copy of the tied weight, and the copies stay equal.
    torch.testing.assert_close(per_rank[0]["head.weight"], per_rank[1]["head.weight"], rtol=0, atol=0)


def test_gan_generator_and_discriminator_on_their_own_ranks(tmp_path):
    plan = zoo_plan(
        "gan",
        ranks=2,
        strategy="mp",
        global_batch=32,
        pp_degree=2,
        cuts=[1],
        stage_names=["generator", "discriminator"],
    )
    per_rank = assert_parity(plan, tmp_path, extra_losses=("loss_d", "loss_g"))
    assert per_rank[0] and all(fqn.startswith("generator.") for fqn in per_rank[0])
    assert per_rank[1] and all(fqn.startswith("discriminator.") for fqn in per_rank[1])


def test_gan_data_parallel(tmp_path):
    # SGD for the same reason as the tied weights: the generator's gradients come through
    # D and are tiny, and Adam turns their last-bit differences into ~1e-6 within 10 steps.
    plan = zoo_plan(
        "gan", ranks=2, strategy="dp", global_batch=32, dp_degree=2, shares=[20, 12], training=SGD
    )
    assert_parity(plan, tmp_path, extra_losses=("loss_d", "loss_g"))


def test_hugging_face_gpt2_pipeline_with_tied_head(tmp_path):
    # Dropout off (GPT-2's default is 0.1); SGD because c_attn's key bias has a zero true
    # gradient, which Adam would turn into noise-driven updates (docs/runtime.md).
    tiny = {
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 2,
        "seq_len": 32,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
    plan = zoo_plan(
        "hf:gpt2",
        tiny,
        ranks=2,
        strategy="pp",
        global_batch=4,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=2,
        training=SGD,
    )
    assert plan.training.dataset == "bytes:stdlib"
    per_rank = assert_parity(plan, tmp_path)
    assert "lm_head.weight" in per_rank[0] and "lm_head.weight" in per_rank[1]  # tied to wte


def test_hugging_face_llama_pipeline(tmp_path):
    # pipeline() traces its rotary embedding: a no_grad region and a move to its input's
    # device, both handled by runtime.parallel.pipeline_parallel.split_model.
    sgd = {"optimizer": {**SGD["optimizer"], "lr": 0.01}}
    plan = zoo_plan(
        "hf:llama",
        LLAMA,
        ranks=2,
        strategy="pp",
        global_batch=4,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=2,
        training=sgd,
    )
    assert_parity(plan, tmp_path)
