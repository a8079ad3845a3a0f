"""Find each block's tensor-parallel layout (`planner.tensor_parallel.TpLayout`) in a model.

The zoo GPT's blocks and Hugging Face GPT-2's by their class; another Hugging Face block
from its config's ``base_model_tp_plan``. Anything else has no layout: it is replicated
across the group.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from planner.tensor_parallel import TpLayout, split_error

if TYPE_CHECKING:
    from torch import nn

COLWISE, ROWWISE = "colwise", "rowwise"


def block_layout(model: nn.Module, fqn: str) -> TpLayout | None:
    """The layout of block ``fqn`` of ``model``, or None when none is known for it."""
    from planner.zoo.gpt import Block

    block = model.get_submodule(fqn)
    if isinstance(block, Block):
        heads = block.attn.n_head
        return TpLayout(("attn.q", "attn.k", "attn.v", "mlp.fc"), ("attn.proj", "mlp.proj"), heads, heads)
    if type(block).__name__ == "GPT2Block" and type(block).__module__.startswith("transformers."):
        return _gpt2_layout(block)
    return _hf_layout(model, fqn)


def _gpt2_layout(block: nn.Module) -> TpLayout | None:
    """GPT-2's block (self-attention only: a cross-attention block has none): q, k and v
    fused in ``c_attn``, split by heads part by part; its attention cuts them apart by
    ``split_size``, a rank's third of its ``c_attn`` output."""
    if getattr(block, "crossattention", None) is not None:
        return None
    heads = block.attn.num_heads
    return TpLayout(
        ("attn.c_attn", "mlp.c_fc"),
        ("attn.c_proj", "mlp.c_proj"),
        heads,
        heads,
        fused=(("attn.c_attn", 3),),
        widths=("attn.split_size",),
    )


def _hf_layout(model: nn.Module, fqn: str) -> TpLayout | None:
    """A Hugging Face block's layout from its config's ``base_model_tp_plan``: its entries
    whose pattern (relative to the base model, ``*`` for a layer index) names a module inside
    the block. Only column and row splits are taken; a block whose entries name any other
    style (or none) has no layout here."""
    config = getattr(model, "config", None)
    plan = getattr(config, "base_model_tp_plan", None) or {}
    if not plan:
        return None
    prefix = getattr(model, "base_model_prefix", "")
    relative = fqn[len(prefix) + 1 :] if prefix and fqn.startswith(prefix + ".") else fqn
    depth = len(relative.split("."))
    colwise, rowwise = [], []
    for pattern, style in plan.items():
        parts = pattern.split(".")
        if len(parts) <= depth or not fnmatch.fnmatchcase(relative, ".".join(parts[:depth])):
            continue
        inner = ".".join(parts[depth:])
        if style == COLWISE:
            colwise.append(inner)
        elif style == ROWWISE:
            rowwise.append(inner)
        else:
            return None
    if not colwise or not rowwise:
        return None
    block = model.get_submodule(fqn)
    for path in (*colwise, *rowwise):
        try:
            block.get_submodule(path)
        except AttributeError:
            return None  # the plan names a module this block does not have
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return TpLayout(tuple(colwise), tuple(rowwise), heads, kv_heads)


def tp_layouts(model: nn.Module, blocks: list[str], tp: int) -> dict[str, TpLayout]:
    """The layout of every block of ``blocks`` that has one; raises ValueError naming the
    first block ``tp`` cannot split."""
    out = {fqn: layout for fqn in blocks if (layout := block_layout(model, fqn)) is not None}
    error = split_error(out, tp)
    if error:
        raise ValueError(f"tp_degree: {error}")
    return out
