"""Plotly figures of a priced plan: placement, memory, schedule, and where time goes.

Every figure on an axis, in a hover or in a legend is written by `dashboard.format`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import networkx as nx
import plotly.graph_objects as go

from dashboard import format as fmt
from dashboard.figures.graph import WEBGL_FROM, chain_layout
from planner.cost.price import Prediction
from planner.cost.sharded import GATHER, REDUCE
from planner.cost.simulate import IDLE_CAUSES
from planner.cost.tensor_parallel import TP_COLLECTIVE
from planner.plan import Plan

MiB = 2**20
MEMORY_TERMS = {  # term -> what the legend calls it, bottom of the bar first
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer": "optimizer state",
    "gathered": "gathered parameters (sharded)",
    "casts": "16-bit copies of weights (autocast)",
    "activations": "activations kept for backward",
    "recomputed": "a recomputed block's activations",
    "loss_outputs": "loss outputs",
    "buffers": "pipeline receive buffers",
    "temporaries": "temporaries",
    "runtime": "runtime",
    "overhead": "framework overhead",
}
NEAR_FULL = 40.0  # percent of a device's memory from which the capacity line is drawn
TERM_COLOURS = (
    "#4C78A8",
    "#F58518",
    "#54A24B",
    "#E45756",
    "#72B7B2",
    "#B279A2",
    "#FF9DA6",
    "#9D755D",
    "#BAB0AC",
    "#EECA3B",
    "#1B9E77",
    "#7570B3",
)
KIND_COLOURS = {
    "forward": "#4C78A8",
    "backward": "#F58518",
    "optimizer": "#54A24B",
    "send": "#B279A2",
    "all-reduce": "#E45756",
    "all-gather": "#72B7B2",
    "reduce-scatter": "#FF9DA6",
    TP_COLLECTIVE: "#9D755D",
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
        devices = device_list([r.device for r in plan.ranks if r.pp_index == pp_rank])
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
                    f"on {devices}"
                    for p in mine
                ],
                hoverinfo="text",
                name=f"pipeline rank {pp_rank}: {devices}",
            )
        )
    fig.update_layout(
        height=max(260, 110 * (1 + len(order) // per_row)),
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        title="Where each block runs: blocks coloured by pipeline rank, red edges cross devices",
    )
    return fig


def rank_grid_figure(plan: Plan, max_ranks: int = 4096) -> go.Figure:
    """The mesh: one cell per rank at its (dp, pp, tp) coordinates, a replica per column
    group (its tensor group's ranks side by side), a pipeline rank per row, coloured by the
    stages the row holds; each cell names its device. Past ``max_ranks`` ranks, the first
    replicas that fit are drawn and the title says how many."""
    tp, pp = plan.tp_degree, plan.pp_degree
    shown = max(1, min(plan.dp_degree, max_ranks // (tp * pp)))
    ranks = [r for r in plan.ranks if r.dp_index < shown]
    stages = {q: [s.index for s in plan.stages if s.pp_rank == q] for q in range(pp)}
    scatter = go.Scattergl if len(ranks) > WEBGL_FROM else go.Scatter
    fig = go.Figure()
    for q in range(pp):
        mine = [r for r in ranks if r.pp_index == q]
        held = ", ".join(map(str, stages[q]))
        fig.add_trace(
            scatter(
                x=[r.dp_index * (tp + 1) + r.tp_index for r in mine],
                y=[q for _ in mine],
                mode="markers+text" if len(ranks) <= 64 else "markers",
                text=[str(r.device) for r in mine],
                marker=dict(
                    symbol="square", size=26 if len(ranks) <= 64 else 8, color=PALETTE[q % len(PALETTE)]
                ),
                hovertext=[
                    f"rank {r.rank} on device {r.device} (node {r.node})<br>"
                    f"dp {r.dp_index}, pp {r.pp_index}, tp {r.tp_index}: "
                    f"stage{'s' if len(stages[q]) > 1 else ''} {held}"
                    for r in mine
                ],
                hoverinfo="text",
                name=f"pipeline rank {q}: stage{'s' if len(stages[q]) > 1 else ''} {held}",
            )
        )
    part = f" (the first {shown} of {plan.dp_degree} replicas)" if shown < plan.dp_degree else ""
    fig.update_layout(
        height=120 + 50 * pp,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(
            title=f"replica (dp){', its tensor group side by side (tp)' if tp > 1 else ''}",
            tickvals=[d * (tp + 1) + (tp - 1) / 2 for d in range(shown)] if shown <= 64 else None,
            ticktext=[f"dp {d}" for d in range(shown)] if shown <= 64 else None,
            zeroline=False,
            showgrid=False,
        ),
        yaxis=dict(
            title="pipeline rank (pp)",
            tickvals=list(range(pp)),
            autorange="reversed",
            zeroline=False,
            showgrid=False,
        ),
        title=f"The rank grid, dp {plan.dp_degree} x pp {pp} x tp {tp}: each rank's device{part}",
    )
    return fig


def device_list(devices: list[int]) -> str:
    """Device ids as short runs: 'device 3', 'devices 0-7, 16'.

    >>> device_list([3]), device_list([0, 1, 2, 3, 8, 16, 17])
    ('device 3', 'devices 0-3, 8, 16-17')
    """
    runs: list[list[int]] = []
    for d in sorted(devices):
        if runs and d == runs[-1][1] + 1:
            runs[-1][1] = d
        else:
            runs.append([d, d])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"device {text}" if len(devices) == 1 else f"devices {text}"


def memory_figure(prediction: Prediction) -> go.Figure:
    """Per device, the predicted memory term by term, stacked, as a share of the device's capacity.

    Shares rather than bytes, so that a device with 10 GiB of 80 still shows a bar, and a bar
    over the 100% line does not fit; the hover gives each term's bytes.
    """
    memory = prediction.memory
    devices = [f"device {m.device}" for m in memory]
    fig = go.Figure()
    for (term, name), colour in zip(MEMORY_TERMS.items(), TERM_COLOURS, strict=True):
        used = [getattr(m, term) for m in memory]
        if not any(used):
            continue  # a term no device has (no profile: no runtime term) would only crowd the legend
        fig.add_trace(
            go.Bar(
                name=name,
                x=devices,
                y=[b / m.capacity * 100 if m.capacity else 0.0 for b, m in zip(used, memory, strict=True)],
                marker_color=colour,
                customdata=[
                    [fmt.size(b), fmt.size(m.total), fmt.size(m.capacity)]
                    for b, m in zip(used, memory, strict=True)
                ],
                hovertemplate=f"%{{x}}<br>{name}: %{{customdata[0]}} (%{{y:.1f}}% of capacity)"
                "<br>total %{customdata[1]} of %{customdata[2]}<extra></extra>",
            )
        )
    top = max((m.total / m.capacity * 100 for m in memory if m.capacity), default=100.0)
    title = "Memory per device, term by term"
    if top >= NEAR_FULL:  # the capacity line matters: draw it, and the bars against it
        fig.add_hline(
            y=100,
            line=dict(color="black", dash="dash", width=1),
            annotation_text="capacity",
            annotation_position="top left",
        )
        span = max(105.0, top * 1.05)
    else:  # far below capacity: scale to the bars, so that their terms can be read
        span = top * 1.15 or 1.0
        title += f" (at most {fmt.percent(top / 100)} of a device)"
    fig.update_layout(
        barmode="stack",
        yaxis=dict(title="share of the device's memory", ticksuffix="%", range=[0, span]),
        title=title,
        height=380,
        legend=dict(traceorder="reversed"),
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def gantt_figure(prediction: Prediction) -> go.Figure:
    """The simulated step, rank by rank (`price()`'s timeline); idle time is the bubble."""
    scale, unit = _time_unit(prediction.step_time_s)
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
                base=[i.start * scale for i in items],
                x=[(i.end - i.start) * scale for i in items],
                marker_color=KIND_COLOURS.get(kind, "#888"),
                customdata=[[_what(i), fmt.duration(i.start), fmt.duration(i.end - i.start)] for i in items],
                hovertemplate="%{y}: %{customdata[0]}<br>from %{customdata[1]} for %{customdata[2]}"
                "<extra></extra>",
            )
        )
    ranks = len({i.rank for i in prediction.timeline})
    fig.update_layout(
        barmode="overlay",
        xaxis_title=f"time in the step ({unit})",
        height=140 + 40 * ranks,
        title=f"One training step, rank by rank: {fmt.duration(prediction.step_time_s)}, "
        f"bubble {fmt.percent(prediction.bubble_fraction)}",
        yaxis=dict(autorange="reversed"),
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def _time_unit(step_s: float) -> tuple[float, str]:
    """The axis unit that keeps a step's length between 1 and 1000: (seconds -> unit factor, unit).

    >>> _time_unit(2.5), _time_unit(0.1379), _time_unit(4e-5)
    ((1.0, 's'), (1000.0, 'ms'), (1000000.0, 'us'))
    """
    if step_s >= 1:
        return 1.0, "s"
    return (1e3, "ms") if step_s >= 1e-3 else (1e6, "us")


IDLE_WHY = dict(  # the hover's words for each of the simulator's idle causes, in its order
    zip(
        IDLE_CAUSES,
        (
            "waiting for a peer's data",
            "waiting for communication to finish",
            "done, until the step's last rank finishes",
        ),
        strict=True,
    )
)


def _what(i) -> str:
    parts = [i.kind]
    if i.waiting_for is not None:
        parts.append(IDLE_WHY[i.waiting_for])
    if i.stage is not None:
        parts.append(f"stage {i.stage}")
    if i.micro_batch is not None:
        parts.append(f"micro-batch {i.micro_batch}")
    return ", ".join(parts)


def time_split(prediction: Prediction) -> dict[int, dict[str, float]]:
    """Seconds of compute, communication and idle per rank in one step."""
    out: dict[int, dict[str, float]] = defaultdict(
        lambda: {"compute": 0.0, "communication": 0.0, "idle": 0.0}
    )
    for i in prediction.timeline:
        if i.kind in (GATHER, REDUCE, TP_COLLECTIVE):
            continue  # inside compute's intervals; what compute waited for is in comm_s, below
        if i.kind in ("forward", "backward", "optimizer"):
            key = "compute"
        else:
            key = "idle" if i.kind == "idle" else "communication"
        out[i.rank][key] += i.end - i.start
    for rank, waited in prediction.comm_s.items():  # sharded gathers, tensor all-reduces: in compute
        if rank in out and waited:
            out[rank]["compute"] -= waited
            out[rank]["communication"] += waited
    return dict(out)
