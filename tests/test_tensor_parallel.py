"""Tensor-parallel layouts: which blocks split across a tensor group, and how."""

import pytest

from planner.capture.source import build_model, parse_source
from planner.capture.tp_layouts import block_layout, tp_layouts
from planner.tensor_parallel import TpLayout
from tests.test_materialise import LLAMA  # 3 layers, 4 heads, 2 key/value heads

GPT2 = {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 300, "seq_len": 8}


def _model(source, overrides):
    return build_model(parse_source(source, overrides)).module


def test_the_zoo_gpt_splits_attention_and_mlp_megatron_style():
    model = _model("gpt", {"size": "toy"})
    layout = block_layout(model, "blocks.0")
    assert layout == TpLayout(("attn.q", "attn.k", "attn.v", "mlp.fc"), ("attn.proj", "mlp.proj"), 4, 4)
    # Embeddings, the final norm and the head have no layout: replicated across the group.
    assert [b for b in ("tok_emb", "pos_emb", "ln_f", "head") if block_layout(model, b)] == []
    assert set(tp_layouts(model, ["tok_emb", "blocks.0", "blocks.1", "head"], 4)) == {"blocks.0", "blocks.1"}
    with pytest.raises(ValueError, match=r"tp_degree: block 'blocks.0': tp_degree 3 does not divide its 4"):
        tp_layouts(model, ["blocks.0"], 3)


def test_a_hugging_face_block_follows_its_configs_tp_plan():
    model = _model("hf:llama", LLAMA)
    layout = block_layout(model, "model.layers.1")
    assert layout is not None
    assert set(layout.colwise) == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
    }
    assert set(layout.rowwise) == {"self_attn.o_proj", "mlp.down_proj"}
    assert (layout.heads, layout.kv_heads) == (4, 2)
    assert block_layout(model, "model.embed_tokens") is None
    # Grouped-query attention: the degree must divide the key/value heads too.
    assert layout.error(2) is None
    assert layout.error(4) == "tp_degree 4 does not divide its 2 key/value heads"


def test_gpt2s_fused_qkv_is_split_part_by_part():
    gpt2 = _model("hf:gpt2", GPT2)
    layout = block_layout(gpt2, "transformer.h.0")  # GPT2Config publishes no tp plan: built in
    assert layout == TpLayout(
        ("attn.c_attn", "mlp.c_fc"),
        ("attn.c_proj", "mlp.c_proj"),
        4,
        4,
        fused=(("attn.c_attn", 3),),
        widths=("attn.split_size",),
    )
    assert (layout.parts("attn.c_attn"), layout.parts("mlp.c_fc")) == (3, 1)
    assert TpLayout.from_doc(layout.to_doc()) == layout
    older = {k: v for k, v in layout.to_doc().items() if k not in ("fused", "widths")}  # traced before
    assert TpLayout.from_doc(older) == TpLayout(layout.colwise, layout.rowwise, 4, 4)
    assert block_layout(gpt2, "transformer.wte") is None


def test_blocks_without_a_published_layout_are_replicated():
    mlp = _model("mlp", {})
    assert all(block_layout(mlp, name) is None for name, _ in mlp.named_children())
