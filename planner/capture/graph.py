"""The layer graph: a `networkx.DiGraph` with costs per node and bytes per edge.

Node attributes (fine graph from `planner.capture.trace`, and coarsened blocks alike):
    fqn             module path of the innermost module the op ran in ('' = root)
    kind            'input', 'op' (fine graph) or 'block' (coarsened)
    op              aten op name ('linear', 'layer_norm', ...) or the block's module type
    fwd_flops       forward FLOPs, from torch.utils.flop_counter
    param_count     parameters owned here (a shared/tied parameter is owned by its first user)
    param_bytes     bytes of those parameters
    params          FQNs of those parameters
    shared_params   FQNs of tied parameters this node uses or owns that others use too
    buffer_bytes    bytes of module buffers owned here
    saved_bytes     bytes autograd keeps for backward (de-duplicated by storage: a tensor
                    kept by several ops counts once, at the first op that keeps it)
    resaved         fine graph: [storage id, producer node, first keeper, bytes] for each
                    tensor this op keeps that an earlier op already counted
    resaved_from    coarsened: {producer block: bytes} this block keeps of tensors counted
                    in another block; a stage cut between them keeps a second copy here
    output_shape    shape of the (first) output tensor
    output_bytes    bytes of all outputs
    read_bytes      bytes read from inputs and parameters (0 for views)
    weight_read_bytes  the part of read_bytes that is parameters and buffers (batch-independent)
    write_bytes     bytes written (0 for views)
    ops             coarsened: [[fwd_flops, activation bytes moved, weight bytes read], ...]
                    per op, so a roofline can be taken op by op (see planner.cost.price)
Edge attributes: ``bytes``, the producer's output bytes that cross the edge, and
``grad_bytes``, the part that carries a gradient back in backward (float tensors that
require grad; masks and token ids carry none).

Activation figures (saved, output, read, write, FLOPs) are for ``graph.graph['batch_size']``
samples: one, unless the graph was traced with a larger batch.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

NODE_SUMS = (
    "fwd_flops",
    "param_count",
    "param_bytes",
    "buffer_bytes",
    "saved_bytes",
    "read_bytes",
    "weight_read_bytes",
    "write_bytes",
)


def node_attrs(
    kind: str, fqn: str, op: str, shape: list[int], output_bytes: int, **values: Any
) -> dict[str, Any]:
    """A fine-graph node's attributes: every key above, zero unless given in ``values``."""
    attrs: dict[str, Any] = {
        "fqn": fqn,
        "module_stack": [],
        "kind": kind,
        "op": op,
        "fwd_flops": 0,
        "param_count": 0,
        "param_bytes": 0,
        "params": [],
        "shared_params": [],
        "buffer_bytes": 0,
        "saved_bytes": 0,
        "resaved": [],
        "output_shape": list(shape),
        "output_bytes": output_bytes,
        "read_bytes": 0,
        "weight_read_bytes": 0,
        "write_bytes": 0,
    }
    unknown = set(values) - set(attrs)
    if unknown:
        raise KeyError(f"not node attributes: {sorted(unknown)}")
    attrs.update(values)
    return attrs


def totals(graph: nx.DiGraph) -> dict[str, int]:
    """Sum the additive node attributes and the edge bytes of ``graph``."""
    out = {key: sum(int(d.get(key, 0)) for _, d in graph.nodes(data=True)) for key in NODE_SUMS}
    out["edge_bytes"] = sum(int(d.get("bytes", 0)) for _, _, d in graph.edges(data=True))
    return out


def summary(graph: nx.DiGraph) -> dict[str, int]:
    """The figures the command line and the Model page show, per sample.

    >>> g = nx.DiGraph(batch_size=2)
    >>> g.add_node("a", fwd_flops=8, param_count=3, saved_bytes=4, output_bytes=6)
    >>> summary(g)["fwd_flops_per_sample"], summary(g)["largest_activation_bytes"]
    (4, 3)
    """
    batch = int(graph.graph.get("batch_size", 1))
    t = totals(graph)
    largest = max((int(d.get("output_bytes", 0)) for _, d in graph.nodes(data=True)), default=0)
    return {
        "num_nodes": graph.number_of_nodes(),
        "param_count": t["param_count"],
        "fwd_flops_per_sample": t["fwd_flops"] // batch,
        "saved_bytes_per_sample": t["saved_bytes"] // batch,
        "largest_activation_bytes": largest // batch,
    }


def op_entry(data: dict[str, Any]) -> list[int] | None:
    """A fine op's ``[fwd_flops, activation bytes moved, weight bytes read]`` in its block's
    ``ops`` (`planner.capture.graph`), or None when it does no work (a view)."""
    weights = int(data.get("weight_read_bytes", 0))
    moved = int(data.get("read_bytes", 0)) - weights + int(data.get("write_bytes", 0))
    flops = int(data.get("fwd_flops", 0))
    return [flops, moved, weights] if flops or moved or weights else None


def graph_digest(graph: nx.DiGraph) -> str:
    """sha256 of what the planner prices: nodes, edges, source, batch and dtype.

    Excludes timings of the trace itself, so tracing the same model twice gives one digest.
    """
    import hashlib
    import json

    keep = ("source", "overrides", "batch_size", "dtype", "input_shapes")
    doc = {
        "graph": {k: graph.graph.get(k) for k in keep},
        "nodes": [[n, graph.nodes[n]] for n in block_order(graph)],
        "edges": sorted([a, b, d] for a, b, d in graph.edges(data=True)),
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """Node-link data (JSON-ready) of ``graph``, keeping the graph attributes."""
    return nx.node_link_data(graph, edges="edges")


def from_json(data: dict[str, Any]) -> nx.DiGraph:
    """Inverse of `to_json`."""
    return nx.node_link_graph(data, directed=True, edges="edges")


def attach_params(graph: nx.DiGraph, params: list[tuple[str, int, int]]) -> None:
    """Give parameters that no traced op used to the node of the closest module.

    A branch not taken (or a module never called) still holds its weights on whatever
    device runs that module, so they count where its siblings ran.
    ``params`` holds ``(fqn, numel, nbytes)``.
    """
    ops = [n for n, d in graph.nodes(data=True) if d.get("kind") != "input"]
    if not ops:
        return
    for fqn, numel, nbytes in params:
        module = fqn.rpartition(".")[0]
        best = max(ops, key=lambda n: _shared_prefix(graph.nodes[n].get("fqn", ""), module))
        node = graph.nodes[best]
        node["params"].append(fqn)
        node["param_count"] += numel
        node["param_bytes"] += nbytes
    graph.graph["unused_params"] = [fqn for fqn, _, _ in params]


def _shared_prefix(a: str, b: str) -> int:
    """Number of leading dotted components ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def block_order(graph: nx.DiGraph) -> list[str]:
    """Nodes in the graph's fixed execution (topological) order."""
    order = graph.graph.get("order")
    return list(order) if order else list(nx.topological_sort(graph))


def model_blocks(graph: nx.DiGraph) -> list[str]:
    """The coarsened graph's blocks in execution order, without its input nodes."""
    return [n for n in block_order(graph) if graph.nodes[n].get("kind") != "input"]
