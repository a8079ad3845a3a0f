"""Coarsening: blocks along module boundaries, every total preserved exactly."""

import networkx as nx
import pytest

from planner.capture.coarsen import assign_blocks, block_fqns, coarsen
from planner.capture.graph import NODE_SUMS, totals
from planner.capture.trace import trace
from tests.test_trace import SMALL_HF


def _crossing_bytes(fine, owner):
    """Once per producing node, its output bytes for each other block that consumes it."""
    total = 0
    for name in fine.nodes:
        foreign = {owner[d] for d in fine.successors(name)} - {owner[name]}
        total += fine.nodes[name]["output_bytes"] * len(foreign)
    return total


@pytest.mark.parametrize(
    ("source", "overrides"),
    [("mlp", {}), ("cnn", {}), ("gan", {}), ("gpt", {"tie_embeddings": True}), *SMALL_HF.items()],
)
def test_coarsening_preserves_every_total(source, overrides):
    fine = trace(source, overrides)
    coarse = coarsen(fine)
    assert nx.is_directed_acyclic_graph(coarse)
    t_fine, t_coarse = totals(fine), totals(coarse)
    for key in NODE_SUMS:
        assert t_coarse[key] == t_fine[key], key
    assert t_coarse["edge_bytes"] == _crossing_bytes(fine, assign_blocks(fine))
    # Blocks are contiguous stretches of the execution order.
    owner = assign_blocks(fine)
    seen, last = [], None
    for name in fine.graph["order"]:
        block = owner[name]
        if block != last and not block.startswith("input:"):
            assert block not in seen, f"{block} is not contiguous"
            seen.append(block)
            last = block


@pytest.mark.parametrize(
    ("source", "overrides", "blocks"),
    [
        ("gpt", {}, ["input:idx", "tok_emb", "pos_emb", "blocks.0", "blocks.1", "ln_f", "head"]),
        ("gan", {}, ["input:z", "generator", "discriminator"]),
        ("cnn", {}, ["input:x", "blocks.0", "blocks.1", "head"]),
        (
            "hf:gpt2",
            SMALL_HF["hf:gpt2"],
            [
                "input:input_ids",
                "transformer.wte",
                "transformer.wpe",
                "transformer.drop",
                "transformer.h.0",
                "transformer.h.1",
                "transformer.ln_f",
                "lm_head",
            ],
        ),
    ],
)
def test_blocks_follow_module_boundaries(source, overrides, blocks):
    coarse = coarsen(trace(source, overrides))
    assert list(coarse.nodes) == blocks
    assert coarse.graph["order"] == blocks
    assert all(coarse.nodes[b]["fqn"] == b for b in blocks if not b.startswith("input:"))


def test_seventy_billion_parameters_become_a_few_hundred_nodes():
    fine = trace("gpt", {"size": "70b", "seq_len": 128})
    coarse = coarsen(fine)
    assert fine.number_of_nodes() > 1500
    assert 80 < coarse.number_of_nodes() < 300
    assert totals(coarse)["param_count"] == totals(fine)["param_count"] > 69e9


def _module(kind, *children):
    return {"type": kind, "children": list(children)}


def test_block_rule_expands_containers_and_modules_holding_a_layer_stack():
    modules = {
        "": _module("Net", "enc", "gen", "head"),
        "enc": _module("Encoder", "enc.layers", "enc.norm"),
        "enc.layers": _module("ModuleList", "enc.layers.0", "enc.layers.1"),
        "enc.layers.0": _module("Layer"),
        "enc.layers.1": _module("Layer"),
        "enc.norm": _module("LayerNorm"),
        # A Sequential of mixed layers is a sub-network, not a stack: it stays one block.
        "gen": _module("Generator", "gen.net"),
        "gen.net": _module("Sequential", "gen.net.0", "gen.net.1"),
        "gen.net.0": _module("Linear"),
        "gen.net.1": _module("ReLU"),
        "head": _module("Linear"),
    }
    assert block_fqns(modules) == {"enc.layers.0", "enc.layers.1", "enc.norm", "gen", "head"}


def _fine(order_and_modules, modules, edges=()):
    g = nx.DiGraph(modules=modules, order=[n for n, _ in order_and_modules])
    for name, stack in order_and_modules:
        g.add_node(
            name,
            kind="op",
            fqn=stack[-1],
            module_stack=stack,
            output_bytes=4,
            output_shape=[1],
            **{k: 1 for k in NODE_SUMS},
        )
    g.add_edges_from(edges, bytes=4)
    return g


def test_glue_joins_the_block_before_it_and_leading_glue_the_first_block():
    modules = {"": _module("Net", "a", "b"), "a": _module("Linear"), "b": _module("Linear")}
    fine = _fine([("g0", [""]), ("a1", ["", "a"]), ("g1", [""]), ("b1", ["", "b"])], modules)
    assert assign_blocks(fine) == {"g0": "a", "a1": "a", "g1": "a", "b1": "b"}


def test_a_module_called_again_later_absorbs_the_blocks_in_between():
    modules = {"": _module("Net", "a", "b", "c")} | {k: _module("Linear") for k in "abc"}
    order = [("a1", ["", "a"]), ("b1", ["", "b"]), ("a2", ["", "a"]), ("c1", ["", "c"])]
    fine = _fine(order, modules, edges=[("a1", "b1"), ("b1", "a2"), ("a2", "c1")])
    coarse = coarsen(fine)
    assert list(coarse.nodes) == ["a", "c"]
    assert coarse.nodes["a"]["members"] == 3
    assert nx.is_directed_acyclic_graph(coarse)
