"""Assemble a valid `Plan` from a coarsened graph, a cluster and the chosen degrees.

The search (and tests, and the dashboard's manual edits) describe a plan by its choices;
this fills in everything the document needs: stage boundaries as module FQNs, every rank's
device and coordinates, batch shares, the devices left out and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx
from pydantic import ValidationError

from planner.capture.graph import graph_digest, model_blocks
from planner.cluster import Cluster
from planner.errors import PlanError
from planner.plan import (
    ModelRef,
    Plan,
    RankAssignment,
    Replica,
    Stage,
    Training,
    UnusedDevice,
)
from planner.strict import explain


def even_cuts(num_blocks: int, num_stages: int) -> list[int]:
    """Start index of every stage after the first, splitting blocks as evenly as possible.

    >>> even_cuts(10, 3)
    [4, 7]
    """
    if not 1 <= num_stages <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks into {num_stages} non-empty stages")
    base, extra = divmod(num_blocks, num_stages)
    sizes = [base + (1 if i < extra else 0) for i in range(num_stages)]
    starts, at = [], 0
    for size in sizes[:-1]:
        at += size
        starts.append(at)
    return starts


def stages_for(
    blocks: Sequence[str],
    cuts: Sequence[int],
    pp_degree: int,
    names: Sequence[str] | None = None,
    recompute: str = "none",
) -> list[Stage]:
    """Stages from cut positions: stage i holds blocks[starts[i]:starts[i+1]] on rank i % p,
    each recomputing as ``recompute`` says."""
    starts = [0, *cuts]
    ends = [*(s - 1 for s in starts[1:]), len(blocks) - 1]
    labels = list(names) if names else [""] * len(starts)
    return [
        Stage(
            index=i,
            first=blocks[a],
            last=blocks[b],
            pp_rank=i % pp_degree,
            name=labels[i],
            recompute=recompute,
        )
        for i, (a, b) in enumerate(zip(starts, ends, strict=True))
    ]


def make_plan(
    graph: nx.DiGraph,
    cluster: Cluster,
    *,
    strategy: str,
    global_batch: int,
    dp_degree: int = 1,
    pp_degree: int = 1,
    schedule: str | None = None,
    micro_batches: int = 1,
    virtual_stages: int = 1,
    cuts: Sequence[int] | None = None,
    devices: Sequence[int] | None = None,
    coords: Sequence[tuple[int, int]] | None = None,
    shares: Sequence[int] | None = None,
    stage_names: Sequence[str] | None = None,
    training: dict[str, Any] | None = None,
    unused_reason: str = "not needed by this plan",
    digest: str | None = None,
    dp_mode: str = "replicate",
    recompute: str = "none",
    tp_degree: int = 1,
    sequence_parallel: bool = False,
) -> Plan:
    """Build and validate a plan.

    Parameters
    ----------
    cuts
        Index (into the blocks) where each stage after the first begins; even by count if
        omitted.
    devices
        Device of each global rank, in rank order; the cluster's first devices if omitted.
    coords
        ``(dp_index, pp_index)`` or ``(dp_index, pp_index, tp_index)`` of each rank; by
        default a tensor group's ranks are consecutive, then a pipeline's: rank =
        (dp_index * pp_degree + pp_index) * tp_degree + tp_index.
    shares
        Samples per replica; an even split if omitted.
    digest
        The graph's digest when the caller has it already (the search builds many plans).
    dp_mode, recompute
        How the data-parallel groups hold the model, and what every stage recomputes
        (`planner.sharding`).
    tp_degree, sequence_parallel
        The tensor groups' size, and whether they split norms along the sequence
        (`planner.tensor_parallel`).

    Raises
    ------
    planner.errors.PlanError
        Through `Plan` validation, naming the field that is inconsistent.
    """
    blocks = model_blocks(graph)
    num_stages = pp_degree * virtual_stages
    chosen = list(cuts) if cuts is not None else even_cuts(len(blocks), num_stages)
    stages = stages_for(blocks, chosen, pp_degree, stage_names, recompute)
    n = dp_degree * pp_degree * tp_degree
    device_ids = list(devices) if devices is not None else [d.id for d in cluster.devices[:n]]
    ranks = _rank_assignments(cluster, device_ids, coords, dp_degree, pp_degree, tp_degree)
    if shares is None:
        base, extra = divmod(global_batch, dp_degree)
        shares = [base + (1 if i < extra else 0) for i in range(dp_degree)]
    replicas = [Replica(dp_index=i, batch_share=s) for i, s in enumerate(shares)]
    used = set(device_ids)
    unused = [UnusedDevice(device=d.id, reason=unused_reason) for d in cluster.devices if d.id not in used]
    train = {
        "global_batch": global_batch,
        "micro_batches": micro_batches,
        "dataset": graph.graph.get("dataset") or "none",
        **(training or {}),
    }
    try:
        # The cluster instance is taken as it is (already validated); the plan's own
        # consistency checks run exactly as they do for a file.
        return Plan(
            model=_model_ref(graph, blocks, digest),
            cluster=cluster,
            unused_devices=unused,
            training=Training(**train),
            strategy=strategy,
            schedule=schedule,
            virtual_stages=virtual_stages,
            dp_mode=dp_mode,
            dp_degree=dp_degree,
            pp_degree=pp_degree,
            tp_degree=tp_degree,
            sequence_parallel=sequence_parallel,
            stages=stages,
            ranks=ranks,
            replicas=replicas,
        )
    except ValidationError as exc:
        raise PlanError(f"plan: {explain(exc)}") from None


def _rank_assignments(
    cluster: Cluster,
    devices: list[int],
    coords: Sequence[tuple[int, ...]] | None,
    dp_degree: int,
    pp_degree: int,
    tp_degree: int = 1,
) -> list[RankAssignment]:
    """Each rank's device, node and coordinates; a tensor group's ranks consecutive by
    default, then a pipeline's (tensor groups inside a node: their collectives run on every
    block)."""
    n = dp_degree * pp_degree * tp_degree
    if coords is None:
        grid = [(r // (pp_degree * tp_degree), (r // tp_degree) % pp_degree, r % tp_degree) for r in range(n)]
    else:
        grid = [(*c, 0) if len(c) == 2 else tuple(c) for c in coords]
    if len(devices) != n:
        raise PlanError(f"devices: {len(devices)} listed for dp x pp x tp = {n} ranks")
    return [
        RankAssignment(
            rank=r, device=dev, node=cluster.device(dev).node, dp_index=c[0], pp_index=c[1], tp_index=c[2]
        )
        for r, (dev, c) in enumerate(zip(devices, grid, strict=True))
    ]


def _model_ref(graph: nx.DiGraph, blocks: list[str], digest: str | None) -> ModelRef:
    """The model as the plan records it: its source, overrides, graph digest and blocks."""
    return ModelRef(
        source=graph.graph.get("source", ""),
        overrides=graph.graph.get("overrides", {}),
        graph_digest=digest or graph_digest(graph),
        blocks=blocks,
        input_shapes=graph.graph.get("input_shapes", []),
        trace_batch_size=graph.graph.get("batch_size", 1),
        seq_len=(graph.graph.get("config") or {}).get("seq_len"),
    )
