"""Plotly figures of a priced plan: placement, memory, schedule, and where time goes."""

from __future__ import annotations

import itertools
from collections import defaultdict

import networkx as nx
import plotly.graph_objects as go

from planner.cost import Prediction
from planner.figures import WEBGL_FROM, chain_layout
from planner.plan import Plan

MiB = 2**20
MEMORY_TERMS = (
    "parameters",
    "gradients",
    "optimizer",
    "activations",
    "loss_outputs",
    "buffers",
    "temporaries",
    "build",
    "runtime",
    "overhead",
)
KIND_COLOURS = {
    "forward": "#4C78A8",
    "backward": "#F58518",
    "optimizer": "#54A24B",
    "send": "#B279A2",
    "all-reduce": "#E45756",
    "idle": "#DDDDDD",
}
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D")


def stage_of_block(plan: Plan) -> dict[str, int]:
    return {block: i for i, blocks in enumerate(plan.stage_blocks()) for block in blocks}


def placement_figure(
    graph: nx.DiGraph, plan: Plan, expanded: dict[str, list[str]] | None = None, per_row: int = 8
) -> go.Figure:
    """Blocks coloured by the pipeline rank that holds them; edges that cross ranks in red.

    ``expanded`` maps a block to its ops: those blocks are drawn op by op (small markers,
    chained in execution order) instead of as one marker.
    """
    expanded = expanded or {}
    stage = stage_of_block(plan)
    blocks = [b for b in plan.model.blocks if b in graph]
    points = [(op, b) for b in blocks for op in (expanded.get(b) or [b])]  # (point, its block)
    order = [p for p, _ in points]
    block_of = dict(points)
    first = {b: (expanded.get(b) or [b])[0] for b in blocks}
    last = {b: (expanded.get(b) or [b])[-1] for b in blocks}
    pos = chain_layout(order, per_row)
    scatter = go.Scattergl if len(order) > WEBGL_FROM else go.Scatter
    pairs = [(last[a], first[b]) for a, b in graph.edges() if a in stage and b in stage]
    pairs += [pair for b in blocks for pair in itertools.pairwise(expanded.get(b, []))]
    fig = go.Figure()
    same: list[list[float | None]] = [[], []]
    cross: list[list[float | None]] = [[], []]
    for a, b in pairs:
        ra, rb = plan.stages[stage[block_of[a]]].pp_rank, plan.stages[stage[block_of[b]]].pp_rank
        target = cross if ra != rb else same
        target[0] += [pos[a][0], pos[b][0], None]
        target[1] += [pos[a][1], pos[b][1], None]
    fig.add_trace(
        scatter(
            x=same[0],
            y=same[1],
            mode="lines",
            line=dict(width=1, color="#999"),
            hoverinfo="skip",
            name="same device",
        )
    )
    fig.add_trace(
        scatter(
            x=cross[0],
            y=cross[1],
            mode="lines",
            line=dict(width=4, color="#D62728"),
            hoverinfo="skip",
            name="crosses devices",
        )
    )
    for pp_rank in range(plan.pp_degree):
        mine = [p for p in order if plan.stages[stage[block_of[p]]].pp_rank == pp_rank]
        devices = [r.device for r in plan.ranks if r.pp_index == pp_rank]
        fig.add_trace(
            scatter(
                x=[pos[p][0] for p in mine],
                y=[pos[p][1] for p in mine],
                mode="markers+text" if len(order) <= 64 else "markers",
                text=[p.rsplit(".", 2)[-1] if len(p) > 14 else p for p in mine],
                textposition="top center",
                marker=dict(
                    size=[16 if p in stage else 8 for p in mine],
                    color=PALETTE[pp_rank % len(PALETTE)],
                    line=dict(width=1, color="#333"),
                ),
                hovertext=[
                    f"{p}<br>block {block_of[p]}, stage {stage[block_of[p]]}, pipeline rank {pp_rank}, "
                    f"devices {devices}"
                    for p in mine
                ],
                hoverinfo="text",
                name=f"pipeline rank {pp_rank} (devices {devices})",
            )
        )
    fig.update_layout(
        height=max(260, 110 * (1 + len(order) // per_row)),
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        title="Placement: blocks by pipeline rank",
    )
    return fig


def memory_figure(prediction: Prediction) -> go.Figure:
    """Per device, the predicted memory term by term, against the device's capacity."""
    devices = [f"device {m.device}" for m in prediction.memory]
    fig = go.Figure()
    for term in MEMORY_TERMS:
        fig.add_trace(
            go.Bar(
                name=term.replace("_", " "), x=devices, y=[getattr(m, term) / MiB for m in prediction.memory]
            )
        )
    fig.add_trace(
        go.Scatter(
            name="capacity",
            x=devices,
            y=[m.capacity / MiB for m in prediction.memory],
            mode="markers",
            marker=dict(symbol="line-ew-open", size=40, color="black"),
        )
    )
    fig.update_layout(
        barmode="stack",
        yaxis_title="MiB",
        title="Memory per device",
        height=360,
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def gantt_figure(prediction: Prediction) -> go.Figure:
    """The simulated step, rank by rank (`price()`'s timeline); idle time is the bubble."""
    by_kind: dict[str, list] = defaultdict(list)
    for i in prediction.timeline:
        by_kind[i.kind].append(i)
    fig = go.Figure()
    for kind, items in by_kind.items():
        fig.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[f"rank {i.rank}" for i in items],
                base=[i.start * 1e3 for i in items],
                x=[(i.end - i.start) * 1e3 for i in items],
                marker_color=KIND_COLOURS.get(kind, "#888"),
                hovertext=[f"{kind} stage {i.stage} mb {i.micro_batch}" for i in items],
                hoverinfo="text+x",
            )
        )
    ranks = len({i.rank for i in prediction.timeline})
    fig.update_layout(
        barmode="overlay",
        xaxis_title="ms",
        height=120 + 40 * ranks,
        title=f"Schedule (bubble {prediction.bubble_fraction:.1%})",
        yaxis=dict(autorange="reversed"),
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def time_split(prediction: Prediction) -> dict[int, dict[str, float]]:
    """Seconds of compute, communication and idle per rank in one step."""
    out: dict[int, dict[str, float]] = defaultdict(
        lambda: {"compute": 0.0, "communication": 0.0, "idle": 0.0}
    )
    for i in prediction.timeline:
        if i.kind in ("forward", "backward", "optimizer"):
            key = "compute"
        else:
            key = "idle" if i.kind == "idle" else "communication"
        out[i.rank][key] += i.end - i.start
    return dict(out)
