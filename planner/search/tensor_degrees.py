"""Which tensor-parallel degrees the search tries, and why not the others.

``auto``: every divisor of the devices per node (a tensor group stays in a node: its
collectives run on every block, `planner.cost.tensor_parallel`) that divides the attention
and key/value heads of every block with a layout (`planner.capture.tp_roles`); only 1 when
no block has one. A pinned degree is checked the same way and refused by name. What limited
the degrees is said in words, for the candidates table.
"""

from __future__ import annotations

import math
from collections import Counter

import networkx as nx

from planner.cluster import Cluster
from planner.cost.tensor_parallel import heads_error
from planner.errors import PlannerError
from planner.search.levers import AUTO


def parse_tp(value: str | int) -> str | int:
    """``auto`` or a positive degree, from the command line or a caller; PlannerError otherwise."""
    if value == AUTO:
        return AUTO
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) < 1:
        raise PlannerError(f"tp: {text[:40]!r} is not auto or a positive whole number of ranks")
    return int(text)


def tp_degrees(graph: nx.DiGraph, cluster: Cluster, tp: str | int) -> tuple[list[int], list[str]]:
    """(the degrees to try, what limited them, in words)."""
    tp = parse_tp(tp)
    layouts = {b: data["tp"] for b, data in graph.nodes(data=True) if "tp" in data}
    if tp == 1:
        return [1], []
    if not layouts:
        if tp == AUTO:
            return [1], ["tp 1 only: no block of this model has a tensor-parallel layout"]
        raise PlannerError(f"tp: {tp}: no block of this model has a tensor-parallel layout (use 1)")
    allowed = degrees_in_nodes(cluster)
    if tp != AUTO and tp not in allowed:
        counts = sorted(set(Counter((d.node, d.kind) for d in cluster.devices).values()))
        raise PlannerError(
            f"tp: {tp} does not divide every node's devices of a kind ({', '.join(map(str, counts))}): "
            "a tensor group stays in a node"
        )
    wanted = allowed if tp == AUTO else [tp]
    degrees, notes = [], []
    for t in wanted:
        why = heads_error(graph, t)
        if why is None:
            degrees.append(t)
        elif tp == AUTO:
            notes.append(f"tp {t} not tried: {why}")
        else:
            raise PlannerError(f"tp: {why}")
    replicated = [b for b in _blocks(graph) if b not in layouts]
    if max(degrees) > 1 and replicated:
        shown = ", ".join(replicated[:4]) + (
            f" and {len(replicated) - 4} more" if len(replicated) > 4 else ""
        )
        notes.append(
            f"{len(replicated)} blocks without a tensor-parallel layout run whole on each rank: {shown}"
        )
    return degrees, notes


def degrees_in_nodes(cluster: Cluster) -> list[int]:
    """The tensor-parallel degrees whose groups fit inside every node: the divisors of the
    devices of a kind per node (their greatest common divisor, on a mixed cluster)."""
    per_node = math.gcd(*Counter((d.node, d.kind) for d in cluster.devices).values())
    return [t for t in range(1, per_node + 1) if per_node % t == 0]


def _blocks(graph: nx.DiGraph) -> list[str]:
    return [b for b, data in graph.nodes(data=True) if data.get("kind") == "block"]
