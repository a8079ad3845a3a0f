"""Which samples each step and replica sees, and that every zoo model can eat its batches."""

from __future__ import annotations

import pytest
import torch

from planner.capture.source import build_model, parse_source
from planner.errors import PlanError
from planner.networks import is_adversarial
from runtime.rank.task import task_for


def zoo_task(source, overrides=None, global_batch=12, seed=0):
    built = build_model(parse_source(source, overrides or {}), device="cpu")
    networks = is_adversarial(name for name, _ in built.module.named_children())
    return built, task_for(source, built.config, built.dataset, global_batch, seed, adversarial=networks)


def test_replica_slices_make_up_the_global_batch():
    _, task = zoo_task("mlp")
    x, y = task.batch(3)
    parts = [task.batch(3, 0, 5), task.batch(3, 5, 7)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_batches_depend_only_on_seed_and_step():
    _, a = zoo_task("mlp", seed=1)
    _, b = zoo_task("mlp", seed=1)
    _, c = zoo_task("mlp", seed=2)
    assert torch.equal(a.sample_indices(7), b.sample_indices(7))
    assert not torch.equal(a.sample_indices(7), a.sample_indices(8))
    assert not torch.equal(a.sample_indices(7), c.sample_indices(7))


def test_an_epoch_visits_every_sample_once():
    _, task = zoo_task("mlp", global_batch=1797 // 3)  # digits has 1,797 samples
    seen = torch.cat([task.sample_indices(s) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(1797))


@pytest.mark.parametrize("source", ["mlp", "cnn", "gpt", "gan"])
def test_every_zoo_model_takes_its_batches(source):
    built, task = zoo_task(source)
    inputs, targets = task.batch(0, 2, 4)
    if source == "gan":
        assert inputs.shape == (4, built.config["latent_dim"])
        assert targets.min() >= -1 and targets.max() <= 1  # digits rescaled to tanh's range
        out = built.module(inputs)
    else:
        out = built.module(inputs)
        assert torch.isfinite(task.loss_fn(out, targets))
    assert out.shape[0] == 4


@pytest.mark.usefixtures("allow_fixture_models")
def test_a_py_factory_cannot_be_trained():
    with pytest.raises(PlanError, match="no objective"):
        task_for("py:tests.fixtures.models:two_linear", {}, "none", 4, 0, adversarial=False)


def test_a_wrong_data_set_is_named():
    built, _ = zoo_task("mlp")
    with pytest.raises(PlanError, match=r"training\.dataset"):
        task_for("mlp", built.config, "bytes:stdlib", 4, 0, adversarial=False)
