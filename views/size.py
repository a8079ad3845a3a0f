"""Size page: which cluster the current model needs for a training job, in time and money.

The inputs of `python -m planner size` (tokens, a deadline or a budget, the global batch,
the precision, a price catalogue, its kinds and a cap on nodes) for the model chosen on the
Model page. Sizing plans many shapes, so it runs when asked, with a progress bar; the result
is kept for these inputs. The Pareto front is drawn as cost against time, each point's plan in
its hover; "Use this" makes a point's cluster and plan the current devices and plan everywhere.
"""

from __future__ import annotations

import hashlib
import json

import streamlit as st

from dashboard import format as fmt
from dashboard.figures.sizing import front_figure
from dashboard.messages import error, guarded, md
from dashboard.shared import adopt_plan, coarse_graph_json, current_model
from dashboard.sizing_view import front_rows, point_name, sizing_record
from planner.errors import PlannerError
from planner.limits import MAX_GLOBAL_BATCH, MAX_NODES, check_text
from planner.plan import plan_from_json
from planner.precision import Precision
from planner.sizing.catalog import catalog_from_json, default_catalog
from planner.sizing.report import MAX_HOURS, MAX_USD, dollars, duration, parse_limit, parse_tokens

ss = st.session_state
LIMITS = {"hours": "A deadline (hours)", "budget": "A budget (US dollars)"}
UNITS = {"hours": "hours", "budget": "dollars"}
DEFAULTS = {
    "tokens": "10B",
    "limit": "hours",
    "hours": "24",
    "budget": "10000",
    "batch": 512,
    "precision": Precision.BF16_MIXED.value,
}

st.title("Size")
source, overrides = current_model()
st.caption(
    f"What training {md(f'{source} {overrides}'.strip())} needs: every cluster shape of a price catalogue "
    "planned with the search, then the fastest and cheapest that meet the limit. Change the model on "
    "the Model page."
)

# The inputs live in a plain session key, which outlives this page (widget keys do not).
saved = {**DEFAULTS, **ss.get("size_inputs", {})}
for field, value in saved.items():
    ss.setdefault(f"size_{field}", value)


def keep(field: str) -> None:
    ss["size_inputs"] = {**ss.get("size_inputs", {}), field: ss[f"size_{field}"]}


left, middle, right = st.columns(3)
tokens_text = left.text_input(
    "Tokens to train on",
    key="size_tokens",
    on_change=keep,
    args=("tokens",),
    help="1e12, 300B, 1T, 2.5M",
)
limit_kind = middle.radio(
    "Limit", list(LIMITS), key="size_limit", format_func=LIMITS.get, on_change=keep, args=("limit",)
)
limit_text = middle.text_input(
    LIMITS[limit_kind], key=f"size_{limit_kind}", on_change=keep, args=(limit_kind,)
)
batch = int(
    right.number_input(
        "Global batch (samples per step)",
        min_value=1,
        max_value=MAX_GLOBAL_BATCH,
        step=1,
        key="size_batch",
        on_change=keep,
        args=("batch",),
    )
)
precision = right.selectbox(
    "Precision",
    [p.value for p in Precision],
    key="size_precision",
    on_change=keep,
    args=("precision",),
)

uploaded = st.file_uploader(
    "Price catalogue JSON (default: the public list prices shipped, each with its source and date)",
    type=["json"],
    key="size_catalog_upload",
)
try:
    if uploaded is not None:
        catalog = catalog_from_json(uploaded.getvalue(), origin=uploaded.name)
    else:
        catalog = default_catalog()
except PlannerError as exc:
    error(str(exc))
    st.stop()
kinds_col, nodes_col = st.columns([4, 1])
# Another catalogue gets widgets of its own (its kinds are other options).
catalog_key = hashlib.sha256(catalog.model_dump_json().encode()).hexdigest()[:12]
kinds = kinds_col.multiselect(
    "Device kinds", catalog.kinds(), default=catalog.kinds(), key=f"size_kinds_{catalog_key}"
)
max_nodes = int(
    nodes_col.number_input(
        "At most nodes",
        min_value=1,
        max_value=min(MAX_NODES, catalog.max_nodes),
        value=catalog.max_nodes,
        step=1,
        key=f"size_max_nodes_{catalog_key}",
    )
)
mixed_col, every_col = st.columns(2)
mixed = mixed_col.checkbox(
    "Mixed kinds",
    key="size_mixed",
    help="Also plan clusters of two kinds' nodes (a power of two of one kind's nodes topped up with "
    "another's): slower, and a search over mixes rather than every mix.",
)
every = every_col.checkbox(
    "Every node count",
    key="size_every",
    help="Plan every node count, not every count to 8 then four a doubling (10, 12, 14, 16, 20, ...): "
    "slower; under linear scaling a count between two of those costs about the same.",
)
with st.expander(f"Prices of the catalogue {catalog.name!r}"):
    st.dataframe(
        [
            {
                "kind": o.kind,
                "$ a device-hour": f"{o.usd_per_device_hour:.3f}",
                "devices per node": ", ".join(map(str, o.node_sizes)),
                "source": o.source,
                "date": o.date,
            }
            for o in catalog.offers
        ],
        hide_index=True,
        width="stretch",
    )

try:
    check_text(tokens_text, "tokens")
    tokens = parse_tokens(tokens_text)
    cap = MAX_HOURS if limit_kind == "hours" else MAX_USD
    limit_value = parse_limit(limit_text.strip(), cap, UNITS[limit_kind])
    if not kinds:
        raise PlannerError("choose at least one device kind")
except PlannerError as exc:
    error(str(exc))
    st.stop()
hours = limit_value if limit_kind == "hours" else None
budget = limit_value if limit_kind == "budget" else None
job = [
    source,
    overrides,
    tokens,
    hours,
    budget,
    batch,
    precision,
    kinds,
    max_nodes,
    every,
    mixed,
    catalog_key,
]
job_key = hashlib.sha256(json.dumps(job).encode()).hexdigest()

if st.button("Size", type="primary", key="size_run"):
    with guarded("Tracing the model"):
        from planner.capture.graph import from_json

        graph = from_json(coarse_graph_json(source, tuple(overrides.split())))
    bar = st.progress(0.0, text="Planning...")

    def progress(i: int, shape) -> None:
        done = kinds.index(shape.label) if shape.label in kinds else len(kinds) - 1
        text = f"{shape.label}: planning {shape.short_form} ({i + 1} shapes so far)"
        bar.progress(done / len(kinds), text=text)

    with guarded("Sizing"):
        from planner.sizing.size import size

        sizing = size(
            graph,
            catalog,
            tokens=tokens,
            global_batch=batch,
            hours=hours,
            budget_usd=budget,
            precision=precision,
            kinds=kinds,
            max_nodes=max_nodes,
            every_node_count=every,
            mixed=mixed,
            progress=progress,
        )
    bar.empty()
    ss["sizing"] = {"key": job_key, **sizing_record(sizing, hours, budget)}

record = ss.get("sizing")
if record is None or record["key"] != job_key:
    st.info("Set the job above and press **Size**: every shape is planned, minutes for a large model.")
    st.stop()

st.caption(
    f"{fmt.count(tokens)} tokens = {fmt.count(record['steps'])} steps of {fmt.count(batch)} samples "
    f"({fmt.count(record['tokens_per_step'])} tokens a step), {precision}; {record['shapes']} shapes planned "
    f"in {record['seconds']:.1f} s."
)
if record["no_fit"]:
    error(record["no_fit"])
else:
    chosen = record["chosen"]
    st.plotly_chart(front_figure(record["rows"], hours, chosen), key="size_front", width="stretch")
    front = front_rows(record)
    st.subheader("Pareto front")
    st.dataframe(
        [
            {
                "cluster": r["shape"],
                "devices": fmt.count(r["devices"]),
                "time to train": duration(r["hours"]),
                "cost": dollars(r["cost_usd"]),
                "$ a device-hour": f"{r['usd_per_device_hour']:.2f}",
                "plan": r["plan"],
                "MFU": fmt.percent(r["mfu"]),
                "peak memory a device": fmt.size(r["peak_mem"]),
            }
            for r in front
        ],
        key="size_front_table",
        hide_index=True,
        width="stretch",
    )
    by_shape = {r["shape"]: r for r in front}
    pick = st.selectbox(
        "Point to use",
        list(by_shape),
        index=list(by_shape).index(chosen) if chosen in by_shape else 0,
        format_func=lambda s: point_name(by_shape[s]),
        key=f"size_pick_{job_key[:12]}",
        help="Preselected: the cheapest that meets the deadline, or the fastest within the budget.",
    )
    if st.button("Use this: make it the current devices and plan", key="size_use"):
        row = by_shape[pick]
        with guarded("Using the point"):
            plan = plan_from_json(row["plan_json"], origin="the sized plan")
            name = f"sized plan ({point_name(row)})"
            adopt_plan(row["plan_json"], plan, f"Size page: {row['shape']}", name)
        st.success(md(f"{row['shape']} and its plan are now the current devices and plan, on every page."))
        st.page_link("views/plan.py", label="Open the Plan page")
if record["off"]:
    with st.expander("Off the front, and why"):
        st.markdown("  \n".join(md(line) for line in record["off"]))
