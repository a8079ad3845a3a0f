"""Coarsen a fine layer graph into blocks along module boundaries.

A block is a module that the expansion below stops at: one node per transformer block,
embedding, final norm and head; for the GAN, the generator and the discriminator. The root
is expanded; so is every container (`ModuleList`, `Sequential`, `ModuleDict`) reached, and
every module that holds a *layer stack* somewhere below it (a container of two or more
modules of one type). Ops that run in an expanded module's own forward (glue: a residual
add at the top level, position ids, mask building) join the block that ran just before them,
or the first block when nothing ran before. Every block is then a contiguous stretch of the
execution order, so a stage cut between blocks is a cut between modules, and every total
(parameters, FLOPs, saved bytes, bytes crossing between blocks) is preserved exactly.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from planner.capture.graph import NODE_SUMS, block_order, op_entry
from planner.capture.tp_roles import coarse_tp

CONTAINERS = {"ModuleList", "Sequential", "ModuleDict"}


def block_fqns(modules: dict[str, dict[str, Any]]) -> set[str]:
    """The module FQNs that become blocks, given `planner.capture.modules.module_info` output.

    >>> mods = {"": {"type": "GPT", "children": ["emb", "blocks", "head"]},
    ...         "emb": {"type": "Embedding", "children": []},
    ...         "blocks": {"type": "ModuleList", "children": ["blocks.0", "blocks.1"]},
    ...         "blocks.0": {"type": "Block", "children": []},
    ...         "blocks.1": {"type": "Block", "children": []},
    ...         "head": {"type": "Linear", "children": []}}
    >>> sorted(block_fqns(mods))
    ['blocks.0', 'blocks.1', 'emb', 'head']
    """
    if "" not in modules:
        return set()
    stack_memo: dict[str, bool] = {}

    def is_stack(fqn: str) -> bool:
        m = modules[fqn]
        kids = m["children"]
        return m["type"] in CONTAINERS and len(kids) >= 2 and len({modules[k]["type"] for k in kids}) == 1

    def holds_stack(fqn: str) -> bool:
        if fqn not in stack_memo:
            stack_memo[fqn] = is_stack(fqn) or any(holds_stack(k) for k in modules[fqn]["children"])
        return stack_memo[fqn]

    blocks: set[str] = set()

    def expand(fqn: str) -> None:
        for child in modules[fqn]["children"]:
            if modules[child]["type"] in CONTAINERS or holds_stack(child):
                expand(child)
            else:
                blocks.add(child)

    expand("")
    return blocks


def assign_blocks(graph: nx.DiGraph) -> dict[str, str]:
    """Map every fine node to the id of its block (block ids are module FQNs)."""
    blocks = block_fqns(graph.graph.get("modules", {}))
    order = block_order(graph)
    owner: dict[str, str | None] = {}
    for name in order:
        data = graph.nodes[name]
        if data["kind"] == "input":
            owner[name] = f"input:{name}"
            continue
        stack = data.get("module_stack") or [data.get("fqn", "")]
        owner[name] = next((m for m in stack if m in blocks), None)
    # Glue joins the block that ran before it; leading glue joins the first block.
    last: str | None = None
    pending: list[str] = []
    for name in order:
        block = owner[name]
        if block is None or (block.startswith("input:") and graph.nodes[name]["kind"] != "input"):
            if last is None:
                pending.append(name)
            else:
                owner[name] = last
            continue
        if block.startswith("input:"):
            continue
        for glue in pending:
            owner[glue] = block
        pending.clear()
        last = block
    for glue in pending:  # a model with no block at all: everything is the root
        owner[glue] = ""
    return _make_contiguous(order, owner)  # type: ignore[arg-type]


def _make_contiguous(order: list[str], owner: dict[str, str]) -> dict[str, str]:
    """Merge blocks that would not be contiguous (a module called twice, far apart).

    A block that runs again after other blocks absorbs every block in between, so the
    coarse graph stays a chain of contiguous stretches and cannot contain a cycle.
    """
    sequence: list[str] = []
    merged: dict[str, str] = {}

    def find(b: str) -> str:
        while b in merged:
            b = merged[b]
        return b

    for name in order:
        block = find(owner[name])
        if block.startswith("input:"):
            continue
        if block in sequence and sequence[-1] != block:
            at = sequence.index(block)
            for other in sequence[at + 1 :]:
                merged[other] = block
            del sequence[at + 1 :]
        elif block not in sequence:
            sequence.append(block)
    return {name: find(b) for name, b in owner.items()}


def _resaved_across_blocks(graph: nx.DiGraph, owner: dict[str, str], coarse: nx.DiGraph) -> None:
    """Per block, the bytes it keeps for backward of tensors counted in another block.

    One process keeps one copy; a pipeline cut between the blocks keeps one on each side.
    """
    seen: set[tuple[int, str]] = set()
    for name, data in graph.nodes(data=True):
        block = owner[name]
        for storage_id, producer, first, nbytes in data.get("resaved", []):
            if owner.get(first) == block or (storage_id, block) in seen:
                continue
            seen.add((storage_id, block))
            source = owner.get(producer, owner.get(first))
            into = coarse.nodes[block]["resaved_from"]
            into[source] = into.get(source, 0) + int(nbytes)


def coarsen(graph: nx.DiGraph) -> nx.DiGraph:
    """One node per block; node sums and crossing bytes preserved exactly.

    An edge A -> B carries, once per producing node in A, the bytes of each output that some
    node of B consumes: what a pipeline cut between A and B would send.
    """
    owner = assign_blocks(graph)
    order = block_order(graph)
    coarse = nx.DiGraph(**{k: v for k, v in graph.graph.items() if k != "order"})
    coarse.graph["coarsened"] = True
    for name in order:
        _add_member(coarse, owner[name], graph.nodes[name], graph.graph.get("modules", {}))
    _resaved_across_blocks(graph, owner, coarse)
    coarse_tp(graph, owner, coarse, order)
    outputs = set(graph.graph.get("outputs", []))
    for name in order:
        _link_across_blocks(graph, owner, coarse, name, outputs)
    coarse.graph["order"] = list(coarse.nodes)
    coarse.graph["outputs"] = sorted({owner[n] for n in outputs})
    if not nx.is_directed_acyclic_graph(coarse):
        raise AssertionError("coarsening produced a cycle; blocks are not contiguous")
    return coarse


def _add_member(coarse: nx.DiGraph, block: str, data: dict[str, Any], modules: dict[str, Any]) -> None:
    """Add one fine node's sums, parameters and per-op costs to its block (made on first use)."""
    if block not in coarse:
        is_input = data["kind"] == "input"
        coarse.add_node(
            block,
            fqn="" if is_input else block,
            kind="input" if is_input else "block",
            op="input" if is_input else modules.get(block, {}).get("type", "glue"),
            members=0,
            params=[],
            shared_params=[],
            resaved_from={},
            ops=[],
            output_shape=[],
            output_bytes=0,
            **{key: 0 for key in NODE_SUMS},
        )
    node = coarse.nodes[block]
    node["members"] += 1
    for key in NODE_SUMS:
        node[key] += int(data.get(key, 0))
    node["params"].extend(data.get("params", []))
    entry = op_entry(data)
    if entry is not None:
        node["ops"].append(entry)
    node["shared_params"].extend(p for p in data.get("shared_params", []) if p not in node["shared_params"])


def _link_across_blocks(
    graph: nx.DiGraph, owner: dict[str, str], coarse: nx.DiGraph, name: str, outputs: set[str]
) -> None:
    """Send fine node ``name``'s output to every other block that reads it; count it as its block's output."""
    src = owner[name]
    dst_blocks = {owner[d] for d in graph.successors(name)} - {src}
    nbytes = int(graph.nodes[name].get("output_bytes", 0))
    for dst in sorted(dst_blocks):  # the same edge order whatever the hash seed
        # A tensor carries a gradient back if any edge into the block does.
        grad = max(
            int(graph.edges[name, d].get("grad_bytes", 0)) for d in graph.successors(name) if owner[d] == dst
        )
        if coarse.has_edge(src, dst):
            coarse.edges[src, dst]["bytes"] += nbytes
            coarse.edges[src, dst]["grad_bytes"] += grad
        else:
            coarse.add_edge(src, dst, bytes=nbytes, grad_bytes=grad)
    if dst_blocks or name in outputs:
        # The block's output: what leaves it, last producer first (its main output).
        node = coarse.nodes[src]
        node["output_shape"] = list(graph.nodes[name].get("output_shape", []))
        node["output_bytes"] += nbytes
