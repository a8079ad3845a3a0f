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
  and ``rowwise`` entries for it (Llama: q, k, v and o projections; gate, up and down);
- Hugging Face GPT-2's block, which publishes none: its fused ``attn.c_attn`` (q, k and v
  side by side, each split by heads) and ``mlp.c_fc`` by columns, ``attn.c_proj`` and
  ``mlp.c_proj`` by rows (``Conv1D`` layers: weights stored (in, out)).

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
    fused: tuple[tuple[str, int], ...] = ()
    """Column-split layers whose output is that many equal parts side by side, each split
    across the group (GPT-2's ``c_attn``: q, k and v), so a rank holds its slice of each."""
    widths: tuple[str, ...] = ()
    """Attributes (``path.name`` in the block) holding the width of a split activation, which a
    rank's share divides by the degree (GPT-2's attention cuts ``c_attn``'s output into q, k and
    v by ``split_size``)."""

    def parts(self, layer: str) -> int:
        """How many equal parts a column-split layer's output holds (1 unless fused)."""
        return dict(self.fused).get(layer, 1)

    def error(self, tp: int) -> str | None:
        """Why ``tp`` ranks cannot split this block, or None."""
        if self.heads % tp:
            return f"tp_degree {tp} does not divide its {self.heads} attention heads"
        if self.kv_heads % tp:
            return f"tp_degree {tp} does not divide its {self.kv_heads} key/value heads"
        return None

    def to_doc(self) -> dict[str, Any]:
        """The layout as the traced graph keeps it (``graph.graph["tp_layouts"]``)."""
        doc = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        doc["fused"] = [list(f) for f in self.fused]
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TpLayout:
        return cls(
            tuple(doc["colwise"]),
            tuple(doc["rowwise"]),
            doc["heads"],
            doc["kv_heads"],
            tuple((path, int(n)) for path, n in doc.get("fused", ())),
            tuple(doc.get("widths", ())),
        )


def split_error(layouts: Mapping[str, TpLayout], tp: int) -> str | None:
    """Why ``tp`` cannot split every block of ``layouts``, naming the first it cannot, or None."""
    for block, layout in layouts.items():
        error = layout.error(tp)
        if error:
            return f"block {block!r}: {error}"
    return None
