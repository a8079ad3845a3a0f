"""Small hand-built coarsened graphs and clusters whose costs can be worked out by hand."""

from __future__ import annotations

import networkx as nx

from planner.cluster import Cluster
from planner.devices import device_kind

UNIT = 1e-3  # one time unit = 1 ms of forward work
PEAK = device_kind("h100-80gb").peak_flops["float32"]


def chain(forward_units, *, edge_bytes=0, grad_bytes=None, skips=(), params=None, saved=None, out_bytes=None):
    """Blocks b0..bn-1 in a chain; block i's forward takes forward_units[i] ms on an H100 at
    full efficiency (see `exact`). ``skips`` are (i, j, bytes) edges from block i to block j."""
    n = len(forward_units)
    g = nx.DiGraph(
        source="handmade", overrides={}, batch_size=1, dtype="float32", input_shapes=[[1]], param_bytes={}
    )
    g.add_node(
        "input:x",
        kind="input",
        fqn="",
        op="input",
        ops=[],
        param_bytes=0,
        param_count=0,
        saved_bytes=0,
        output_bytes=0,
        params=[],
        shared_params=[],
        resaved_from={},
    )
    for i, f in enumerate(forward_units):
        p = (params or [0] * n)[i]
        name = f"b{i}"
        g.add_node(
            name,
            kind="block",
            fqn=name,
            op="Block",
            ops=[[f * UNIT * PEAK, 0, 0]] if f else [],
            param_bytes=4 * p,
            param_count=p,
            params=[f"{name}.weight"] if p else [],
            shared_params=[],
            saved_bytes=(saved or [0] * n)[i],
            output_bytes=(out_bytes or [0] * n)[i],
            resaved_from={},
        )
        if p:
            g.graph["param_bytes"][f"{name}.weight"] = 4 * p
    g.add_edge("input:x", "b0", bytes=0, grad_bytes=0)
    for i in range(n - 1):
        g.add_edge(
            f"b{i}",
            f"b{i + 1}",
            bytes=edge_bytes,
            grad_bytes=edge_bytes if grad_bytes is None else grad_bytes,
        )
    for i, j, nbytes in skips:
        g.add_edge(f"b{i}", f"b{j}", bytes=nbytes, grad_bytes=nbytes)
    g.graph["order"] = list(g.nodes)
    return g


def gpus(n, *, latency=0.0, bandwidth=1e30, kind="h100-80gb", memory=80 * 2**30):
    """n devices on one node, every pair linked with the given latency and bandwidth."""
    return Cluster(
        name=f"handmade-{n}",
        devices=[{"id": i, "kind": kind, "node": 0, "memory_bytes": memory} for i in range(n)],
        links=[
            {"a": a, "b": b, "kind": "nvlink4", "latency": latency, "bandwidth": bandwidth}
            for a in range(n)
            for b in range(a + 1, n)
        ],
    )
