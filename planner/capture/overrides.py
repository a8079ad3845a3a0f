"""Parse ``key=value`` size overrides.

Values are JSON literals where they parse as one (``12``, ``0.1``, ``true``, ``[64, 64]``,
``null``) and plain strings otherwise. Nothing is ever evaluated as Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from planner.errors import SourceError
from planner.limits import MAX_OVERRIDE_INT, MAX_OVERRIDES, MAX_TEXT_CHARS

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_value(text: str) -> Any:
    """Return the JSON literal ``text`` denotes, or ``text`` itself.

    >>> parse_value("12"), parse_value("0.5"), parse_value("true"), parse_value("gelu")
    (12, 0.5, True, 'gelu')
    >>> parse_value("[64, 128]")
    [64, 128]
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, SourceError):
        return text
    return value


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN / Infinity by default; a size is never one of those.
    raise SourceError(f"{name} is not a valid size")


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``["n_layer=4", "act=gelu"]`` into ``{"n_layer": 4, "act": "gelu"}``.

    Raises
    ------
    SourceError
        A pair without ``=``, an empty or non-identifier key, or a key given twice.

    >>> parse_overrides(["n_layer=4", "act=gelu", "dims=[8,8]"])
    {'n_layer': 4, 'act': 'gelu', 'dims': [8, 8]}
    """
    pairs = list(pairs)
    if len(pairs) > MAX_OVERRIDES:
        raise SourceError(f"{len(pairs)} overrides; at most {MAX_OVERRIDES} are accepted")
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep:
            raise SourceError(f"override {pair!r} is not of the form key=value")
        if not _KEY.match(key):
            raise SourceError(f"override {pair!r}: {key!r} is not a valid parameter name")
        if key in result:
            raise SourceError(f"override {key!r} is given twice")
        result[key] = parse_value(raw.strip())
    return check_overrides(result)


def check_overrides(overrides: dict[str, Any], where: str = "override") -> dict[str, Any]:
    """Refuse overrides past `planner.limits`: too many, or a size no real model has.

    A layer count of 10^9 would build for hours and a width of 10^12 would exhaust memory;
    both are refused here, naming the key, before anything is built.

    >>> check_overrides({"n_layer": 2**30})
    Traceback (most recent call last):
    ...
    planner.errors.SourceError: override 'n_layer' is 1,073,741,824; sizes are at most 16,777,216 (2^24)
    """
    if len(overrides) > MAX_OVERRIDES:
        raise SourceError(f"{len(overrides)} overrides; at most {MAX_OVERRIDES} are accepted")
    for key, value in overrides.items():
        _check_value(value, f"{where} {key!r}")
    return overrides


def _check_value(value: Any, what: str) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if abs(value) > MAX_OVERRIDE_INT:
            raise SourceError(f"{what} is {value:,}; sizes are at most {MAX_OVERRIDE_INT:,} (2^24)")
    elif isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise SourceError(f"{what} is {len(value):,} characters long; at most {MAX_TEXT_CHARS:,}")
    elif isinstance(value, list):
        if len(value) > MAX_OVERRIDES:
            raise SourceError(f"{what} lists {len(value)} values; at most {MAX_OVERRIDES}")
        for item in value:
            _check_value(item, what)
    elif isinstance(value, dict):
        check_overrides(value, what)
    else:
        raise SourceError(f"{what} is a {type(value).__name__}; overrides are JSON values")
