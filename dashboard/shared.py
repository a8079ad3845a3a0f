"""What the pages share: the current model, devices and plan, one source of truth for each.

- The model (source and overrides) is set on the Model page, the devices (a cluster JSON) on
  the Devices page, and both by importing a plan.
- The plan's inputs (global batch, strategy, the chosen candidate) and its hand edits are
  set on the Plan page. The current plan is the chosen candidate with those edits; it is
  recorded with the model and devices it was made for, so a change of either makes the
  record stale, and the current plan is then the chosen (or fastest) candidate of the new
  search. Export downloads it and Runs launches it: `current_plan_json`,
  `current_plan_summary`.

Values live in plain session keys, not in widget keys: Streamlit drops a widget's key when
the page that draws it is not shown. Every setter saves the session (`dashboard.state`), so
a reload returns to it, and redraws the sidebar, so it never shows the previous choice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import streamlit as st

from dashboard import format as fmt
from dashboard import sidebar, state
from dashboard.naming import candidate_name

DEFAULT_MODEL = ("gpt", "")
DEFAULT_BATCH = 8
DEFAULT_STRATEGY = "auto"
DEFAULT_PRECISION = "fp32"
DEFAULT_TP = "auto"
IMPORTED = "imported plan"


# -- model and devices -----------------------------------------------------------------------
def redraw_sidebar() -> None:
    """Show the current model, devices and plan in the sidebar (after each change of them)."""
    sidebar.refresh(current_model(), cluster_brief(current_cluster_json()), recorded_plan())


def current_model() -> tuple[str, str]:
    """(source, overrides text) chosen on the Model page, or the default."""
    source, overrides = st.session_state.get("model", DEFAULT_MODEL)
    return source, overrides


def set_model(source: str, overrides: str) -> None:
    if st.session_state.get("model") != (source, overrides):
        st.session_state["model"] = (source, overrides)
        state.save()
    redraw_sidebar()


def current_cluster_json() -> str:
    """The cluster chosen on the Devices page, or this machine."""
    return st.session_state.get("cluster_json") or local_cluster_json()


def current_devices_spec() -> str | None:
    """What was typed on the Devices page for the current cluster (None: this machine or a file)."""
    return st.session_state.get("devices_spec_text")


def set_cluster_json(text: str, spec: str | None = None) -> None:
    """Make ``text`` the current cluster; ``spec`` is the short form it came from, if any."""
    if st.session_state.get("cluster_json") != text or current_devices_spec() != spec:
        st.session_state["cluster_json"] = text
        st.session_state["devices_spec_text"] = spec
        state.save()
    redraw_sidebar()


@st.cache_data(show_spinner=False)
def local_cluster_json() -> str:
    from planner.cluster import detect_local

    return detect_local().to_json()


@st.cache_data(show_spinner=False, max_entries=32)
def cluster_brief(cluster_json: str) -> str:
    """'h100:8x8, 64 devices on 8 nodes' for the sidebar and captions."""
    doc = json.loads(cluster_json)
    devices = doc.get("devices", [])
    nodes = len({d.get("node", 0) for d in devices})
    where = f" on {fmt.count(nodes)} nodes" if nodes > 1 else ""
    n = len(devices)
    return f"{doc.get('name') or 'custom cluster'}, {fmt.count(n)} device{'' if n == 1 else 's'}{where}"


def context_key() -> str:
    """The model and devices a plan is made for: a plan recorded under another key is stale."""
    source, overrides = current_model()
    cluster = hashlib.sha256(current_cluster_json().encode()).hexdigest()
    return hashlib.sha256(json.dumps([source, overrides, cluster]).encode()).hexdigest()[:32]


# -- traced and searched (pure, cached) ------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def model_trace(source: str, overrides: tuple[str, ...]) -> dict:
    """One trace of a model, for every page: summaries, the coarsened graph, each block's ops.

    Returns ``{"fine": summary, "coarse": summary, "graph": node-link data, "ops": {block:
    [ATen ops in execution order]}}``: pure and serialisable.
    """
    from planner.capture.coarsen import assign_blocks, coarsen
    from planner.capture.graph import block_order, summary, to_json
    from planner.capture.overrides import parse_overrides
    from planner.capture.trace import trace

    fine = trace(source, parse_overrides(overrides))
    coarse = coarsen(fine)
    owner = assign_blocks(fine)
    ops: dict[str, list[str]] = {}
    for name in block_order(fine):
        if fine.nodes[name].get("kind") != "input":
            ops.setdefault(owner[name], []).append(name)
    return {"fine": summary(fine), "coarse": summary(coarse), "graph": to_json(coarse), "ops": ops}


def coarse_graph_json(source: str, overrides: tuple[str, ...]) -> dict:
    """The coarsened layer graph as node-link data."""
    return model_trace(source, overrides)["graph"]


def block_ops(source: str, overrides: tuple[str, ...]) -> dict[str, list[str]]:
    """Every block's ATen ops in execution order, for expanding a block in the placement."""
    return model_trace(source, overrides)["ops"]


@st.cache_data(show_spinner=False, max_entries=8)
def plan_graph_json(model_json: str, dtype: str) -> dict:
    """The coarsened graph a plan was made for, traced from its own model section (a run's
    plan may be of another model than the one chosen on the Model page)."""
    from planner.capture.graph import to_json
    from planner.plan import ModelRef
    from runtime.measure.compare import plan_graph

    model = ModelRef.model_validate_json(model_json)
    return to_json(plan_graph(model, dtype))


@st.cache_data(show_spinner=False, max_entries=16)
def searched(
    graph_data: dict,
    cluster_json: str,
    global_batch: int,
    strategy: str,
    precision: str = DEFAULT_PRECISION,
    tp: str | int = DEFAULT_TP,
    sequence_parallel: bool = False,
) -> tuple[list[dict], list[str]]:
    """Candidates as rows, each with its label and its plan's JSON when it has one, and what
    limited the search in words (cached)."""
    from planner.capture.graph import from_json
    from planner.cluster import cluster_from_json
    from planner.search.search import search

    result = search(
        from_json(graph_data),
        cluster_from_json(cluster_json),
        global_batch=global_batch,
        strategy=strategy,
        tp=tp,
        sequence_parallel=sequence_parallel,
        training={"precision": precision},
    )
    rows = []
    for c in result.candidates:
        row = c.row()
        row["label"] = c.label  # the key a choice is kept by (the command line prints it too)
        row["title"] = candidate_name(c)
        row["plan_json"] = c.plan.to_json() if c.plan is not None else None
        rows.append(row)
    return rows, list(result.notes)


def current_search() -> list[dict]:
    """The search for the current model, devices and Plan-page inputs (raises PlannerError)."""
    source, overrides = current_model()
    inputs = plan_inputs()
    graph = coarse_graph_json(source, tuple(overrides.split()))
    rows, _ = searched(
        graph,
        current_cluster_json(),
        inputs["global_batch"],
        inputs["strategy"],
        inputs["precision"],
        inputs["tp"],
        inputs["sp"],
    )
    return rows


# -- the plan ----------------------------------------------------------------------------------
def plan_inputs() -> dict:
    """``{"global_batch", "strategy", "precision", "tp", "sp", "choice"}`` from the Plan page
    (choice None: the fastest; tp "auto": every degree the model and devices allow; sp:
    sequence parallelism in the tensor groups)."""
    saved = st.session_state.get("plan_inputs") or {}
    return {
        "global_batch": saved.get("global_batch", DEFAULT_BATCH),
        "strategy": saved.get("strategy", DEFAULT_STRATEGY),
        "precision": saved.get("precision", DEFAULT_PRECISION),
        "tp": saved.get("tp", DEFAULT_TP),
        "sp": saved.get("sp", False) and saved.get("tp", DEFAULT_TP) != 1,  # nothing to split at tp 1
        "choice": saved.get("choice"),
    }


def set_plan_inputs(
    global_batch: int,
    strategy: str,
    choice: str | None,
    precision: str = DEFAULT_PRECISION,
    tp: str | int = "auto",
    sp: bool = False,
) -> None:
    inputs = {
        "global_batch": global_batch,
        "strategy": strategy,
        "precision": precision,
        "tp": tp,
        "sp": sp,
        "choice": choice,
    }
    if st.session_state.get("plan_inputs") != inputs:
        st.session_state["plan_inputs"] = inputs
        state.save()


@dataclass(frozen=True)
class CurrentPlan:
    """The plan that Export downloads and Runs launches, and where it came from."""

    json: str
    name: str
    """The candidate's label (as in the Plan page's table), or 'imported plan (file)'."""
    edited: bool = False
    changes: list[str] = field(default_factory=list)
    """What the hand edits changed against the candidate, in words."""
    context: str = ""


def set_current_plan(plan_json: str, name: str, changes: list[str] | None = None) -> None:
    """Record the plan the Plan page shows as the current one (for these model and devices)."""
    record = {
        "json": plan_json,
        "name": name,
        "edited": bool(changes),
        "changes": list(changes or []),
        "context": context_key(),
    }
    if st.session_state.get("current_plan") != record:
        st.session_state["current_plan"] = record
        state.save()
    redraw_sidebar()


def recorded_plan() -> CurrentPlan | None:
    """The recorded current plan if it was made for the current model and devices (no search)."""
    record = st.session_state.get("current_plan")
    if record and record.get("context") == context_key():
        return CurrentPlan(**record)
    return None


def current_plan() -> CurrentPlan | None:
    """The current plan: the recorded one, else the chosen (or fastest) candidate of the search.

    None when no candidate fits; raises `planner.errors.PlannerError` when the model or the
    search fails (the pages show it as one line).
    """
    recorded = recorded_plan()
    if recorded is not None:
        return recorded
    choice = plan_inputs()["choice"]
    imported = imported_plan_json()
    if imported is not None and choice == IMPORTED:
        return CurrentPlan(imported, imported_plan_name(), context=context_key())
    feasible = [r for r in current_search() if r["feasible"] and r["plan_json"]]
    row = next((r for r in feasible if r["label"] == choice), feasible[0] if feasible else None)
    return None if row is None else CurrentPlan(row["plan_json"], row["title"], context=context_key())


def current_plan_json() -> str | None:
    """The current plan's JSON (see `current_plan`), or None when no plan fits or the search fails."""
    from planner.errors import PlannerError

    try:
        plan = current_plan()
    except PlannerError:
        return None
    return plan.json if plan is not None else None


@dataclass(frozen=True)
class PlanSummary:
    """Which plan is current and what it is predicted to do, for Export, Runs and Monitor."""

    name: str
    edited: bool
    changes: list[str]
    model: str
    layout: str
    """e.g. 'pp dp1×pp2, 1F1B, 4 micro-batches on 2 devices'."""
    step_time_s: float | None
    samples_per_s: float | None
    bubble_fraction: float | None
    peak_memory_bytes: int | None
    bytes_sent_per_step: int | None
    sources: dict[str, str]

    def line(self) -> str:
        """One plain-text line: name, layout, predicted step time, throughput, bubble, memory."""
        edited = f" (edited: {'; '.join(self.changes)})" if self.edited else ""
        figures = (
            f"predicted step {fmt.duration(self.step_time_s)}, "
            f"{fmt.rate(self.samples_per_s, 'samples/s')}, bubble {fmt.percent(self.bubble_fraction)}, "
            f"peak memory {fmt.size(self.peak_memory_bytes)}"
            if self.step_time_s is not None
            else "not priced yet (open the Plan page)"
        )
        return f"{self.name}{edited}: {self.model}, {self.layout}; {figures}"


def summarise(current: CurrentPlan) -> PlanSummary:
    from dashboard.naming import model_name, strategy_name
    from planner.plan import plan_from_json

    plan = plan_from_json(current.json)
    model = model_name(plan)
    layout = f"{strategy_name(plan)}, on {fmt.count(len(plan.ranks))} devices"
    p = plan.predicted
    return PlanSummary(
        name=current.name,
        edited=current.edited,
        changes=list(current.changes),
        model=model,
        layout=layout,
        step_time_s=p.step_time_s if p else None,
        samples_per_s=p.samples_per_s if p else None,
        bubble_fraction=p.bubble_fraction if p else None,
        peak_memory_bytes=max((m.bytes for m in p.peak_memory), default=0) if p else None,
        bytes_sent_per_step=p.bytes_sent_per_step if p else None,
        sources=dict(p.sources) if p else {},
    )


def current_plan_summary() -> PlanSummary | None:
    """The current plan's name and predicted figures (None when no plan fits or the search fails)."""
    from planner.errors import PlannerError

    try:
        current = current_plan()
    except PlannerError:
        return None
    return None if current is None else summarise(current)


# -- an imported plan -----------------------------------------------------------------------
def overrides_text(overrides: dict) -> str:
    """A plan's overrides as typed on the Model page.

    >>> overrides_text({"n_layer": 2, "act": "gelu", "dims": [8, 8]})
    'n_layer=2 act=gelu dims=[8,8]'

    The field splits at whitespace, so a value holding some cannot be written there and is
    refused (`SourceError`), rather than read back as other overrides.
    """
    from planner.errors import SourceError

    pairs = [
        f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
        for k, v in overrides.items()
    ]
    for pair in pairs:
        if len(pair.split()) != 1:
            raise SourceError(
                f"override {pair.partition('=')[0]!r} holds whitespace; size overrides never do"
            )
    return " ".join(pairs)


def import_plan(text: str, plan, file_name: str) -> None:
    """Make an uploaded plan current: its model and devices too, and the choice on the Plan page."""
    adopt_plan(text, plan, file_name)


def adopt_plan(text: str, plan, origin: str, name: str | None = None) -> None:
    """Make a plan from elsewhere (``origin``: an uploaded file, a point of the Size page) the
    current one, with its model and devices, and the Plan page's choice; ``name`` is how the
    pages call it (default: 'imported plan (origin)')."""
    st.session_state["model"] = (plan.model.source, overrides_text(plan.model.overrides))
    st.session_state["cluster_json"] = plan.cluster.to_json()
    st.session_state["devices_spec_text"] = None
    record = {"json": text, "file": origin, "context": context_key()}
    st.session_state["imported_plan"] = record if name is None else {**record, "name": name}
    inputs = plan_inputs()
    st.session_state["plan_inputs"] = {
        **inputs,
        "global_batch": plan.training.global_batch,
        "precision": plan.training.precision.value,
        "choice": IMPORTED,
    }
    set_current_plan(text, imported_plan_name())  # saves the session and redraws the sidebar


def imported_plan_json() -> str | None:
    """The imported plan, while the model and devices are still the ones it came with."""
    imported = st.session_state.get("imported_plan")
    if imported and imported.get("context") == context_key():
        return imported["json"]
    return None


def imported_plan_name() -> str:
    imported = st.session_state.get("imported_plan") or {}
    return imported.get("name") or f"{IMPORTED} ({imported.get('file', 'upload')})"
