"""The base of every document the planner reads: strict pydantic models, clear messages."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Frozen; unknown keys, NaN and infinities are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def explain(exc: ValidationError) -> str:
    """One line per problem, each naming the field: ``devices.0.memory_bytes: ...``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # Document-wide checks name their field in the message itself.
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity (Python's json accepts them by default)."""
    return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
