"""The base of every document the planner reads: strict pydantic models, clear messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from planner.errors import PlannerError

Doc = TypeVar("Doc", bound=BaseModel)


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


def parse_document(cls: type[Doc], text: str, origin: str, error: type[PlannerError], what: str) -> Doc:
    """Parse JSON ``text`` into ``cls``; any problem raises ``error`` naming ``origin`` and the field."""
    try:
        data = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise error(f"{origin}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise error(f"{origin}: {exc} in a {what}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise error(f"{origin}: {explain(exc)}") from None


def read_document(cls: type[Doc], path: str | Path, error: type[PlannerError], what: str) -> Doc:
    """`parse_document` of a file; an unreadable file is an ``error`` too, not a traceback."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    return parse_document(cls, text, str(path), error, what)
