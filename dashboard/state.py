"""A browser session's choices, kept on the server under an id carried in the URL.

`start` runs first on every script run (app.py): it takes the id from ``?s=`` (or makes
one), restores the saved choices on the session's first run, and keeps the id in the URL,
so a reload, a bookmark or a second tab with the same address returns to the same model,
devices and plan. `save` writes the choices when one changes (`dashboard.shared`'s setters
call it). Restored values are checked as strictly as typed ones: anything that does not
read back is dropped, and the page starts from its default instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import streamlit as st

from dashboard import session_store
from planner.errors import PlannerError
from planner.limits import MAX_DEVICES_PER_NODE, MAX_GLOBAL_BATCH, check_text

log = logging.getLogger("stagecraft.dashboard")

ID_KEY = "session_id"
FIRST_VISIT = "first_visit"
_SAVED_KEY = "session_saved_text"
# The session keys that are kept; each is checked by its reader below when restored.
KEPT = (
    "model",
    "cluster_json",
    "devices_spec_text",
    "plan_inputs",
    "plan_edits",
    "imported_plan",
    "current_plan",
)


def runs_dir():
    from runtime.supervise.store import default_runs_dir

    return default_runs_dir()


def start() -> str:
    """This session's id; on its first run, the saved choices are restored into session state."""
    ss = st.session_state
    session_id = ss.get(ID_KEY)
    if session_id is None:
        asked = st.query_params.get(session_store.QUERY_KEY)
        session_id = asked if session_store.valid_id(asked) else session_store.new_id()
        ss[ID_KEY] = session_id
        saved = session_store.load(runs_dir(), session_id)
        for key, value in restored(saved).items():
            ss[key] = value
        ss[FIRST_VISIT] = not saved  # the landing page then says where to start
        ss[_SAVED_KEY] = _text({k: ss[k] for k in KEPT if k in ss})
    if st.query_params.get(session_store.QUERY_KEY) != session_id:
        st.query_params[session_store.QUERY_KEY] = session_id
    return session_id


def save() -> None:
    """Write this session's choices if they changed since the last write (a failure is logged)."""
    ss = st.session_state
    session_id = ss.get(ID_KEY)
    if session_id is None:  # a page run on its own (no app.py): nothing to keep
        return
    data = {k: ss[k] for k in KEPT if k in ss}
    text = _text(data)
    if ss.get(_SAVED_KEY) == text:
        return
    try:
        session_store.save(runs_dir(), session_id, data)
    except OSError as exc:
        log.error("cannot keep the session's choices: %s", exc.strerror)
        return
    ss[_SAVED_KEY] = text


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=list)


def restored(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved choices that still read back: each checked as if it had just been typed."""
    out: dict[str, Any] = {}
    for key, check in _CHECKS.items():
        if key not in saved:
            continue
        try:
            out[key] = check(saved[key])
        except (PlannerError, TypeError, ValueError, KeyError) as exc:
            log.warning("session value %s dropped: %s", key, str(exc).splitlines()[0] if str(exc) else exc)
    return out


def _model(value: Any) -> tuple[str, str]:
    source, overrides = value
    return check_text(_str(source), "model source"), check_text(_str(overrides), "overrides")


def _cluster(value: Any) -> str:
    from planner.cluster import cluster_from_json

    cluster_from_json(_str(value), origin="the saved devices")
    return value


def _spec(value: Any) -> str | None:
    return None if value is None else check_text(_str(value), "devices")


def _inputs(value: Any) -> dict[str, Any]:
    from planner.precision import Precision
    from planner.search.search import STRATEGIES

    batch, strategy, choice = value["global_batch"], value["strategy"], value["choice"]
    precision = value.get("precision", Precision.FP32.value)  # absent in sessions saved before it
    if type(batch) is not int or not 1 <= batch <= MAX_GLOBAL_BATCH or strategy not in STRATEGIES:
        raise ValueError("global batch or strategy out of range")
    if precision not in {p.value for p in Precision}:
        raise ValueError("precision out of range")
    tp = value.get("tp", "auto")  # absent in sessions saved before it
    if tp != "auto" and (type(tp) is not int or not 1 <= tp <= MAX_DEVICES_PER_NODE):
        raise ValueError("tensor-parallel degree out of range")
    sp = value.get("sp", False)  # absent in sessions saved before it
    if type(sp) is not bool:
        raise ValueError("sequence parallelism is not true or false")
    return {
        "global_batch": batch,
        "strategy": strategy,
        "precision": precision,
        "tp": tp,
        "sp": sp,
        "choice": None if choice is None else _str(choice),
    }


def _edits(value: Any) -> dict[str, Any]:
    from dashboard.plan_edit import MIXED
    from planner.sharding import DpMode, recompute_every

    cuts, m, schedule = value["cuts"], value["micro_batches"], value["schedule"]
    if not all(type(c) is int and c > 0 for c in cuts) or type(m) is not int or m < 1:
        raise ValueError("edits out of range")
    # Saved before the memory levers existed: the defaults every older plan has.
    dp_mode = DpMode(_str(value.get("dp_mode", DpMode.REPLICATE.value))).value
    recompute = _str(value.get("recompute", "none"))
    if recompute != MIXED:
        recompute_every(recompute)
    return {
        "base": _str(value["base"]),
        "cuts": list(cuts),
        "micro_batches": m,
        "schedule": None if schedule is None else _str(schedule),
        "dp_mode": dp_mode,
        "recompute": recompute,
    }


def _plan_record(value: Any) -> dict[str, Any]:
    from planner.plan import plan_from_json

    plan_from_json(_str(value["json"]), origin="the saved plan")
    out = {k: _str(value[k]) for k in ("json", "context")}
    if "file" in value:  # an imported plan (from a file, or a point of the Size page)
        out["file"] = check_text(_str(value["file"]), "file name")
        if "name" in value:
            out["name"] = check_text(_str(value["name"]), "plan name")
    else:
        out["name"] = check_text(_str(value["name"]), "plan name")
        out["edited"] = bool(value["edited"])
        out["changes"] = [check_text(_str(c), "plan change") for c in value["changes"]]
    return out


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


_CHECKS = {
    "model": _model,
    "cluster_json": _cluster,
    "devices_spec_text": _spec,
    "plan_inputs": _inputs,
    "plan_edits": _edits,
    "imported_plan": _plan_record,
    "current_plan": _plan_record,
}
