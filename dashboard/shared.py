"""State the pages share, with a worked example as the default for every page.

Widget values are copied into plain session keys (``model``, ``cluster_json``): Streamlit
drops a widget's key when the page that draws it is not shown, and every page must still
find the current model and devices (or the default: the zoo GPT on this machine).
"""

from __future__ import annotations

import os

import streamlit as st

DEFAULT_MODEL = ("gpt", "")
PY_ALLOW_ENV = "STAGECRAFT_ALLOWED_PY"


def allowed_py_sources() -> set[str]:
    """`py:` sources the browser may load: the server's allow-list, empty unless set.

    Importing a module runs its code, so a browser user must not name any module they like.
    """
    return {s.strip() for s in os.environ.get(PY_ALLOW_ENV, "").split(",") if s.strip()}


DEFAULT_BATCH = 8


def step_time_text(seconds: float) -> str:
    """How the Plan page shows a step time (tests compare against `price()` through it)."""
    return f"{seconds * 1e3:.4f} ms"


def current_model() -> tuple[str, str]:
    """(source, overrides text) chosen on the Model page, or the default."""
    return st.session_state.get("model", DEFAULT_MODEL)


def set_model(source: str, overrides: str) -> None:
    st.session_state["model"] = (source, overrides)


def current_cluster_json() -> str:
    """The cluster chosen on the Devices page, or this machine."""
    return st.session_state.get("cluster_json") or local_cluster_json()


def set_cluster_json(text: str) -> None:
    st.session_state["cluster_json"] = text


@st.cache_data(show_spinner=False)
def local_cluster_json() -> str:
    from planner.cluster import detect_local

    return detect_local().to_json()


@st.cache_data(show_spinner=False, max_entries=16)
def coarse_graph_json(source: str, overrides: tuple[str, ...]) -> dict:
    """The coarsened layer graph as node-link data (pure, serialisable, cached)."""
    from planner.coarsen import coarsen
    from planner.graph import to_json
    from planner.overrides import parse_overrides
    from planner.trace import trace

    return to_json(coarsen(trace(source, parse_overrides(overrides))))


@st.cache_data(show_spinner=False, max_entries=8)
def plan_graph_json(model_json: str, dtype: str) -> dict:
    """The coarsened graph a plan was made for, traced from its own model section (a run's
    plan may be of another model than the one chosen on the Model page)."""
    from planner.graph import to_json
    from planner.plan import ModelRef
    from runtime.compare import plan_graph

    model = ModelRef.model_validate_json(model_json)
    return to_json(plan_graph(model, dtype))


@st.cache_data(show_spinner=False, max_entries=8)
def block_ops(source: str, overrides: tuple[str, ...]) -> dict[str, list[str]]:
    """Every block's ATen ops in execution order, for expanding a block in the placement."""
    from planner.coarsen import assign_blocks
    from planner.graph import block_order
    from planner.overrides import parse_overrides
    from planner.trace import trace

    fine = trace(source, parse_overrides(overrides))
    owner = assign_blocks(fine)
    ops: dict[str, list[str]] = {}
    for name in block_order(fine):
        if fine.nodes[name].get("kind") != "input":
            ops.setdefault(owner[name], []).append(name)
    return ops


@st.cache_data(show_spinner=False, max_entries=16)
def searched(graph_data: dict, cluster_json: str, global_batch: int, strategy: str) -> list[dict]:
    """Candidates as rows, each with its plan's JSON when it has one (cached)."""
    from planner.cluster import cluster_from_json
    from planner.graph import from_json
    from planner.search import search

    result = search(from_json(graph_data), cluster_from_json(cluster_json), global_batch=global_batch,
                    strategy=strategy)  # fmt: skip
    rows = []
    for c in result.candidates:
        row = c.row()
        row["label"] = c.label
        row["plan_json"] = c.plan.to_json() if c.plan is not None else None
        rows.append(row)
    return rows


def current_plan_json() -> str | None:
    """The plan last shown on the Plan page or imported, else the worked example's best plan."""
    if st.session_state.get("plan_json"):
        return st.session_state["plan_json"]
    source, overrides = current_model()
    rows = searched(
        coarse_graph_json(source, tuple(overrides.split())), current_cluster_json(), DEFAULT_BATCH, "auto"
    )
    return next((r["plan_json"] for r in rows if r["feasible"] and r["plan_json"]), None)


def set_plan_json(text: str) -> None:
    st.session_state["plan_json"] = text


IMPORTED = "imported plan"


def import_plan(text: str, plan) -> None:
    """Make an uploaded plan current: its model and cluster too, and a choice on the Plan page."""
    import json

    overrides = " ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in plan.model.overrides.items()
    )
    set_model(plan.model.source, overrides)
    set_cluster_json(plan.cluster.to_json())
    set_plan_json(text)
    st.session_state["imported_plan_json"] = text


def imported_plan_json() -> str | None:
    return st.session_state.get("imported_plan_json")
