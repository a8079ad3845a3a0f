"""What a sizing says, in words: the job's limits as read from text, the point chosen, why the
other shapes are off the front, and the figures as the command line and the Size page write them.

Token counts and limits are read from text the same way by both (``1T``, ``300B``, ``2.5e9``;
ASCII digits only, within the module's caps); a bad one raises `SizingInputError` naming it.
"""

from __future__ import annotations

import math
import re

from planner.errors import PlannerError

MAX_TOKENS = 10**16  # a hundred times the largest published pre-training runs
MAX_HOURS = 10 * 8766.0  # ten years
MAX_USD = 1e12
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_COUNT = re.compile(r"^(?P<n>[0-9]+(\.[0-9]+)?(E[0-9]+)?)(?P<suffix>[KMBGT]?)$")  # ASCII digits only


class SizingInputError(PlannerError):
    """A token count, deadline or budget that is not one; the message names it."""


def parse_tokens(text: str) -> int:
    """A token count, as 1000000, 1e12, 1T, 300B or 2.5M.

    >>> parse_tokens("1T"), parse_tokens("2.5M"), parse_tokens("1e9")
    (1000000000000, 2500000, 1000000000)
    >>> parse_tokens("-3")
    Traceback (most recent call last):
    ...
    planner.sizing.report.SizingInputError: '-3' is not a token count like 1000000, 1e12, 300B or 1T
    """
    m = _COUNT.match(text.strip().upper()) if len(text) < 64 else None
    value = float(m["n"]) * _SUFFIX[m["suffix"]] if m else 0.0
    if not (m and math.isfinite(value) and value >= 1):
        raise SizingInputError(f"{text[:64]!r} is not a token count like 1000000, 1e12, 300B or 1T")
    if value > MAX_TOKENS:
        raise SizingInputError(f"{value:,.0f} tokens is over the limit of {MAX_TOKENS:,}")
    return round(value)


def parse_limit(text: str, limit: float, unit: str) -> float:
    """A finite number above 0 and at most ``limit`` (hours, or dollars).

    >>> parse_limit("720", MAX_HOURS, "hours")
    720.0
    >>> parse_limit("nan", MAX_HOURS, "hours")
    Traceback (most recent call last):
    ...
    planner.sizing.report.SizingInputError: nan is not above 0 and at most 87,660 hours
    """
    try:
        if not text.isascii():  # float() reads other scripts' digits too
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise SizingInputError(f"{text[:64]!r} is not a number of {unit}") from None
    if not (math.isfinite(value) and 0 < value <= limit):
        raise SizingInputError(f"{text[:64]} is not above 0 and at most {limit:,g} {unit}")
    return value


def chosen_point(sizing, hours: float | None):
    """The point to train on: the cheapest meeting a deadline, or the fastest within a budget
    (None when the front is empty)."""
    if not sizing.front:
        return None
    return min(sizing.front, key=lambda p: p.cost_usd) if hours is not None else sizing.front[0]


def off_the_front(points) -> list[str]:
    """The shapes off the front, one line per kind and reason (memory, too slow, over budget,
    dominated, no plan): its shapes, and the closest one's own words."""
    groups: dict[tuple[str, str], list] = {}
    for p in points:
        if p.why_not:
            groups.setdefault((p.shape.label, p.why_not.split(":")[0]), []).append(p)
    lines = []
    for (kind, reason), ps in groups.items():
        ps.sort(key=lambda p: p.shape.devices)
        if len(ps) == 1:
            lines.append(f"{ps[0].shape.short_form:<18} {ps[0].why_not}")
            continue
        names = (
            f"{len(ps)} shapes {reason} ({ps[0].shape.short_form} .. {ps[-1].shape.short_form.split(':')[1]})"
        )
        if reason == "dominated":
            lines.append(f"{kind}: {names}")
            continue
        by = (lambda p: p.cost_usd) if reason == "over budget" else (lambda p: p.hours or 0.0)
        closest = min(ps, key=lambda p: (p.hours is None, by(p)))
        lines.append(
            f"{kind}: {names}; closest, {closest.shape.short_form}: {closest.why_not.split(': ', 1)[-1]}"
        )
    return lines


def no_fit_message(sizing, hours: float | None, budget: float | None) -> str:
    """No point meets the limit: the largest shape planned, and why it failed (its peak memory
    against the device's, or its time or cost against the limit)."""
    largest = max(sizing.points, key=lambda p: (p.shape.devices, p.fits), default=None)
    what = f"the {hours:,g} h deadline" if hours else f"the ${budget:,.0f} budget"
    if largest is None:
        return f"no shape of the catalogue meets {what}"
    return f"no shape meets {what}; the largest planned, {largest.shape.short_form}: {largest.why_not}"


def duration(hours: float) -> str:
    """Time to train: seconds under a minute, minutes under an hour, hours under two days,
    then days.

    >>> duration(0.004), duration(0.1), duration(0.5), duration(30), duration(720)
    ('14 s', '6.0 min', '30 min', '30.0 h', '30.0 d')
    """
    if hours * 60 < 1:
        return f"{hours * 3600:.2g} s"
    if hours < 1:
        return f"{hours * 60:.1f} min" if hours * 60 < 10 else f"{hours * 60:.0f} min"
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} d"


def dollars(usd: float) -> str:
    """A cost: cents under $100, whole dollars above.

    >>> dollars(0.126), dollars(208620.4)
    ('$0.13', '$208,620')
    """
    return f"${usd:,.2f}" if usd < 100 else f"${round(usd):,}"
