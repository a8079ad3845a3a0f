"""Plotly figures of the layer graph, for the dashboard's pages (which only place them).

Figures in hovers are written by `dashboard.format`, as everywhere in the dashboard.
"""

from __future__ import annotations

import math

import networkx as nx
import plotly.graph_objects as go

from dashboard import format as fmt
from planner.capture.graph import block_order

WEBGL_FROM = 2000  # points; past this, SVG scatter gets slow in the browser (docs/facts.md, Large graphs)


def chain_layout(order: list[str], per_row: int = 8) -> dict[str, tuple[float, float]]:
    """Positions for a mostly-linear graph, wrapped into rows that snake back and forth.

    A transformer is a long chain; a layered layout would draw it as one unreadable line.

    >>> chain_layout(["a", "b", "c"], per_row=2)
    {'a': (0, 0), 'b': (1, 0), 'c': (1, -1)}
    """
    pos = {}
    for i, name in enumerate(order):
        row, col = divmod(i, per_row)
        x = col if row % 2 == 0 else per_row - 1 - col
        pos[name] = (x, -row)
    return pos


def block_graph_figure(graph: nx.DiGraph, per_row: int = 8) -> go.Figure:
    """The coarsened graph: marker area ~ parameters, colour ~ log10 forward FLOPs."""
    order = block_order(graph)
    pos = chain_layout(order, per_row)
    scatter = go.Scattergl if len(order) > WEBGL_FROM else go.Scatter
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for a, b in graph.edges():
        (x0, y0), (x1, y1) = pos[a], pos[b]
        edge_x += [x0, x1, None]
        edge_y += [y0, y1, None]
    max_params = max((graph.nodes[n].get("param_count", 0) for n in order), default=0) or 1
    sizes = [10 + 30 * math.sqrt(graph.nodes[n].get("param_count", 0) / max_params) for n in order]
    colours = [math.log10(1 + graph.nodes[n].get("fwd_flops", 0)) for n in order]
    hover = [_hover(n, graph.nodes[n]) for n in order]
    fig = go.Figure()
    fig.add_trace(
        scatter(x=edge_x, y=edge_y, mode="lines", line=dict(width=1, color="#999"), hoverinfo="skip")
    )
    fig.add_trace(
        scatter(
            x=[pos[n][0] for n in order],
            y=[pos[n][1] for n in order],
            mode="markers+text" if len(order) <= 64 else "markers",
            text=[n.rsplit(".", 2)[-1] if len(n) > 14 else n for n in order],
            textposition="top center",
            marker=dict(
                size=sizes,
                color=colours,
                colorscale="Viridis",
                showscale=True,
                colorbar=dict(title="forward FLOPs", tickprefix="10^"),
            ),
            hovertext=hover,
            hoverinfo="text",
            name="blocks",
        )
    )
    fig.update_layout(
        showlegend=False,
        height=max(260, 110 * (1 + len(order) // per_row)),
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        title="Blocks in execution order (marker area ~ parameters)",
    )
    return fig


def _hover(name: str, d: dict) -> str:
    shape = "×".join(map(str, d.get("output_shape", []))) or "-"
    return (
        f"<b>{name}</b> ({d.get('op', '')})<br>parameters {fmt.count(d.get('param_count', 0))}"
        f"<br>forward {fmt.count(d.get('fwd_flops', 0))} FLOPs"
        f"<br>saved for backward {fmt.size(d.get('saved_bytes', 0))}"
        f"<br>output {shape} ({fmt.size(d.get('output_bytes', 0))})"
    )
