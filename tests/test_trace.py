"""Tracing: parameters, FLOPs and saved bytes are torch's own numbers, node by node."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from planner.capture.coarsen import coarsen
from planner.capture.graph import from_json, summary, to_json, totals
from planner.capture.source import build_model, parse_source
from planner.capture.trace import trace
from planner.errors import TraceError

SMALL_HF = {
    "hf:gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 4, "seq_len": 32},
    "hf:llama": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 1000,
        "seq_len": 32,
    },
}
CASES = [
    ("mlp", {}),
    ("cnn", {}),
    ("gan", {}),
    ("gpt", {}),
    ("gpt", {"tie_embeddings": True}),
    ("hf:gpt2", {}),  # the real GPT-2 size (124M, tied head) on meta
    *SMALL_HF.items(),
]


def _real_param_count(source, overrides):
    model = build_model(parse_source(source, overrides)).module
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("source", "overrides"), CASES)
def test_parameter_count_is_exact(source, overrides):
    graph = trace(source, overrides)
    assert graph.graph["capture"] == "torch.export"
    assert summary(graph)["param_count"] == _real_param_count(source, overrides)
    assert "unused_params" not in graph.graph


# Hugging Face models call .item() while building masks, so they cannot run eagerly on meta.
@pytest.mark.parametrize(("source", "overrides"), [c for c in CASES if not c[0].startswith("hf:")])
def test_per_node_flops_add_up_to_the_whole_model(source, overrides):
    graph = trace(source, overrides)
    built = build_model(parse_source(source, overrides))
    with FlopCounterMode(display=False) as counter:
        built.module(*built.args, **built.kwargs)
    assert totals(graph)["fwd_flops"] == counter.get_total_flops()


@pytest.mark.usefixtures("allow_fixture_models")
def test_linear_flops_are_two_in_out_per_sample():
    graph = trace("py:tests.fixtures.models:two_linear", {"d_in": 16, "d_out": 4}, batch_size=3)
    linears = [d for _, d in graph.nodes(data=True) if d["op"] in ("linear", "addmm")]
    assert [d["fwd_flops"] for d in linears] == [3 * 2 * 16 * 32, 3 * 2 * 32 * 4]
    assert [d["param_count"] for d in linears] == [16 * 32 + 32, 32 * 4 + 4]
    assert summary(graph)["fwd_flops_per_sample"] == 2 * 16 * 32 + 2 * 32 * 4


def _saved_on_cpu(module, *inputs):
    """Bytes autograd really keeps for backward on the CPU, de-duplicated by storage."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    return total


@pytest.mark.parametrize(
    ("source", "overrides", "block", "get", "shape"),
    [
        ("gpt", {"seq_len": 64, "d_model": 64}, "blocks.1", lambda m: m.blocks[1], (1, 64, 64)),
        (
            "gpt",
            {"seq_len": 256, "d_model": 128, "n_head": 8},
            "blocks.0",
            lambda m: m.blocks[0],
            (1, 256, 128),
        ),
        ("mlp", {}, "blocks.1", lambda m: m.blocks[1], (1, 128)),
        ("cnn", {}, "blocks.1", lambda m: m.blocks[1], (1, 16, 8, 8)),
    ],
)
def test_saved_bytes_of_a_block_match_cpu_autograd(source, overrides, block, get, shape):
    graph = coarsen(trace(source, overrides))
    model = build_model(parse_source(source, overrides), device="cpu").module
    x = torch.randn(shape, requires_grad=True)
    # Alone, a block keeps its own saved tensors plus those it shares with the block before.
    node = graph.nodes[block]
    assert node["saved_bytes"] + sum(node["resaved_from"].values()) == _saved_on_cpu(get(model), x)


def test_attention_is_measured_as_the_fused_kernel_keeps_it():
    # A transformer block keeps far more than it outputs (docs/facts.md, Activation memory: ~20x), but not the
    # T x T attention matrix: the fused kernel recomputes it in backward.
    graph = coarsen(trace("gpt", {"seq_len": 512, "d_model": 64, "n_head": 4, "n_layer": 1}))
    block = graph.nodes["blocks.0"]
    assert 10 * block["output_bytes"] < block["saved_bytes"] < 30 * block["output_bytes"]
    attention_matrix = 4 * 512 * 512 * 4  # heads x T x T x fp32
    assert block["saved_bytes"] < attention_matrix


def test_tied_parameters_are_counted_once_and_marked_shared():
    graph = coarsen(trace("gpt", {"tie_embeddings": True}))
    assert graph.nodes["tok_emb"]["params"] == ["tok_emb.weight"]
    assert graph.nodes["head"]["params"] == []
    assert "tok_emb.weight" in graph.nodes["head"]["shared_params"]
    assert "tok_emb.weight" in graph.nodes["tok_emb"]["shared_params"]


def _tied_records(graph):
    """Per block, the parameters it owns and the tied ones it uses; and each parameter's bytes."""
    blocks = {
        name: (sorted(data["params"]), sorted(data["shared_params"]))
        for name, data in coarsen(graph).nodes(data=True)
        if data["kind"] != "input"
    }
    return blocks, graph.graph["param_bytes"]


@pytest.mark.parametrize(
    ("source", "overrides", "tied"),
    [
        ("gpt", {"tie_embeddings": True}, ("tok_emb", "head", "tok_emb.weight")),
        ("hf:gpt2", SMALL_HF["hf:gpt2"], ("transformer.wte", "lm_head", "transformer.wte.weight")),
    ],
)
def test_module_hooks_record_tied_parameters_as_export_does(monkeypatch, source, overrides, tied):
    exported = trace(source, overrides)

    def refuse(*args, **kwargs):
        raise RuntimeError("export refused: trace with module hooks")

    monkeypatch.setattr(torch.export, "export", refuse)
    hooked = trace(source, overrides)
    assert exported.graph["capture"] == "torch.export"
    assert hooked.graph["capture"].startswith("module-hooks")
    assert _tied_records(hooked) == _tied_records(exported)
    owner, user, weight = tied
    blocks, _ = _tied_records(hooked)
    assert weight in blocks[owner][0] and weight not in blocks[user][0]
    assert weight in blocks[owner][1] and weight in blocks[user][1]


def test_nodes_carry_module_paths_shapes_and_traffic():
    graph = trace("gpt")
    data = dict(graph.nodes(data=True))
    head = next(d for d in data.values() if d["fqn"] == "head")
    assert head["output_shape"] == [1, 64, 256]
    assert head["output_bytes"] == 64 * 256 * 4
    assert head["read_bytes"] == 64 * 64 * 4 + 256 * 64 * 4  # input + weight
    assert head["write_bytes"] == head["output_bytes"]
    views = [d for d in data.values() if d["op"] in ("view", "transpose")]
    assert views and all(d["read_bytes"] == d["write_bytes"] == 0 for d in views)
    for a, _b, e in graph.edges(data=True):
        assert e["bytes"] == data[a]["output_bytes"]


def test_graph_json_round_trips():
    graph = coarsen(trace("cnn"))
    again = from_json(to_json(graph))
    assert dict(again.nodes(data=True)) == dict(graph.nodes(data=True))
    assert list(again.edges(data=True)) == list(graph.edges(data=True))
    assert again.graph == graph.graph


@pytest.mark.usefixtures("allow_fixture_models")
def test_data_dependent_model_falls_back_to_module_hooks_and_names_the_module():
    graph = trace("py:tests.fixtures.models:branchy")
    assert graph.graph["capture"].startswith("module-hooks")
    assert "module 'gate'" in graph.graph["warning"]
    # The untaken branch's weights still count, where the taken one ran.
    assert summary(graph)["param_count"] == _real_param_count("py:tests.fixtures.models:branchy", {})
    assert graph.graph["unused_params"] == ["gate.a.weight", "gate.a.bias"]
    assert [n for n in coarsen(graph).nodes] == ["input:input_0", "inp", "gate", "out"]


@pytest.mark.usefixtures("allow_fixture_models")
def test_untraceable_model_raises_one_clear_error():
    with pytest.raises(TraceError, match=r"module 'inner'.*not implemented for positive inputs"):
        trace("py:tests.fixtures.models:broken")


def test_the_weights_autocast_would_copy_are_those_matrix_products_read():
    graph = trace("gpt", {"size": "toy"})
    cast = set(graph.graph["cast_params"])
    assert {"blocks.0.attn.q.weight", "blocks.0.mlp.fc.weight", "head.weight"} <= cast
    assert not cast & {"tok_emb.weight", "pos_emb.weight", "blocks.0.ln1.weight", "ln_f.weight"}
