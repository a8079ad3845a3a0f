"""16-bit precisions: every parallel mode against single-process training in the same one.

Both sides train under ``torch.autocast`` with float32 weights (runtime.rank.amp), on the
same batches. They cannot match to float32's rounding: a matrix product's float32 sum is
rounded to bfloat16 (8 bits of mantissa, a relative spacing of 2^-8), and a rank computing
on a smaller batch or micro-batch can accumulate in another order, landing a result on the
neighbouring bfloat16 value. The tolerances follow from that unit:

- each step's loss: within one unit, rtol 2^-8. The loss averages thousands of
  per-token terms, so a few flipped roundings upstream move it by far less than one unit
  of itself.
- each weight tensor's change over the run (SGD with momentum, linear in the gradients):
  every gradient element differs by at most a unit or so, so the accumulated update
  differs by about a unit of itself, plus what the differing weights feed back over ten
  steps. Allowed: 2^-5 (eight units) of the update's norm, ||w - w_ref|| <= 2^-5 ||w_ref - w_0||.
  A wrong gradient (a replica not averaged, a stage's gradient scaled twice) is off by the
  order of the update itself, 32 times more.
AdamW would not do here: it divides each gradient by its own running magnitude, so an
element whose true gradient is near zero steps by +-lr on the sign of its rounding.
fp16-mixed rounds products to float16 (11 bits of mantissa: 2^-11); the same counts of
units apply. Pure bf16 also stores the weights in bfloat16: every update is rounded to the
weight's own spacing (2^-8 of it), and two runs whose updates differ by a hair can land a
spacing apart, once per step. So its weights get, on top, one unit of the weight itself per
step: ||w - w_ref|| <= 2^-5 ||w_ref - w_0|| + 10 x 2^-8 ||w_ref||. Its losses keep the one-unit
check, which is where a wrong gradient would show.
"""

from __future__ import annotations

import pytest
import torch

from runtime.measure.reference import train_single
from runtime.rank.model import build_full_model
from tests.runs import rank_parameters, run_ranks, step_losses, zoo_plan

pytestmark = pytest.mark.slow
STEPS = 10
UNIT = {"bf16-mixed": 2.0**-8, "bf16": 2.0**-8, "fp16-mixed": 2.0**-11}  # relative spacing
LOSS_UNITS, UPDATE_UNITS = 1, 8
SGD = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
TRAINING = {"precision": "bf16-mixed", **SGD}
TOY_GPT = {"size": "toy"}


def assert_16bit_parity(plan, tmp_path, *, extra_losses=()):
    unit = UNIT[plan.training.precision]
    full = build_full_model(plan)
    initial = {f: p.detach().clone() for f, p in full.materialise(full.module, "cpu").named_parameters()}
    reference = train_single(plan, STEPS)
    runs = run_ranks(plan, tmp_path, steps=STEPS)
    for name in ("loss", *extra_losses):
        got, want = step_losses(runs, name), reference.losses if name == "loss" else reference.extra[name]
        assert len(got) == STEPS
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=LOSS_UNITS * unit, atol=0)
    checked = 0
    for rank in range(len(plan.ranks)):
        for fqn, value in rank_parameters(runs, rank).items():
            want = reference.parameters[fqn]
            update = (want - initial.get(fqn, want)).norm().item()
            if update == 0:  # an embedding row never seen, a weight whose gradient is zero
                continue
            off = (value - want).norm().item()
            stored = STEPS * unit * want.float().norm().item() if plan.training.precision == "bf16" else 0.0
            assert off <= UPDATE_UNITS * unit * update + stored, (
                f"{fqn}: {off:.3g} off, {off / update:.3g} of its update"
            )
            checked += 1
    assert checked > 0


def test_data_parallel(tmp_path):
    plan = zoo_plan(
        "mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, shares=[20, 12], training=TRAINING
    )
    assert_16bit_parity(plan, tmp_path)


def gpt_pipeline(schedule: str, training: dict, virtual: int = 1):
    """The toy GPT in 2 stages (2v with interleaving) on 2 ranks, 4 micro-batches of 2."""
    return zoo_plan(
        "gpt",
        TOY_GPT,
        ranks=2,
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule=schedule,
        micro_batches=4,
        virtual_stages=virtual,
        training=training,
    )


@pytest.mark.parametrize(("schedule", "virtual"), [("gpipe", 1), ("1f1b", 1), ("interleaved_1f1b", 2)])
def test_pipeline_each_schedule(tmp_path, schedule, virtual):
    assert_16bit_parity(gpt_pipeline(schedule, TRAINING, virtual), tmp_path)


def test_hybrid_dp2_pp2(tmp_path):
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
        training=TRAINING,
    )
    assert_16bit_parity(plan, tmp_path)


@pytest.mark.parametrize("strategy", ["mp", "dp"])
def test_gan(tmp_path, strategy):
    layout = (
        {"pp_degree": 2, "cuts": [1], "stage_names": ["generator", "discriminator"]}
        if strategy == "mp"
        else {"dp_degree": 2, "shares": [20, 12]}
    )
    plan = zoo_plan("gan", ranks=2, strategy=strategy, global_batch=32, training=TRAINING, **layout)
    assert_16bit_parity(plan, tmp_path, extra_losses=("loss_d", "loss_g"))


def test_fp16_mixed_pipeline_scales_the_loss_on_every_rank_alike(tmp_path):
    assert_16bit_parity(gpt_pipeline("1f1b", {"precision": "fp16-mixed", **SGD}), tmp_path)


@pytest.mark.parametrize("strategy", ["dp", "pp"])
def test_pure_bf16_weights_and_state(tmp_path, strategy):
    training = {"precision": "bf16", **SGD}
    if strategy == "dp":
        plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, training=training)
    else:
        plan = gpt_pipeline("gpipe", training)
    assert_16bit_parity(plan, tmp_path)
    params = rank_parameters(tmp_path / "runs", 0)
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
