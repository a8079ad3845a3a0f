"""The screen: a quick step time for every candidate, so only the most promising are priced.

Pricing a candidate simulates its whole step, and finding its best split prices many; a
search enumerates hundreds to thousands of layouts. The screen ranks them all by a closed
form instead: the pipeline's fill and drain on a split balanced by device speed, plus
streaming the gradients once over the slowest link. Per-kind totals and link figures are
cached, since many candidates share them.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import networkx as nx

from planner.cluster import Cluster
from planner.cost.price import Pricer
from planner.plan import Strategy
from planner.precision import DTYPE_BYTES, Precision
from planner.search.candidate import Candidate


class Screen:
    """Quick step-time estimates for screening candidates, from cached per-kind totals."""

    def __init__(self, pricer: Pricer, graph: nx.DiGraph, blocks: list[str], training: dict[str, Any]):
        self.pricer, self.blocks = pricer, blocks
        recipe = Precision(training.get("precision", Precision.FP32)).recipe
        traced = DTYPE_BYTES[graph.graph.get("dtype", "float32")]
        self.dtype = recipe.compute
        self.scale = recipe.compute_bytes / traced
        self.trace_batch = int(graph.graph.get("batch_size", 1))
        weight_scale = recipe.weight_bytes / traced
        self.grad_bytes = sum(graph.nodes[b]["param_bytes"] for b in blocks) * weight_scale
        self._totals: dict[tuple[str, float, int, bool], tuple[float, float]] = {}
        self._links: dict[tuple[int, ...], float] = {}
        self._kind_cluster: Cluster | None = None
        self._kind: str | None = None
        tp_bytes = [graph.nodes[b].get("tp") for b in blocks]
        self.tp_bytes = (
            sum(2 * (sum(t["gathered"]) + sum(t["reduced"])) for t in tp_bytes if t) / self.trace_batch
        )
        """Bytes per sample of a tensor group's collectives over the whole model, in the traced dtype."""

    def _only_kind(self, cluster: Cluster) -> str | None:
        """The cluster's one device kind, or None when it has several (asked once a cluster)."""
        if self._kind_cluster is not cluster:
            kinds = {d.kind for d in cluster.devices}
            self._kind_cluster, self._kind = cluster, kinds.pop() if len(kinds) == 1 else None
        return self._kind

    def slowest_link(self, cluster: Cluster, devices: tuple[int, ...]) -> float:
        """Least bandwidth between neighbours in this device order (many candidates share one)."""
        if devices not in self._links:
            self._links[devices] = min(cluster.path(a, b).bandwidth for a, b in itertools.pairwise(devices))
        return self._links[devices]

    def totals(self, kind: str, mb: float, tp: int = 1, sp: bool = False) -> tuple[float, float]:
        """(whole model, largest block) forward + backward seconds per micro-batch on ``kind``,
        on one rank of a tensor group of ``tp``."""
        key = (kind, mb, tp, sp)
        if key not in self._totals:
            times = [
                sum(
                    self.pricer.block_times(b, kind, self.dtype, mb, self.scale, self.trace_batch, tp, sp)[:2]
                )
                for b in self.blocks
            ]
            self._totals[key] = (sum(times), max(times))
        return self._totals[key]

    def __call__(self, cluster: Cluster, c: Candidate) -> float:
        """The pipeline closed form on a split balanced by device speed, plus streaming the
        gradients once over the slowest link between neighbouring devices."""
        if c.strategy == Strategy.MP:
            return 0.0  # few enough to price them all
        worst = 0.0
        tp, sp = c.tp_degree, c.sequence_parallel
        only = self._only_kind(cluster)
        if only is not None:  # one kind of device: every replica's stages run on it
            kinds_of = [[only] * c.pp_degree] * c.dp_degree
        else:
            kinds_of = [[] for _ in range(c.dp_degree)]  # one pass, not one per replica
            for r, device in enumerate(c.devices):
                if r % tp == 0:  # a tensor group's ranks are consecutive and run alike
                    kinds_of[c.coords[r][0]].append(cluster.device(device).kind)
        # The tensor group's collectives, on its slowest link, spread over the pipeline.
        group = self.slowest_link(cluster, tuple(c.devices[:tp])) if tp > 1 else math.inf
        tp_comm = self.tp_bytes * self.scale * 2 * (tp - 1) / tp / group / c.pp_degree
        seen: set[tuple] = set()
        for dp in range(c.dp_degree):
            replica = (c.shares[dp], tuple(kinds_of[dp]))
            if replica in seen:  # a replica like one before finishes when it does
                continue
            seen.add(replica)
            mb = c.shares[dp] / c.micro_batches
            totals = [self.totals(k, mb, tp, sp) for k in kinds_of[dp]]
            balanced = 1 / sum(1 / t for t, _ in totals)  # work split in proportion to speed
            stage = max(balanced, max(b for _, b in totals)) + tp_comm * mb  # a block is never split
            fill = (c.pp_degree - 1) / c.virtual_stages
            worst = max(worst, (c.micro_batches + fill) * stage)
        if c.dp_degree > 1:
            worst += 2 * self.grad_bytes / tp / c.pp_degree / self.slowest_link(cluster, tuple(c.devices))
        return worst
