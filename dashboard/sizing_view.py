"""What the Size page keeps of a sizing: plain rows, one per shape planned, that outlive the
run that made them (session state holds data, not the planner's objects).

A row holds its shape, figures and plan (the plan's JSON, for "use this"), and why it is off
the front; `front_rows` picks the front from them, and `point_name` names a point.
"""

from __future__ import annotations

from planner.sizing.report import chosen_point, dollars, duration, no_fit_message, off_the_front
from planner.sizing.size import Sizing


def sizing_record(sizing: Sizing, hours: float | None, budget: float | None) -> dict:
    """The sizing as the page keeps it: rows (front first, fastest first), the lines off the
    front, the chosen point's shape, and the message when nothing meets the limit."""
    chosen = chosen_point(sizing, hours)
    on_front = {id(p) for p in sizing.front}
    points = [*sizing.front, *(p for p in sizing.points if id(p) not in on_front)]
    return {
        "rows": [_row(p, id(p) in on_front) for p in points],
        "off": off_the_front(sizing.points),
        "chosen": chosen.shape.short_form if chosen is not None else None,
        "no_fit": None if sizing.front else no_fit_message(sizing, hours, budget),
        "steps": sizing.steps,
        "tokens_per_step": sizing.tokens_per_step,
        "seconds": sizing.seconds,
        "shapes": len(sizing.points),
    }


def _row(p, on_front: bool) -> dict:
    row = p.best.row() if p.fits else {}
    return {
        "shape": p.shape.short_form,
        "kind": p.shape.label,
        "devices": p.shape.devices,
        "nodes": sum(part.nodes for part in p.shape.parts),
        "usd_per_device_hour": p.usd_per_device_hour,
        "hours": p.hours,
        "cost_usd": p.cost_usd,
        "on_front": on_front,
        "why_not": p.why_not,
        "plan": p.best.label if p.fits else None,
        "mfu": row.get("mfu"),
        "peak_mem": row.get("peak_mem"),
        "plan_json": p.best.plan.to_json() if p.fits and on_front else None,
    }


def front_rows(record: dict) -> list[dict]:
    """The front's rows, fastest first."""
    return [r for r in record["rows"] if r["on_front"]]


def point_name(row: dict) -> str:
    """'h100-80gb:8x32 · 7.1 d · $208,620', how the page and the Plan page name a point."""
    return f"{row['shape']} · {duration(row['hours'])} · {dollars(row['cost_usd'])}"
