"""Tensor-parallel layouts: which linear layers of a block are split by columns, which by rows.

Megatron's split (Shoeybi et al. 2019): in attention the q, k and v projections are split by
columns (each rank of the tensor group a contiguous slice of the heads) and the output
projection by rows; in the MLP the first linear layers by columns and the last by rows. Each
sub-layer's forward then ends in one all-reduce of its output (its backward in one of its
input's gradient), and everything between stays local to the rank.

Known layouts (`planner.capture.tp_layouts` finds them in a built model):
- the zoo GPT's `Block`: ``attn.q``, ``attn.k``, ``attn.v`` and ``mlp.fc`` by columns,
  ``attn.proj`` and ``mlp.proj`` by rows;
- a Hugging Face block whose config publishes ``base_model_tp_plan`` with only ``colwise``
  and ``rowwise`` entries for it (Llama: q, k, v and o projections; gate, up and down).

A block with none is replicated across the tensor group: every rank of the group computes
it whole, on the same input, and holds the same gradients. The tensor-parallel degree must
divide the attention heads and the key/value heads of every split block (`TpLayout.error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TpLayout:
    """How one block splits across a tensor group."""

    colwise: tuple[str, ...]
    """Linear layers (paths in the block) whose output features are split: weight rows."""
    rowwise: tuple[str, ...]
    """Linear layers whose input features are split: weight columns; outputs all-reduced."""
    heads: int
    """Attention heads of the block (each rank computes heads / tp of them)."""
    kv_heads: int
    """Key/value heads (fewer than ``heads`` under grouped-query attention)."""

    def error(self, tp: int) -> str | None:
        """Why ``tp`` ranks cannot split this block, or None."""
        if self.heads % tp:
            return f"tp_degree {tp} does not divide its {self.heads} attention heads"
        if self.kv_heads % tp:
            return f"tp_degree {tp} does not divide its {self.kv_heads} key/value heads"
        return None

    def to_doc(self) -> dict[str, Any]:
        """The layout as the traced graph keeps it (``graph.graph["tp_layouts"]``)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TpLayout:
        return cls(tuple(doc["colwise"]), tuple(doc["rowwise"]), doc["heads"], doc["kv_heads"])


def split_error(layouts: Mapping[str, TpLayout], tp: int) -> str | None:
    """Why ``tp`` cannot split every block of ``layouts``, naming the first it cannot, or None."""
    for block, layout in layouts.items():
        error = layout.error(tp)
        if error:
            return f"block {block!r}: {error}"
    return None
