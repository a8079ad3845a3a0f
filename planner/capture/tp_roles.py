"""What tensor parallelism divides in each traced op, so the price can divide it too.

Each block with a layout (`planner.capture.tp_layouts`) is walked op by op, following which
activations are split across the tensor group (Megatron's split, `planner.tensor_parallel`):
the output of a column-split layer is split (each rank holds its heads or its slice of the
MLP's width); an op that reads a split activation computes on its slice and its output is
split too, until a row-split layer, whose output is whole again (the all-reduce). So each op
of such a block has a role (fine node attribute ``tp_role``):

- ``"col"``: an op of a column-split layer reading a whole activation: its FLOPs and weights
  are divided by the degree, not what it keeps for backward (its input, whole on every rank:
  Korthikanti et al. 2022 count it so; under sequence parallelism torch keeps the gathered
  input too, where Megatron gathers it again in backward);
- ``"split"``: everything divided: FLOPs, bytes moved, weights, what it keeps;
- ``"seq"``: outside the split stretch (norms, residual adds, dropout after a row-split
  layer): whole on every rank, divided only under sequence parallelism.

Ops outside any such block have no role: whole on every rank, always.

The coarse block then carries ``tp`` (`coarse_tp`): its heads, each op's role (aligned with
its ``ops``), its saved bytes by role, the bytes of each column-split layer's input (one
all-reduce of its gradient in backward, or an all-gather in forward under sequence
parallelism: torch's `ColwiseParallel` makes its input a DTensor layer by layer, so q, k and
v reading one input all-reduce three gradients, where Megatron's fused QKV layer makes one)
and of each row-split layer's output (one all-reduce in forward, or a reduce-scatter). The
graph carries ``tp_params``: the parameters split across the group (column-split layers'
weights and biases, row-split layers' weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import networkx as nx

from planner.capture.graph import op_entry
from planner.capture.tp_layouts import block_layout

if TYPE_CHECKING:
    from torch import nn

COL, SPLIT, SEQ = "col", "split", "seq"


def annotate_tp_roles(graph: nx.DiGraph, model: nn.Module, blocks: set[str]) -> None:
    """Give every op of a block (of ``blocks``, `planner.capture.coarsen.block_fqns`) with a
    layout its ``tp_role``; record the layouts as ``graph.graph["tp_layouts"]`` and the split
    parameters as ``graph.graph["tp_params"]``."""
    layouts = {}
    for fqn in sorted(blocks):
        layout = block_layout(model, fqn)
        if layout is not None:
            layouts[fqn] = layout
    if not layouts:
        return
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    split: set[str] = set()
    for fqn, layout in layouts.items():
        for path in layout.colwise:
            split |= {f"{fqn}.{path}.weight", f"{fqn}.{path}.bias"} & names
        for path in layout.rowwise:
            split |= {f"{fqn}.{path}.weight"} & names
    graph.graph["tp_layouts"] = {fqn: lay.to_doc() for fqn, lay in layouts.items()}
    graph.graph["tp_params"] = sorted(split)
    sharded: set[str] = set()  # ops whose output is split across the group
    for name in graph.graph.get("order", list(graph.nodes)):
        data = graph.nodes[name]
        stack = data.get("module_stack") or []
        block = next((m for m in stack if m in layouts), None)
        if block is None or data.get("kind") != "op":
            continue
        layout = layouts[block]
        inside = {m[len(block) + 1 :] for m in stack if m.startswith(block + ".")}
        in_col = any(_under(m, p) for m in inside for p in layout.colwise)
        in_row = any(_under(m, p) for m in inside for p in layout.rowwise)
        layer = next((p for p in (*layout.colwise, *layout.rowwise) for m in inside if _under(m, p)), "")
        split_inputs = [p for p in graph.predecessors(name) if p in sharded]
        if in_col:
            # A layer traced as several ops (GPT-2's Conv1D: view, addmm, view) computes on
            # its whole input throughout: only an input split before the layer makes it split.
            from_before = any(graph.nodes[p].get("tp_layer") != layer for p in split_inputs)
            data["tp_role"] = SPLIT if from_before else COL
            sharded.add(name)
        elif split_inputs:
            data["tp_role"] = SPLIT
            if not in_row:
                sharded.add(name)
        else:
            data["tp_role"] = SEQ
        data["tp_layer"] = layer


def _under(module: str, path: str) -> bool:
    return module == path or module.startswith(path + ".")


def coarse_tp(graph: nx.DiGraph, owner: dict[str, str], coarse: nx.DiGraph, order: list[str]) -> None:
    """Each coarse block with a layout gets ``tp`` (see the module docstring); ``owner`` maps
    fine nodes to blocks, ``order`` is the fine graph's execution order."""
    layouts: dict[str, dict[str, Any]] = graph.graph.get("tp_layouts", {})
    for block, layout in layouts.items():
        if block in coarse:
            coarse.nodes[block]["tp"] = {
                "heads": layout["heads"],
                "kv_heads": layout["kv_heads"],
                "roles": [],
                "saved": {COL: 0, SPLIT: 0, SEQ: 0},
                "gathered": [],
                "reduced": [],
            }
    gathered_from: dict[str, set[str]] = {}  # block -> its column-split layers whose input is counted
    last_of_row: dict[tuple[str, str], str] = {}  # (block, row-split layer) -> its last op
    for name in order:
        data = graph.nodes[name]
        block = owner.get(name)
        tp = coarse.nodes[block].get("tp") if block in coarse else None
        if tp is None or data.get("kind") == "input":
            continue
        role = data.get("tp_role", "")
        if op_entry(data) is not None:
            tp["roles"].append(role)
        if role:
            tp["saved"][role] += int(data.get("saved_bytes", 0))
        layer = data.get("tp_layer", "")
        inputs = [int(graph.edges[p, name].get("bytes", 0)) for p in graph.predecessors(name)]
        if role == COL and inputs and layer not in gathered_from.setdefault(block, set()):
            gathered_from[block].add(layer)  # the layer's first op that reads an activation
            tp["gathered"].append(sum(inputs))
        if layer in layouts[block]["rowwise"]:
            last_of_row[(block, layer)] = name
    for (block, _), name in last_of_row.items():
        coarse.nodes[block]["tp"]["reduced"].append(int(graph.nodes[name].get("output_bytes", 0)))
