"""Which link joins two devices of a cluster, without a table of every pair.

A cluster states its links two ways: explicit per-pair links, and link groups (one link
kind for every pair of two device kinds, inside one node or between nodes). A pair takes
its explicit link if it has one, else its group's; a pair with neither talks over the
widest path through other devices (the most bandwidth at its narrowest hop, then the least
latency among such paths). Everything here costs what the cluster's description costs:
devices, explicit links and groups, never the number of device pairs.

Devices that no explicit link touches and that share a node and a kind are
interchangeable: they have the same direct links to every other device. Path searches
keep one of each such class (plus the devices at the ends), so a 16,384-GPU cluster
described by groups searches a few thousand vertices, not 134 M edges.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

SAME_NODE, BETWEEN_NODES = "same_node", "between_nodes"


class LinkCost(NamedTuple):
    """What one message pays on a link or a path: ``latency_s + bytes / bandwidth``.

    Latency first, everywhere: the cluster's paths, the profile's measured fits and the
    pricer's links all return this.
    """

    latency_s: float
    """Seconds per message."""
    bandwidth: float
    """Bytes/s per direction."""


class DirectLink(NamedTuple):
    kind: str
    bandwidth: float
    """Bytes/s per direction."""
    latency: float
    """Seconds."""
    source: str
    """'link' (an explicit per-pair link) or 'group'."""


@dataclass(frozen=True)
class LinkRow:
    """One line of a grouped link table: pairs that share a link, its figures and where they are."""

    kind: str
    bandwidth: float
    latency: float
    source: str
    scope: str
    """SAME_NODE or BETWEEN_NODES."""
    nodes: tuple[int, int] | None
    """The node pair (equal for SAME_NODE); None when summed over every node (pair)."""
    device_kinds: tuple[str, str]
    pairs: int


class Topology:
    """Direct links and paths of one cluster.

    Parameters
    ----------
    devices : (id, canonical kind, node) of every device.
    links : (a, b, DirectLink) per explicit link.
    groups : (scope, kind, kind, DirectLink) per link group.
    """

    def __init__(
        self,
        devices: Iterable[tuple[int, str, int]],
        links: Iterable[tuple[int, int, DirectLink]],
        groups: Iterable[tuple[str, str, str, DirectLink]],
    ):
        self.kind: dict[int, str] = {}
        self.node: dict[int, int] = {}
        for device, kind, node in devices:
            self.kind[device], self.node[device] = kind, node
        self.explicit: dict[int, dict[int, DirectLink]] = defaultdict(dict)
        for a, b, spec in links:
            self.explicit[a][b] = self.explicit[b][a] = spec
        self.groups: dict[tuple[str, str, str], DirectLink] = {}
        for scope, k1, k2, spec in groups:
            self.groups[scope, k1, k2] = self.groups[scope, k2, k1] = spec
        # (node, kind) -> devices no explicit link touches: interchangeable with each other.
        self.classes: dict[tuple[int, str], list[int]] = defaultdict(list)
        for device, kind in self.kind.items():
            if device not in self.explicit:
                self.classes[self.node[device], kind].append(device)
        self._widest: dict[tuple, _Search] = {}

    # -- one pair -------------------------------------------------------------------------
    def direct(self, a: int, b: int) -> DirectLink | None:
        """The link that joins ``a`` and ``b`` directly: explicit first, then its group."""
        spec = self.explicit.get(a, {}).get(b)
        if spec is not None:
            return spec
        scope = SAME_NODE if self.node[a] == self.node[b] else BETWEEN_NODES
        return self.groups.get((scope, self.kind[a], self.kind[b]))

    def path(self, a: int, b: int) -> LinkCost:
        """From ``a`` to ``b``: the direct link, else the widest path with its hops'
        latencies added (no latency and unbounded bandwidth for a device to itself)."""
        if a == b:
            return LinkCost(0.0, math.inf)
        spec = self.direct(a, b)
        if spec is not None:
            return LinkCost(spec.latency, spec.bandwidth)
        key = ("device", a) if a in self.explicit else ("class", self.node[a], self.kind[a])
        if key not in self._widest:
            self._widest[key] = _Search(self, a)
        return self._widest[key].to(b)

    # -- the whole cluster ----------------------------------------------------------------
    def parts(self) -> list[list[int]]:
        """Devices split into the groups that links join (one part: all connected)."""
        parent = {d: d for d in self.kind}

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def join(x: int, y: int) -> None:
            parent[root(x)] = root(y)

        for a, links in self.explicit.items():
            for b in links:
                join(a, b)
        by_kind: dict[str, list[int]] = defaultdict(list)
        by_node_kind: dict[tuple[int, str], list[int]] = defaultdict(list)
        for d, kind in self.kind.items():
            by_kind[kind].append(d)
            by_node_kind[self.node[d], kind].append(d)
        for scope, k1, k2 in self.groups:
            if k1 > k2:
                continue  # each group is stored both ways
            if scope == SAME_NODE:
                for (node, kind), members in list(by_node_kind.items()):
                    others = by_node_kind.get((node, k2), [])
                    if kind != k1 or not others:
                        continue
                    # A complete (bipartite) graph is connected: join all to one member.
                    for d in members:
                        join(d, others[0])
                    for d in others:
                        join(d, members[0])
                continue
            # Between nodes: every device of k1 meets every device of k2 on another node.
            # Joining each device to up to two hubs of the other kind, on two different
            # nodes, joins exactly what the complete multipartite graph joins.
            for these, those in (
                (by_kind.get(k1, []), by_kind.get(k2, [])),
                (by_kind.get(k2, []), by_kind.get(k1, [])),
            ):
                hubs = _hubs(those, self.node)
                for d in these:
                    for hub in hubs:
                        if self.node[hub] != self.node[d]:
                            join(d, hub)
        parts: dict[int, list[int]] = defaultdict(list)
        for d in self.kind:
            parts[root(d)].append(d)
        return sorted(sorted(p) for p in parts.values())

    def kinds_used(self) -> set[str]:
        """Link kinds that join at least one pair of devices (explicit links and groups)."""
        used = {spec.kind for links in self.explicit.values() for spec in links.values()}
        counts = _kind_counts(self)
        for (scope, k1, k2), spec in self.groups.items():
            if _group_pairs(scope, k1, k2, counts.per_node, counts.total) > 0:
                used.add(spec.kind)
        return used

    def rows(self, per_node_pair: bool) -> list[LinkRow]:
        """The grouped link table: pairs counted per link, scope and device kinds, and per
        node pair when ``per_node_pair`` (for a few nodes; else summed over nodes)."""
        counts = _kind_counts(self)
        tally: dict[tuple, int] = defaultdict(int)
        for (scope, k1, k2), spec in self.groups.items():
            if k1 > k2:
                continue
            if not per_node_pair:
                tally[spec, scope, None, (k1, k2)] += _group_pairs(
                    scope, k1, k2, counts.per_node, counts.total
                )
                continue
            for nodes, n in _group_pairs_per_node_pair(scope, k1, k2, counts.per_node):
                tally[spec, scope, nodes, (k1, k2)] += n
        for a, links in self.explicit.items():
            for b, spec in links.items():
                if a > b:
                    continue
                scope = SAME_NODE if self.node[a] == self.node[b] else BETWEEN_NODES
                nodes = tuple(sorted((self.node[a], self.node[b]))) if per_node_pair else None
                kinds = tuple(sorted((self.kind[a], self.kind[b])))
                tally[spec, scope, nodes, kinds] += 1
                overridden = self.groups.get((scope, *kinds))
                if overridden is not None:  # this pair no longer takes its group's link
                    tally[overridden, scope, nodes, kinds] -= 1
        rows = [
            LinkRow(spec.kind, spec.bandwidth, spec.latency, spec.source, scope, nodes, kinds, n)
            for (spec, scope, nodes, kinds), n in tally.items()
            if n > 0
        ]
        return sorted(rows, key=lambda r: (r.scope != SAME_NODE, r.nodes or (-1, -1), -r.bandwidth, r.kind))

    def pairs(self) -> int:
        n = len(self.kind)
        return n * (n - 1) // 2


def _hubs(devices: list[int], node: dict[int, int]) -> list[int]:
    """The first device, and the first on another node than it (if any)."""
    if not devices:
        return []
    first = devices[0]
    other = next((d for d in devices if node[d] != node[first]), None)
    return [first] if other is None else [first, other]


class _Counts(NamedTuple):
    per_node: dict[tuple[int, str], int]
    total: dict[str, int]


def _kind_counts(topology: Topology) -> _Counts:
    per_node: dict[tuple[int, str], int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for d, kind in topology.kind.items():
        per_node[topology.node[d], kind] += 1
        total[kind] += 1
    return _Counts(per_node, total)


def _group_pairs(scope: str, k1: str, k2: str, per_node: dict, total: dict) -> int:
    """Device pairs a group covers, from counts per (node, kind): no pair enumerated."""
    nodes = {n for n, _ in per_node}
    same = sum(
        per_node.get((n, k1), 0) * (per_node.get((n, k1), 0) - 1) // 2
        if k1 == k2
        else per_node.get((n, k1), 0) * per_node.get((n, k2), 0)
        for n in nodes
    )
    if scope == SAME_NODE:
        return same
    if k1 == k2:
        t = total.get(k1, 0)
        return t * (t - 1) // 2 - same
    return total.get(k1, 0) * total.get(k2, 0) - same


def _group_pairs_per_node_pair(scope: str, k1: str, k2: str, per_node: dict):
    """(node pair, device pairs) of one group, for the few-node table."""
    nodes = sorted({n for n, _ in per_node})
    for i, n in enumerate(nodes):
        c1, c2 = per_node.get((n, k1), 0), per_node.get((n, k2), 0)
        if scope == SAME_NODE:
            yield (n, n), (c1 * (c1 - 1) // 2 if k1 == k2 else c1 * c2)
            continue
        for m in nodes[i + 1 :]:
            d1, d2 = per_node.get((m, k1), 0), per_node.get((m, k2), 0)
            yield (n, m), (c1 * d1 if k1 == k2 else c1 * d2 + c2 * d1)


class _Search:
    """Widest paths from one device (or any device of its class) to every other device.

    Pass one finds each target's bottleneck bandwidth (Dijkstra on max-min); pass two, per
    distinct bottleneck W, the least latency over links of at least W. Group links are
    never listed: a group's candidates sit in buckets per (node) and leave a bucket once
    relaxed, since later relaxations through the same group can only be worse.
    """

    def __init__(self, topology: Topology, source: int):
        self.t, self.source = topology, source
        # Vertices: every explicitly linked device, the source, one other member per class.
        self.rep: dict[tuple[int, str], int] = {}
        for key, members in topology.classes.items():
            other = next((d for d in members if d != source), None)
            if other is not None:
                self.rep[key] = other
        self.vertices = {*topology.explicit, source, *self.rep.values()}
        self.bandwidth = self._widest()
        self.latency: dict[float, dict[int, float]] = {}

    def to(self, target: int) -> LinkCost:
        t = self.t
        # A device no explicit link touches is interchangeable with its class's member here
        # (for a target in the source's own class too: that member is not the source).
        v = target if target in t.explicit else self.rep[t.node[target], t.kind[target]]
        width = self.bandwidth[v]
        if width not in self.latency:
            self.latency[width] = self._least_latency(width)
        return LinkCost(self.latency[width][v], width)

    def _buckets(self, min_bandwidth: float) -> dict[tuple[str, str, str], dict[int, set[int]]]:
        t = self.t
        by_kind: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
        for v in self.vertices:
            by_kind[t.kind[v]][t.node[v]].add(v)
        return {
            key: {n: set(vs) for n, vs in by_kind[key[2]].items()}
            for key, spec in t.groups.items()
            if spec.bandwidth >= min_bandwidth and key[2] in by_kind
        }

    def _group_neighbours(self, u: int, buckets: dict):
        """(v, link) for each group link from ``u`` not yet relaxed through that group."""
        t = self.t
        explicit = t.explicit.get(u, {})
        for (scope, ku, kv), bucket in buckets.items():
            if ku != t.kind[u]:
                continue
            spec = t.groups[scope, ku, kv]
            nodes = [t.node[u]] if scope == SAME_NODE else [n for n in bucket if n != t.node[u]]
            for n in nodes:
                members = bucket.get(n)
                if not members:
                    continue
                kept = {v for v in members if v in explicit}  # the explicit link wins there
                for v in members - kept:
                    yield v, spec
                if kept:
                    bucket[n] = kept
                else:
                    del bucket[n]

    def _widest(self) -> dict[int, float]:
        t = self.t
        best = {self.source: math.inf}
        heap = [(-math.inf, self.source)]
        done: set[int] = set()
        buckets = self._buckets(0.0)
        while heap:
            neg, u = heapq.heappop(heap)
            if u in done:
                continue
            done.add(u)
            width = -neg
            edges = [(v, s) for v, s in t.explicit.get(u, {}).items()]
            for v, spec in [*edges, *self._group_neighbours(u, buckets)]:
                w = min(width, spec.bandwidth)
                if v not in done and w > best.get(v, -1.0):
                    best[v] = w
                    heapq.heappush(heap, (-w, v))
        return best

    def _least_latency(self, min_bandwidth: float) -> dict[int, float]:
        t = self.t
        dist = {self.source: 0.0}
        heap = [(0.0, self.source)]
        done: set[int] = set()
        buckets = self._buckets(min_bandwidth)
        while heap:
            d, u = heapq.heappop(heap)
            if u in done:
                continue
            done.add(u)
            edges = [(v, s) for v, s in t.explicit.get(u, {}).items() if s.bandwidth >= min_bandwidth]
            for v, spec in [*edges, *self._group_neighbours(u, buckets)]:
                nd = d + spec.latency
                if v not in done and nd < dist.get(v, math.inf):
                    dist[v] = nd
                    heapq.heappush(heap, (nd, v))
        return dist
