"""The base of every document the planner reads: strict pydantic models, clear messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from planner.errors import PlannerError
from planner.limits import MAX_DOCUMENT_BYTES, check_size, load_json

Doc = TypeVar("Doc", bound=BaseModel)


class StrictModel(BaseModel):
    """Frozen and strict: unknown keys, NaN, infinities, ``true`` for a number and ``"4"`` for a
    count are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


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


def parse_document(
    cls: type[Doc], data: str | bytes, origin: str, error: type[PlannerError], what: str
) -> Doc:
    """Parse a JSON document into ``cls``; any problem raises ``error`` naming ``origin`` and the field.

    The text is checked against `planner.limits` first (size, UTF-8, nesting depth, NaN), then
    validated (strictly, as every `StrictModel`).
    """
    load_json(data, origin, error)
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        raise error(f"{origin}: {explain(exc)}") from None
    except (ValueError, RecursionError) as exc:  # raised by a validator outside pydantic's own types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{origin}: not a valid {what}: {first}") from None


def read_document(cls: type[Doc], path: str | Path, error: type[PlannerError], what: str) -> Doc:
    """`parse_document` of a file; an unreadable or oversized file is an ``error`` too, not a traceback."""
    try:
        with open(path, "rb") as f:
            check_size(os.fstat(f.fileno()).st_size, str(path), error)
            data = f.read(MAX_DOCUMENT_BYTES + 1)  # a pipe has no size: one byte more tells
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    return parse_document(cls, data, str(path), error, what)
