"""Models built on the meta device, each rank making only its own part real, with the
values a whole build gives them: bit for bit, tied weights and HF's own init included."""

from __future__ import annotations

import warnings

import pytest
import torch

from planner.capture.source import build_model, parse_source
from runtime.parallel.pipeline_parallel import split_model
from runtime.rank.model import build_full_model, shared_parameter_groups
from tests.runs import zoo_plan

LLAMA = {
    "num_hidden_layers": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "seq_len": 8,
}
GPT2 = {"n_layer": 3, "n_embd": 32, "n_head": 4, "vocab_size": 300, "seq_len": 8}  # lm_head tied to wte


def whole(plan) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model made real at once, by every name."""
    full = build_full_model(plan)
    module = full.materialise(full.module, "cpu")
    return {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers())}


def stage_by_stage(plan) -> dict[str, torch.Tensor]:
    """Each stage made real in a build of its own, as each rank makes its own."""
    out: dict[str, torch.Tensor] = {}
    for i in range(len(plan.stages)):
        full = build_full_model(plan)
        assert full.on_meta
        pipe = split_model(plan, full, 2, torch.device("cpu"))
        stage = full.materialise(pipe.get_stage_module(i), "cpu")
        for j in range(pipe.num_stages):  # the other stages were never made real
            if j != i:
                assert all(p.is_meta for p in pipe.get_stage_module(j).parameters())
        out.update(stage.named_parameters(remove_duplicate=False))
        out.update(stage.named_buffers())
    return out


@pytest.mark.parametrize(
    ("source", "overrides", "stages"),
    [("gpt", {"size": "toy"}, 2), ("hf:llama", LLAMA, 3), ("hf:gpt2", GPT2, 3)],
)
def test_a_stage_made_real_alone_equals_the_whole_build(source, overrides, stages):
    plan = zoo_plan(
        source,
        overrides,
        ranks=stages,
        strategy="pp",
        global_batch=4,
        micro_batches=2,
        pp_degree=stages,
        schedule="gpipe",
    )
    reference, parts = whole(plan), stage_by_stage(plan)
    assert set(parts) <= set(reference)
    for fqn, value in parts.items():
        assert torch.equal(value, reference[fqn]), fqn
    assert not any(torch.isnan(v).any() for v in parts.values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("source", "overrides"), [("gpt", {"size": "toy", "tie_embeddings": True}), ("hf:gpt2", GPT2)]
)
def test_units_made_real_one_by_one_equal_the_whole_build(source, overrides):
    # As a sharded rank makes them (runtime.parallel.sharded.make_sharded): each FSDP unit
    # on its own, by its FQN, a tied embedding and head in one unit, then the root's rest.
    from runtime.parallel.sharded import fsdp_units

    plan = zoo_plan(source, overrides, ranks=2, strategy="dp", global_batch=4, dp_degree=2)
    reference = whole(plan)
    full = build_full_model(plan)
    units = fsdp_units(full.module, plan.model.blocks)
    assert any(len(unit) == 2 for unit in units)  # the tied pair
    for unit in units:
        full.materialise_parts([(full.module.get_submodule(b), b) for b in unit], "cpu")
        for b in unit:  # made real; what no unit holds yet still on meta
            assert not any(p.is_meta for p in full.module.get_submodule(b).parameters())
    full.materialise(full.module, "cpu")
    made = {**dict(full.module.named_parameters(remove_duplicate=False)), **dict(full.module.named_buffers())}
    assert set(made) == set(reference)
    for fqn, value in made.items():
        assert torch.equal(value, reference[fqn]), fqn
    for group in shared_parameter_groups(full.module):  # still one tensor
        assert len({id(made[fqn]) for fqn in group}) == 1


def test_gpt2s_tied_head_and_scaled_projections_keep_hfs_rules():
    plan = zoo_plan(
        "hf:gpt2",
        GPT2,
        ranks=3,
        strategy="pp",
        global_batch=4,
        micro_batches=2,
        pp_degree=3,
        schedule="gpipe",
    )
    parts = stage_by_stage(plan)
    assert torch.equal(parts["lm_head.weight"], parts["transformer.wte.weight"])  # on two ranks
    std = 0.02 / (2 * GPT2["n_layer"]) ** 0.5  # GPT-2's residual projections
    assert parts["transformer.h.0.attn.c_proj.weight"].std().item() == pytest.approx(std, rel=0.15)
    assert parts["transformer.h.0.attn.c_attn.weight"].std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.equal(parts["transformer.h.0.ln_1.weight"], torch.ones(GPT2["n_embd"]))


def test_llamas_rotary_table_is_recomputed_on_the_rank_that_holds_it():
    plan = zoo_plan("hf:llama", LLAMA, ranks=1, strategy="dp", global_batch=4)
    built = build_model(parse_source("hf:llama", LLAMA), device="cpu")
    expected = built.module.model.rotary_emb.inv_freq
    assert torch.equal(whole(plan)["model.rotary_emb.inv_freq"], expected)


def test_the_zoo_keeps_todays_values():
    plan = zoo_plan("gpt", {"size": "toy"}, ranks=1, strategy="dp", global_batch=4)
    today = build_model(parse_source("gpt", {"size": "toy"}), device="cpu", seed=plan.training.seed).module
    made = whole(plan)
    for fqn, value in today.named_parameters():
        assert torch.equal(value, made[fqn]), fqn


@pytest.fixture
def allow_fixtures(monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "tests.fixtures.models")


def test_a_factory_is_initialised_per_module_and_its_raw_parameters_by_the_zoos_rule(allow_fixtures):
    plan = zoo_plan("py:tests.fixtures.models:scaled", ranks=1, strategy="dp", global_batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # built on meta: no warning
        first, second = whole(plan), whole(plan)
    for fqn in first:
        assert torch.equal(first[fqn], second[fqn]), fqn
    bound = 1 / 8**0.5  # nn.Linear's reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert first["fc.weight"].abs().max() <= bound and first["fc.weight"].std() > bound / 4
    assert first["gain"].abs().max() <= 1 and first["gain"].std() > 0  # the zoo's rule for a 1-D weight


@pytest.mark.parametrize(
    ("factory", "reason"),
    [("sine_table", "buffer 'table'"), ("reads_its_weights", "fails on the meta device")],
)
def test_a_factory_meta_cannot_hold_is_built_on_the_cpu_once_with_a_warning(allow_fixtures, factory, reason):
    # Planned from a model of the same layers: the planner itself traces on meta only.
    traced = "sine_table" if factory == "sine_table" else "scaled"
    plan = zoo_plan(f"py:tests.fixtures.models:{traced}", ranks=1, strategy="dp", global_batch=4)
    plan = plan.model_copy(
        update={"model": plan.model.model_copy(update={"source": plan.model.source.replace(traced, factory)})}
    )
    with pytest.warns(UserWarning, match=f"built whole on the CPU.*{reason}.*parameters") as caught:
        full = build_full_model(plan)
    assert not full.on_meta
    assert "MiB" in str(caught[0].message)
    first = dict(full.materialise(full.module, "cpu").named_parameters())
    with pytest.warns(UserWarning):
        again = whole(plan)
    for fqn, value in first.items():  # still the same values on every rank
        assert torch.equal(value, again[fqn]), fqn
    if factory == "sine_table":
        built = build_model(parse_source(plan.model.source), device="cpu")
        assert torch.equal(again["table"], built.module.table)


def test_the_planner_names_a_factory_that_fails_on_meta(allow_fixtures):
    from planner.capture.trace import trace
    from planner.errors import SourceError

    with pytest.raises(SourceError, match=r"reads_its_weights.*fails on the meta device.*item"):
        trace("py:tests.fixtures.models:reads_its_weights")
