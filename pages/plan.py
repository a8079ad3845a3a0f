"""Plan page: the candidates, the chosen plan's placement, memory and schedule; edit and re-price."""

from __future__ import annotations

import streamlit as st

from dashboard.shared import (
    DEFAULT_BATCH,
    IMPORTED,
    block_ops,
    coarse_graph_json,
    current_cluster_json,
    current_model,
    imported_plan_json,
    searched,
    set_plan_json,
    step_time_text,
)
from planner.build import make_plan, model_blocks
from planner.cluster import cluster_from_json
from planner.cost import Pricer
from planner.errors import PlannerError
from planner.graph import from_json
from planner.plan import plan_from_json
from planner.plan_figures import gantt_figure, memory_figure, placement_figure, time_split

MiB = 2**20
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


st.title("Plan")
source, overrides = current_model()
cluster_json = current_cluster_json()
cluster = cluster_from_json(cluster_json)
st.caption(
    f"{source} {overrides} on {cluster.name or 'this cluster'} ({len(cluster.devices)} devices). "
    "Change the model on the Model page and the devices on the Devices page."
)
left, right = st.columns(2)
batch = int(left.number_input("Global batch", min_value=1, value=DEFAULT_BATCH, key="plan_global_batch"))
strategy = right.selectbox("Strategy", ["auto", "dp", "pp", "hybrid", "mp"], key="plan_strategy")
try:
    with st.spinner("Tracing and searching..."):
        graph_data = coarse_graph_json(source, tuple(overrides.split()))
        rows = searched(graph_data, cluster_json, batch, strategy)
except PlannerError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("Candidates")
table = [
    {
        "strategy": r["strategy"],
        "dp": r["dp"],
        "pp": r["pp"],
        "micro-batches": r["m"],
        "schedule": r["schedule"],
        "step ms": r["step_s"] * 1e3 if r["step_s"] is not None else None,
        "samples/s": r["samples_s"],
        "peak memory MiB": r["peak_mem"] / MiB if r["peak_mem"] is not None else None,
        "sent MiB/step": r["bytes_sent"] / MiB if r["bytes_sent"] is not None else None,
        "bubble": r["bubble"],
        "split proven": r["exact"],
        "why not": r["reason"],
    }
    for r in rows
]
st.dataframe(table, key="plan_candidates", hide_index=True)
feasible = [r for r in rows if r["feasible"] and r["plan_json"]]
if not feasible:
    st.error(rows[0]["reason"] if rows else "no plan was found")
    st.stop()
imported = imported_plan_json()
if imported is not None:  # from the Export / import page: offered first
    feasible.insert(0, {"label": IMPORTED, "plan_json": imported})
labels = [r["label"] for r in feasible]
choice = st.selectbox("Plan to inspect", labels, key="plan_choice")
base = plan_from_json(next(r for r in feasible if r["label"] == choice)["plan_json"])
if choice == IMPORTED:
    batch = base.training.global_batch
    st.caption(f"The imported plan keeps its own global batch ({batch}).")
graph = from_json(graph_data)
blocks = model_blocks(graph)

st.subheader("Edit")
position = {b: i for i, b in enumerate(blocks)}
cuts = [position[s.first] for s in base.stages[1:]]
micro_batches, schedule = base.training.micro_batches, base.schedule
if base.strategy in ("pp", "hybrid"):
    cols = st.columns(len(cuts) + 2)
    cuts = [
        int(
            cols[i].number_input(
                f"Stage {i + 1} starts at block", 1, len(blocks) - 1, cut, key=f"plan_cut_{i}"
            )
        )
        for i, cut in enumerate(cuts)
    ]
    micro_batches = int(
        cols[-2].number_input("Micro-batches", 1, batch, micro_batches, key="plan_micro_batches")
    )
    schedule = cols[-1].selectbox("Schedule", SCHEDULES, SCHEDULES.index(schedule), key="plan_schedule")
training = base.training.model_dump(exclude={"global_batch", "micro_batches"})
# The searched shares fit the searched micro-batch count; another count gets an even split.
shares = [r.batch_share for r in base.replicas] if micro_batches == base.training.micro_batches else None
try:
    plan = make_plan(
        graph, cluster, strategy=base.strategy, global_batch=batch, dp_degree=base.dp_degree,
        pp_degree=base.pp_degree, schedule=schedule, micro_batches=micro_batches,
        virtual_stages=base.virtual_stages, cuts=cuts, devices=[r.device for r in base.ranks],
        coords=[(r.dp_index, r.pp_index) for r in base.ranks],
        shares=shares,
        stage_names=[s.name for s in base.stages], training=training,
    )  # fmt: skip
    prediction = Pricer(graph, cluster)(plan)
except PlannerError as exc:
    st.error(str(exc))
    st.stop()
plan = plan.model_copy(update={"predicted": prediction.to_predicted()})
set_plan_json(plan.to_json())  # what the Export page exports

cols = st.columns(5)
cols[0].metric("Step time", step_time_text(prediction.step_time_s))
cols[1].metric("Samples/s", f"{prediction.samples_per_s:,.1f}")
cols[2].metric("Bubble", f"{prediction.bubble_fraction:.1%}")
cols[3].metric("Sent per step", f"{prediction.bytes_sent / MiB:,.2f} MiB")
cols[4].metric("Peak memory", f"{max(m.total for m in prediction.memory) / MiB:,.1f} MiB")
if not prediction.feasible:
    over = [m for m in prediction.memory if not m.fits]
    st.warning(
        f"Does not fit: device {over[0].device} needs {over[0].total / MiB:,.0f} MiB "
        f"of {over[0].capacity / MiB:,.0f}"
    )

opened = st.multiselect("Expand blocks into their ops", blocks, key="plan_expand")
ops = block_ops(source, tuple(overrides.split())) if opened else {}
st.plotly_chart(placement_figure(graph, plan, {b: ops.get(b, [b]) for b in opened}), key="plan_placement")
left, right = st.columns(2)
left.plotly_chart(memory_figure(prediction), key="plan_memory")
split = time_split(prediction)
right.dataframe(
    [{"rank": r, **{k: f"{v * 1e3:.3f} ms" for k, v in split[r].items()}} for r in sorted(split)],
    key="plan_time_split", hide_index=True,
)  # fmt: skip
st.plotly_chart(gantt_figure(prediction), key="plan_gantt")

st.subheader("How it was priced")
busy_ms, step_ms = sum(v["compute"] for v in split.values()) * 1e3, prediction.step_time_s * 1e3
st.latex(
    r"\text{bubble} = 1 - \frac{\sum_r \text{compute}_r}{R \cdot T_\text{step}} = 1 - "
    rf"\frac{{{busy_ms:.3f}\,\text{{ms}}}}{{{len(split)} \cdot {step_ms:.3f}\,\text{{ms}}}}"
    rf" = {prediction.bubble_fraction:.3f}"
)
st.latex(
    r"\text{samples/s} = \frac{B}{T_\text{step}} = "
    rf"\frac{{{batch}}}{{{prediction.step_time_s * 1e3:.3f}\,\text{{ms}}}} = {prediction.samples_per_s:.1f}"
)
st.caption(
    "The step is simulated rank by rank in torch's schedule order: per-op roofline times, transfers per hop, "
    "all-reduces and the optimizer (docs/cost_model.md)."
)
st.download_button("Download plan JSON", plan.to_json(), file_name="plan.json", key="plan_download")
