"""The Monitor's charts of a run: loss (smoothed, log scale, other runs overlaid), throughput,
where each rank's step goes, tensor memory against the plan, and CPU and memory per rank
over time. Builders only: each returns a `go.Figure`, the page places it.

Every hover label is written by dashboard.format; axes name their unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go

from dashboard import format
from dashboard.run_compare import NAMES, RunView

# Per trace: a long run is thinned to this many points (the last always kept). A chart half
# the page wide has fewer pixels than that, and SVG lines of this size redraw every 2 s
# without WebGL, which headless and remote browsers often lack.
MAX_POINTS = 1000
_BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))
_MARGIN = dict(l=10, r=10, t=40, b=10)
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Curve:
    label: str
    steps: list[int]
    values: list[float]


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average, debiased at the start (TensorBoard's smoothing); a
    non-finite value is kept where it is and does not poison the average after it.

    >>> ema([1.0, 2.0, 3.0], 0.0), [round(v, 3) for v in ema([1.0, 3.0], 0.5)]
    ([1.0, 2.0, 3.0], [1.0, 2.333])
    >>> ema([1.0, float("nan"), 1.0], 0.9)[1]
    nan
    """
    out, average, weight = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        average = smoothing * average + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(average / weight)
    return out


def thin(steps: list[int], values: list[float], max_points: int = MAX_POINTS) -> tuple[list, list]:
    """Every k-th point so that at most ``max_points`` remain, and always the last one.

    >>> thin(list(range(10)), list(range(10)), 4)
    ([0, 3, 6, 9], [0, 3, 6, 9])
    """
    if len(steps) <= max_points:
        return steps, values
    k = math.ceil((len(steps) - 1) / (max_points - 1))
    keep = [*range(0, len(steps) - 1, k), len(steps) - 1]
    return [steps[i] for i in keep], [values[i] for i in keep]


def byte_unit(largest: float) -> tuple[float, str]:
    """(divisor, unit) that keeps the largest of a chart's byte values readable.

    >>> byte_unit(3 * 2**30), byte_unit(100)
    ((1073741824, 'GiB'), (1, 'B'))
    """
    return next(((scale, unit) for scale, unit in _BYTE_UNITS if largest >= scale), (1, "B"))


def loss_figure(curves: list[Curve], smoothing: float, log_y: bool) -> go.Figure:
    """The first curve is the run shown (raw, faint, and smoothed); the others are overlaid
    runs, smoothed the same way."""
    fig = go.Figure()
    for i, curve in enumerate(curves):
        steps, raw = curve.steps, curve.values
        smooth = ema(raw, smoothing)
        steps_t, raw_t = thin(steps, raw)
        _, smooth_t = thin(steps, smooth)
        colour = COLOURS[i % len(COLOURS)]
        if i == 0:
            fig.add_trace(
                go.Scatter(
                    x=steps_t,
                    y=raw_t,
                    mode="lines",
                    name=f"{curve.label} (raw)" if smoothing else curve.label,
                    line=dict(color=colour, width=1),
                    opacity=0.3 if smoothing else 1.0,
                    text=[format.number(v) for v in raw_t],
                    hovertemplate="step %{x}: loss %{text}<extra></extra>",
                )
            )
        if i > 0 or smoothing:
            fig.add_trace(
                go.Scatter(
                    x=steps_t,
                    y=smooth_t,
                    mode="lines",
                    name=curve.label,
                    line=dict(color=colour, width=2),
                    text=[format.number(v) for v in smooth_t],
                    hovertemplate=f"{curve.label}<br>step %{{x}}: smoothed loss %{{text}}<extra></extra>",
                )
            )
    fig.update_layout(
        title="Loss" + (f" (moving average, smoothing {smoothing:.2f})" if smoothing else ""),
        xaxis_title="Step",
        yaxis_title="Loss" + (" (log scale)" if log_y else ""),
        yaxis_type="log" if log_y else "linear",
        height=380,
        margin=dict(_MARGIN, b=70),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
        showlegend=len(curves) > 1 or smoothing > 0,
    )
    return fig


def rate_figure(steps: list[int], values: list[float], unit: str) -> go.Figure:
    steps_t, values_t = thin(steps, values)
    fig = go.Figure(
        go.Scatter(
            x=steps_t,
            y=values_t,
            mode="lines",
            name=unit,
            text=[format.rate(v, unit) for v in values_t],
            hovertemplate="step %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Throughput ({unit})",
        xaxis_title="Step",
        yaxis_title=unit,
        height=380,
        margin=dict(_MARGIN, b=70),
    )
    return fig


def per_rank_figure(
    by_rank: dict[int, dict[int, float]],
    title: str,
    y_title: str,
    text: Callable[[float], str],
    scale: float = 1,
) -> go.Figure:
    """One line per rank over the steps (values divided by ``scale`` on the axis; the hover
    label is ``text`` of the value itself)."""
    fig = go.Figure()
    for rank in sorted(by_rank):
        steps = sorted(by_rank[rank])
        steps_t, values_t = thin(steps, [by_rank[rank][s] for s in steps])
        fig.add_trace(
            go.Scatter(
                x=steps_t,
                y=[v / scale for v in values_t],
                mode="lines",
                name=f"rank {rank}",
                text=[text(v) for v in values_t],
                hovertemplate=f"rank {rank}, step %{{x}}: %{{text}}<extra></extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title="Step", yaxis_title=y_title, height=320, margin=_MARGIN)
    return fig


def split_figure(view: RunView, ranks: range) -> go.Figure:
    """Each rank's measured step, split as the comparison measured it (the same steps)."""
    fig = go.Figure()
    for name in ("compute_s", "optimizer_s", "wait_s"):
        values = [getattr(view.figure(name, r), "measured", None) for r in ranks]
        fig.add_trace(
            go.Bar(
                name=NAMES[name],
                x=[f"rank {r}" for r in ranks],
                y=[(v or 0.0) * 1e3 for v in values],
                text=[format.duration(v) for v in values],
                hovertemplate="%{x}: %{text}<extra>" + NAMES[name] + "</extra>",
                textposition="none",
            )
        )
    fig.update_layout(
        barmode="stack",
        title="Where each rank's step goes (measured)",
        yaxis_title="Time (ms)",
        height=320,
        margin=_MARGIN,
    )
    return fig


def tensor_memory_figure(view: RunView, ranks: range) -> go.Figure:
    """Each rank's tensor memory, measured next to predicted."""
    figures = [view.figure("tensor_memory_bytes", r) for r in ranks]
    largest = max((v for c in figures if c for v in (c.measured, c.predicted) if v is not None), default=0.0)
    scale, unit = byte_unit(largest)
    fig = go.Figure()
    for label, pick in (("measured", lambda c: c.measured), ("predicted", lambda c: c.predicted)):
        values = [pick(c) if c else None for c in figures]
        fig.add_trace(
            go.Bar(
                name=label,
                x=[f"rank {r}" for r in ranks],
                y=[(v or 0.0) / scale for v in values],
                text=[format.size(v) for v in values],
                hovertemplate="%{x}: %{text}<extra>" + label + "</extra>",
                textposition="none",
            )
        )
    fig.update_layout(
        barmode="group",
        title="Tensor memory per rank",
        yaxis_title=f"Tensor memory ({unit})",
        height=320,
        margin=_MARGIN,
    )
    return fig
