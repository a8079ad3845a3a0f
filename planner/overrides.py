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
    return result
