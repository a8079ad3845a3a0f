"""The Size page's scatter: every shape planned, cost against time to train, coloured by device
kind; the Pareto front joined by a line, the shapes off it faint, each hover naming its plan."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboard import format as fmt
from planner.sizing.report import dollars, duration

KIND_COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D", "#EECA3B")


def front_figure(rows: list[dict], limit_hours: float | None = None, chosen: str | None = None) -> go.Figure:
    """``rows`` from `dashboard.sizing_view.sizing_record`: the planned shapes that fit, the
    front large and joined fastest first; a deadline as a dashed line; ``chosen`` ringed."""
    fig = go.Figure()
    fitting = [r for r in rows if r["hours"] is not None]
    kinds = list(dict.fromkeys(r["kind"] for r in fitting))
    colour = {k: KIND_COLOURS[i % len(KIND_COLOURS)] for i, k in enumerate(kinds)}
    front = sorted((r for r in fitting if r["on_front"]), key=lambda r: r["hours"])
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[r["hours"] for r in front],
                y=[r["cost_usd"] for r in front],
                mode="lines",
                line=dict(color="#888", width=1),
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    for kind in kinds:
        for on_front in (True, False):
            these = [r for r in fitting if r["kind"] == kind and r["on_front"] == on_front]
            if not these:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[r["hours"] for r in these],
                    y=[r["cost_usd"] for r in these],
                    mode="markers",
                    name=kind if on_front else f"{kind} (off the front)",
                    legendgroup=kind,
                    marker=dict(
                        color=colour[kind],
                        size=13 if on_front else 7,
                        opacity=1.0 if on_front else 0.35,
                        line=dict(width=1, color="white"),
                    ),
                    hovertext=[_hover(r) for r in these],
                    hoverinfo="text",
                )
            )
    ringed = next((r for r in front if r["shape"] == chosen), None)
    if ringed is not None:
        fig.add_trace(
            go.Scatter(
                x=[ringed["hours"]],
                y=[ringed["cost_usd"]],
                mode="markers",
                name="chosen",
                marker=dict(size=24, color="rgba(0,0,0,0)", line=dict(width=2, color="black")),
                hoverinfo="skip",
            )
        )
    if limit_hours is not None:
        fig.add_vline(x=limit_hours, line=dict(dash="dash", color="#E45756"), annotation_text="deadline")
    fig.update_layout(
        title="Cost against time to train",
        xaxis_title="time to train (hours)",
        yaxis_title="cost (US dollars)",
        height=480,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="v"),
    )
    return fig


def _hover(r: dict) -> str:
    lines = [
        f"<b>{r['shape']}</b>: {fmt.count(r['devices'])} devices at ${r['usd_per_device_hour']:.2f} a "
        + ("device-hour on average" if "," in r["kind"] else "device-hour"),
        f"{duration(r['hours'])}, {dollars(r['cost_usd'])}",
        f"plan: {r['plan']}",
        f"MFU {fmt.percent(r['mfu'])}, peak memory {fmt.size(r['peak_mem'])} a device",
    ]
    if r["why_not"]:
        lines.append(r["why_not"])
    return "<br>".join(lines)
