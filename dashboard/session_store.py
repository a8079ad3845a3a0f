"""A browser session's choices kept on the server, so that a reload returns to them.

The session id travels in the page's URL (``?s=<id>``); the choices (model, devices, the
plan's inputs and edits, an imported plan) are one JSON file per id under
``<runs-dir>/sessions/``. The id comes from the browser, so it is accepted only as 32
lowercase hex digits: it can never name another path. The file is read back within the
document limits of `planner.limits`; a file that cannot be read is a fresh start, never an
error page.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.limits import load_json

SESSIONS = "sessions"
QUERY_KEY = "s"
SCHEMA = 1
_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A fresh session id: 128 random bits, so ids cannot be guessed from one another."""
    return secrets.token_hex(16)


def valid_id(text: object) -> bool:
    """Whether ``text`` is a session id (and so a safe file name).

    >>> valid_id("0123456789abcdef0123456789abcdef"), valid_id("../../etc/passwd"), valid_id("AB" * 16)
    (True, False, False)
    """
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def session_path(runs_dir: str | Path, session_id: str) -> Path:
    """Where a session's choices are kept; refuses anything but an id."""
    if not valid_id(session_id):
        raise ValueError("a session id is 32 lowercase hex digits")
    return Path(runs_dir) / SESSIONS / f"{session_id}.json"


def load(runs_dir: str | Path, session_id: str) -> dict[str, Any]:
    """The saved choices of a session, or ``{}`` when there are none or they cannot be read."""
    path = session_path(runs_dir, session_id)
    try:
        data = load_json(path.read_bytes(), path.name)
    except (OSError, PlannerError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return {}
    return data


def save(runs_dir: str | Path, session_id: str, data: dict[str, Any]) -> None:
    """Write the choices atomically (a reader never sees half a file)."""
    path = session_path(runs_dir, session_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**data, "schema": SCHEMA}, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
