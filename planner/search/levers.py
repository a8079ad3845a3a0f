"""The memory levers a candidate tries, cheapest in time first.

At one layout, sharding and recomputation never make a step faster: sharding adds gathers
(``full_shard`` gathers again for backward, `planner.cost.sharded`), recomputation runs
forwards again. So a candidate is priced with the cheapest lever first and with the next
only while it does not fit: ``replicate``, ``shard_grad_op``, ``hybrid_shard`` (where every
data-parallel group spans nodes evenly), ``full_shard``, each without recomputation, then
each again recomputing every block. What cannot win is never priced: a lever after one
that fits. A user may pin either lever (then only that one is tried).
"""

from __future__ import annotations

from planner.cluster import Cluster
from planner.errors import PlannerError
from planner.search.candidate import Candidate
from planner.sharding import DpMode, hybrid_shard_error, recompute_every

AUTO = "auto"
DP_MODES = (AUTO, *(m.value for m in DpMode))
"""What ``--dp-mode`` takes."""


def check_levers(dp_mode: str, recompute: str) -> None:
    """Refuse a lever the search does not know, naming it."""
    if dp_mode not in DP_MODES:
        raise PlannerError(f"dp_mode {dp_mode[:40]!r} is not one of {', '.join(DP_MODES)}")
    if recompute != AUTO:
        try:
            recompute_every(recompute)
        except ValueError as exc:
            raise PlannerError(f"{exc} (or auto)") from None


def levers(
    c: Candidate, cluster: Cluster, dp_mode: str, recompute: str, adversarial: bool
) -> list[tuple[DpMode, str]]:
    """(dp_mode, recompute) for ``c`` to try, in order; empty when a pinned lever cannot
    apply to its layout (a sharded mode without replicas; hybrid_shard on one node)."""
    if adversarial:  # the GAN's players step apart: replicated, nothing recomputed
        return [(DpMode.REPLICATE, "none")] if dp_mode in (AUTO, DpMode.REPLICATE) else []
    modes = [DpMode.REPLICATE]
    if c.dp_degree > 1:
        modes += [DpMode.SHARD_GRAD_OP]
        if _spans_nodes_evenly(c, cluster):
            modes += [DpMode.HYBRID_SHARD]
        modes += [DpMode.FULL_SHARD]
    if dp_mode != AUTO:
        modes = [m for m in modes if m == dp_mode]
    settings = ["none", "full"] if recompute == AUTO else [recompute]
    return [(m, r) for r in settings for m in modes]


def _spans_nodes_evenly(c: Candidate, cluster: Cluster) -> bool:
    """Whether every data-parallel group of ``c`` can shard in its nodes and replicate across."""
    nodes: dict[int, list[int]] = {}
    for device, coord in zip(c.devices, c.coords, strict=True):
        nodes.setdefault(coord[1:], []).append(cluster.device(device).node)
    return hybrid_shard_error(nodes.values()) is None
