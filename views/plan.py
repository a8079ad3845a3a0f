"""Plan page: the candidates, the chosen plan's placement, memory and schedule; edit it and re-price.

The plan shown here is the current plan (`dashboard.shared`): what Export downloads and
Runs launches. Choosing a candidate, or changing what the search depends on (model,
devices, global batch, strategy), starts the edits again from that candidate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import streamlit as st

from dashboard import format as fmt
from dashboard.figures.plan import gantt_figure, memory_figure, placement_figure, rank_grid_figure, time_split
from dashboard.messages import guarded, md, one_line
from dashboard.naming import SCHEDULE_NAMES
from dashboard.plan_edit import (
    MIXED,
    Edits,
    apply,
    changes,
    cut_options,
    dp_mode_options,
    editable,
    edits_of,
    levers_editable,
    micro_batch_options,
    recompute_options,
    schedule_options,
)
from dashboard.shared import (
    IMPORTED,
    block_ops,
    cluster_brief,
    coarse_graph_json,
    context_key,
    current_cluster_json,
    current_model,
    imported_plan_json,
    imported_plan_name,
    plan_inputs,
    searched,
    set_current_plan,
    set_plan_inputs,
)
from dashboard.state import save
from planner.capture.graph import from_json
from planner.cluster import cluster_from_json
from planner.cost.price import Prediction, Pricer
from planner.limits import MAX_GLOBAL_BATCH
from planner.plan import Strategy, plan_from_json
from planner.precision import Precision
from planner.search.build import model_blocks
from planner.search.search import STRATEGIES
from planner.search.tensor_degrees import degrees_in_nodes

PRECISION_NAMES = {
    "fp32": "fp32",
    "bf16-mixed": "bf16 mixed (autocast)",
    "fp16-mixed": "fp16 mixed (loss scaling)",
    "bf16": "bf16 (pure)",
}
STRATEGY_NAMES = {
    "auto": "any (fastest that fits)",
    Strategy.DP: "data parallel",
    Strategy.PP: "pipeline parallel",
    Strategy.HYBRID: "hybrid (data × pipeline)",
    Strategy.MP: "sub-networks on their own devices (GAN)",
}
DP_MODE_NAMES = {
    "replicate": "replicated (DDP)",
    "shard_grad_op": "sharded gradients and optimizer (ZeRO-2)",
    "full_shard": "fully sharded (ZeRO-3)",
    "hybrid_shard": "sharded in a node, replicated across (HSDP)",
}
CUTS_PER_ROW = 4
ss = st.session_state


def recompute_name(setting: str) -> str:
    if setting == MIXED:
        return "as each stage has it"
    if setting.startswith("every-"):
        return f"one block in {setting.removeprefix('every-')}"
    return {"none": "nothing", "full": "every block"}.get(setting, setting)


@st.cache_data(show_spinner=False, max_entries=32)
def priced(graph_data: dict, plan_json: str) -> Prediction:
    """The plan's full prediction, timeline included (cached: the page redraws often)."""
    plan = plan_from_json(plan_json)
    return Pricer(from_json(graph_data), plan.cluster)(plan)


# The choices live in plain session keys (`dashboard.shared`), which outlive this page and a
# reload; each widget is set from them before it is drawn, and writes back when it changes.
def keep_input(field: str, key: str) -> None:
    set_plan_inputs(**{**plan_inputs(), field: ss[key]})


def keep_edit(field: str, key: str, index: int | None = None) -> None:
    edits = dict(ss["plan_edits"])
    if index is None:
        edits[field] = ss[key]
    else:
        edits[field] = [ss[key] if i == index else c for i, c in enumerate(edits[field])]
    ss["plan_edits"] = edits


def keep_edits(base_key: str, edits: Edits) -> None:
    """``edits`` of the candidate ``base_key`` as the session keeps them (dashboard.state)."""
    ss["plan_edits"] = {"base": base_key, **dataclasses.asdict(edits), "cuts": list(edits.cuts)}


def reset_edits(base_key: str, base: Edits) -> None:
    keep_edits(base_key, base)


st.title("Plan")
source, overrides = current_model()
cluster_json = current_cluster_json()
with guarded("Reading the devices"):
    cluster_from_json(cluster_json)  # damaged devices are one line here, not an error in the search
st.caption(
    f"{md(f'{source} {overrides}'.strip())} on {md(cluster_brief(cluster_json))}. Change the model on "
    "the Model page and the devices on the Devices page."
)

# -- what the search depends on ---------------------------------------------------------------
inputs = plan_inputs()
ss["plan_global_batch"], ss["plan_strategy"] = inputs["global_batch"], inputs["strategy"]
ss["plan_precision"] = inputs["precision"]
tp_choices = ["auto", *degrees_in_nodes(cluster_from_json(cluster_json))]
ss["plan_tp"] = inputs["tp"] if inputs["tp"] in tp_choices else "auto"
ss["plan_sp"] = inputs["sp"]  # off at tp 1 (`plan_inputs`): nothing to split along the sequence
left, right, third, fourth = st.columns(4)
batch = int(
    left.number_input(
        "Global batch (samples per step)",
        min_value=1,
        max_value=MAX_GLOBAL_BATCH,
        step=1,
        key="plan_global_batch",
        on_change=keep_input,
        args=("global_batch", "plan_global_batch"),
    )
)
strategy = right.selectbox(
    "Strategy",
    STRATEGIES,
    key="plan_strategy",
    format_func=STRATEGY_NAMES.get,
    on_change=keep_input,
    args=("strategy", "plan_strategy"),
)
precision = third.selectbox(
    "Precision",
    [p.value for p in Precision],
    key="plan_precision",
    format_func=PRECISION_NAMES.get,
    on_change=keep_input,
    args=("precision", "plan_precision"),
    help="Mixed: fp32 weights and optimizer state, 16-bit matrix products (torch.autocast). "
    "bf16: everything in bf16, 8 B a parameter, and updates smaller than a weight's bf16 spacing are lost.",
)
tp = fourth.selectbox(
    "Tensor parallel",
    tp_choices,
    key="plan_tp",
    format_func=lambda t: "any degree that fits" if t == "auto" else f"{t} ranks per tensor group",
    on_change=keep_input,
    args=("tp", "plan_tp"),
    help="Ranks each block with a Megatron layout is split across (attention heads and the MLP), "
    "inside a node; the search tries every degree the heads and the nodes allow, or this one.",
)
sp = fourth.toggle(
    "Sequence parallel",
    key="plan_sp",
    disabled=tp == 1,
    on_change=keep_input,
    args=("sp", "plan_sp"),
    help="Megatron-SP: in each tensor group the norms and residual adds run on each rank's slice of "
    "the sequence, with all-gathers and reduce-scatters in place of the all-reduces.",
)
with st.spinner("Tracing and searching..."), guarded("Searching for plans"):
    graph_data = coarse_graph_json(source, tuple(overrides.split()))
    rows, search_notes = searched(graph_data, cluster_json, batch, strategy, precision, tp, sp)

st.subheader("Candidates")
tokens = graph_data.get("graph", {}).get("config", {}).get("seq_len")
if tokens:  # what every figure below is for: a sample of this many tokens
    st.caption(f"Planned for samples of {fmt.count(tokens)} tokens (the model's seq_len).")
for search_note in search_notes:  # why some tensor-parallel degrees were not tried
    st.caption(md(search_note[0].upper() + search_note[1:] + "."))
st.dataframe(
    [
        {
            "plan": r["title"],
            "fits": "yes" if r["feasible"] else "no",
            "step": fmt.duration(r["step_s"]),
            "samples/s": fmt.rate(r["samples_s"], "").strip() if r["samples_s"] is not None else "-",
            "peak memory": fmt.size(r["peak_mem"]),
            "sent per step": fmt.size(r["bytes_sent"]),
            "bubble": fmt.percent(r["bubble"]),
            "mfu": fmt.percent(r["mfu"]),
            "split": "proven best" if r["exact"] else "balanced",
        }
        for r in rows
    ],
    key="plan_candidates",
    hide_index=True,
    width="stretch",
    column_config={
        "plan": st.column_config.TextColumn(
            "Plan", help="strategy, data × pipeline × tensor degrees, micro-batches, schedule", width="large"
        ),
        "fits": st.column_config.TextColumn("Fits", help="Whether every device's memory holds its part"),
        "step": st.column_config.TextColumn("Time per step", help="Predicted time of one optimizer step"),
        "samples/s": st.column_config.TextColumn("Samples/s"),
        "peak memory": st.column_config.TextColumn("Peak memory", help="On the fullest device"),
        "sent per step": st.column_config.TextColumn("Sent per step", help="Bytes over all links"),
        "bubble": st.column_config.TextColumn("Bubble", help="Share of the step the devices sit idle"),
        "mfu": st.column_config.TextColumn(
            "MFU",
            help="Model FLOPs utilisation: the model's training FLOPs per second (3 x forward) "
            "over the devices' dense peak",
        ),
        "split": st.column_config.TextColumn(
            "Stage split", help="Proven best by branch and bound, or the split that balances work"
        ),
    },
)
unfit = [r for r in rows if not r["feasible"]]
if unfit:
    st.markdown(
        "**Why these do not fit**  \n" + "  \n".join(f"{md(r['title'])}: {md(r['reason'])}" for r in unfit)
    )

feasible = {r["label"]: r for r in rows if r["feasible"] and r["plan_json"]}
imported = imported_plan_json()
options = ([IMPORTED] if imported is not None else []) + list(feasible)
if not options:
    st.error(md(rows[0]["reason"]) if rows else "No plan was found for this model on these devices.")
    st.stop()


# -- the chosen candidate -----------------------------------------------------------------------
def choice_text(label: str) -> str:
    if label == IMPORTED:
        return imported_plan_name()
    return f"{feasible[label]['title']} · {fmt.duration(feasible[label]['step_s'])} per step"


# The candidate chosen before, while this search still offers it; else the first (the fastest).
ss["plan_choice"] = inputs["choice"] if inputs["choice"] in options else options[0]
choice = st.selectbox(
    "Plan to inspect and edit",
    options,
    key="plan_choice",
    format_func=choice_text,
    on_change=keep_input,
    args=("choice", "plan_choice"),
)
set_plan_inputs(batch, strategy, choice, precision, tp, sp)
name = imported_plan_name() if choice == IMPORTED else feasible[choice]["title"]
base_json = imported if choice == IMPORTED else feasible[choice]["plan_json"]
base = plan_from_json(base_json)
if choice == IMPORTED and base.training.global_batch != batch:
    st.caption(f"The imported plan keeps its own global batch ({fmt.count(base.training.global_batch)}).")
graph = from_json(graph_data)
blocks = model_blocks(graph)

# -- edits: they belong to one candidate of one search ------------------------------------------
search_and_choice = [context_key(), batch, strategy, tp, choice, base_json]
base_key = hashlib.sha256(json.dumps(search_and_choice).encode()).hexdigest()
base_edits = edits_of(base)
if ss.get("plan_edits", {}).get("base") != base_key:
    reset_edits(base_key, base_edits)  # a new candidate or search: start again from the candidate
saved = {"dp_mode": base_edits.dp_mode, "recompute": base_edits.recompute, **ss["plan_edits"]}

edits = base_edits
note = ""
same_blocks = base.model.blocks == blocks
if (editable(base) or levers_editable(base)) and same_blocks:
    st.subheader("Edit")
if editable(base) and same_blocks:
    left, right = st.columns(2)
    schedules = schedule_options(base)
    if saved["schedule"] not in schedules:
        saved["schedule"] = base.schedule if base.schedule in schedules else schedules[0]
    ss["plan_schedule"] = saved["schedule"]
    schedule = left.selectbox(
        "Schedule",
        schedules,
        key="plan_schedule",
        format_func=SCHEDULE_NAMES.get,
        on_change=keep_edit,
        args=("schedule", "plan_schedule"),
        help="Interleaved 1F1B runs two stages per pipeline rank, the others one: each candidate "
        "offers the schedules for its own stage count.",
    )
    counts = micro_batch_options(base, schedule)
    if saved["micro_batches"] not in counts:
        old = saved["micro_batches"]
        saved["micro_batches"] = next((m for m in counts if m >= old), counts[-1])
        note = (
            f"Micro-batches set to {saved['micro_batches']}: {SCHEDULE_NAMES[schedule]} does not run {old}."
        )
    ss["plan_micro_batches"] = saved["micro_batches"]
    shares = sorted({r.batch_share for r in base.replicas})
    micro_batches = right.selectbox(
        "Micro-batches per replica",
        counts,
        key="plan_micro_batches",
        on_change=keep_edit,
        args=("micro_batches", "plan_micro_batches"),
        help=f"Counts that split each replica's share ({', '.join(map(str, shares))} samples) evenly "
        "and that the schedule accepts.",
    )
    cuts = list(saved["cuts"])
    grid = st.columns(min(CUTS_PER_ROW, len(cuts)))
    for i in range(len(cuts)):
        allowed = cut_options(cuts, i, len(blocks))
        ss[f"plan_cut_{i}"] = cuts[i] if cuts[i] in allowed else min(allowed, key=lambda j: abs(j - cuts[i]))
        cuts[i] = grid[i % CUTS_PER_ROW].selectbox(
            f"Stage {i + 2} starts at",
            allowed,
            key=f"plan_cut_{i}",
            format_func=lambda j: f"{blocks[j]} (block {j + 1} of {len(blocks)})",
            on_change=keep_edit,
            args=("cuts", f"plan_cut_{i}", i),
        )
    edits = Edits(tuple(cuts), int(micro_batches), schedule)
elif editable(base):
    st.caption("This plan's blocks differ from the traced model's, so its stages cannot be edited here.")
elif levers_editable(base):
    st.caption(
        "Each device holds a whole model: no stage boundary, micro-batch count or schedule to edit. "
        "Choose a pipeline candidate to edit those."
    )
else:
    st.caption(
        "Nothing to edit in this plan: the GAN's two networks step apart, so they are not sharded, "
        "recomputed or cut into stages."
    )
if levers_editable(base) and same_blocks:
    left, right = st.columns(2)
    modes = dp_mode_options(base)
    ss["plan_dp_mode"] = saved["dp_mode"] if saved["dp_mode"] in modes else base_edits.dp_mode
    dp_mode = left.selectbox(
        "Data parallel",
        modes,
        key="plan_dp_mode",
        format_func=lambda m: DP_MODE_NAMES.get(m, m),
        on_change=keep_edit,
        args=("dp_mode", "plan_dp_mode"),
        help="How each stage's replicas hold it: whole (DDP), or sharded over them (FSDP2) and "
        "gathered block by block. A plan without replicas has nothing to shard.",
    )
    settings = recompute_options(base_edits.recompute)
    ss["plan_recompute"] = saved["recompute"] if saved["recompute"] in settings else base_edits.recompute
    recompute = right.selectbox(
        "Recompute activations",
        settings,
        key="plan_recompute",
        format_func=recompute_name,
        on_change=keep_edit,
        args=("recompute", "plan_recompute"),
        help="Blocks that recompute keep only their inputs and run their forward again in backward: "
        "less memory, more time.",
    )
    edits = Edits(edits.cuts, edits.micro_batches, edits.schedule, dp_mode, recompute)
if same_blocks and (editable(base) or levers_editable(base)):
    keep_edits(base_key, edits)
    save()

changed = changes(base_edits, edits, blocks)
if note:
    st.caption(note)
if changed:
    left, right = st.columns([4, 1])
    left.info(md(f"Edited from {choice_text(choice)}: " + "; ".join(changed)))
    right.button(
        "Reset to the candidate", key="plan_reset", on_click=reset_edits, args=(base_key, base_edits)
    )

# -- the plan, priced; an edit that fails keeps the last valid plan on screen -------------------
try:
    with st.spinner("Pricing..."):
        if changed:
            plan = apply(graph, base, edits)
            prediction = priced(graph_data, plan.to_json())
            plan_json = plan.model_copy(update={"predicted": prediction.to_predicted()}).to_json()
        elif choice == IMPORTED:  # priced here, whatever the file said
            prediction = priced(graph_data, base_json)
            plan_json = base.model_copy(update={"predicted": prediction.to_predicted()}).to_json()
        else:  # the candidate exactly as the search made it
            plan_json = base_json
            prediction = priced(graph_data, base_json)
except Exception as exc:
    last = ss.get("plan_last_valid")
    if not last or last["context"] != context_key():
        st.error(md(one_line(exc, "Pricing the plan")))
        st.stop()
    st.error(md(f"{one_line(exc, 'Pricing the edited plan')}. Showing the last valid plan below."))
    plan_json, prediction, changed = last["json"], priced(graph_data, last["json"]), last["changes"]
else:
    set_current_plan(plan_json, name, changed)
    ss["plan_last_valid"] = {"json": plan_json, "changes": changed, "context": context_key()}
plan = plan_from_json(plan_json)

st.subheader("The current plan")
st.caption(
    f"What the Export page downloads and the Runs page launches: {md(name)}{' (edited)' if changed else ''}."
)
cols = st.columns(5)
cols[0].metric("Step time", fmt.duration(prediction.step_time_s))
cols[1].metric("Samples per second", fmt.rate(prediction.samples_per_s, "").strip())
cols[2].metric("Bubble", fmt.percent(prediction.bubble_fraction), help="Share of the step devices sit idle")
cols[3].metric("Peak memory", fmt.size(max(m.total for m in prediction.memory)), help="On the fullest device")
cols[4].metric("Sent per step", fmt.size(prediction.bytes_sent), help="Bytes over all links in one step")
if not prediction.feasible:
    over = max(prediction.memory, key=lambda m: m.total - m.capacity)
    st.warning(
        f"Does not fit: device {over.device} needs {fmt.size(over.total)} of its {fmt.size(over.capacity)}."
    )

opened = st.multiselect("Expand blocks into their ops", blocks, key="plan_expand")
ops = block_ops(source, tuple(overrides.split())) if opened else {}
st.plotly_chart(placement_figure(graph, plan, {b: ops.get(b, [b]) for b in opened}), key="plan_placement")
st.plotly_chart(rank_grid_figure(plan), key="plan_rank_grid")
left, right = st.columns([3, 2])
left.plotly_chart(memory_figure(prediction), key="plan_memory")
split = time_split(prediction)
right.markdown("**Where each rank's step goes**")
right.dataframe(
    [
        {
            "rank": r,
            "compute": fmt.duration(split[r]["compute"]),
            "communication": fmt.duration(split[r]["communication"]),
            "idle": fmt.duration(split[r]["idle"]),
            "busy": fmt.percent(
                split[r]["compute"] / prediction.step_time_s if prediction.step_time_s else None
            ),
        }
        for r in sorted(split)
    ],
    key="plan_time_split",
    hide_index=True,
    width="stretch",
    column_config={
        "rank": st.column_config.NumberColumn("Rank", format="%d"),
        "compute": st.column_config.TextColumn("Compute"),
        "communication": st.column_config.TextColumn(
            "Communication", help="Sends and all-reduces not hidden"
        ),
        "idle": st.column_config.TextColumn("Idle"),
        "busy": st.column_config.TextColumn("Busy", help="Compute as a share of the step"),
    },
)
st.plotly_chart(gantt_figure(prediction), key="plan_gantt")

st.subheader("How it was priced")
busy = fmt.duration(sum(v["compute"] for v in split.values()))
step_text = fmt.duration(prediction.step_time_s)
st.latex(
    r"\text{bubble} = 1 - \frac{\sum_r \text{compute}_r}{R \cdot T_\text{step}} = 1 - "
    rf"\frac{{\text{{{busy}}}}}{{{len(split)} \cdot \text{{{step_text}}}}}"
    rf" = \text{{{fmt.percent(prediction.bubble_fraction)}}}".replace("%", r"\%")
)
st.latex(
    r"\text{samples/s} = \frac{B}{T_\text{step}} = "
    rf"\frac{{{plan.training.global_batch}}}{{\text{{{step_text}}}}}"
    rf" = {fmt.rate(prediction.samples_per_s, '').strip().replace(',', '{,}')}"
)
st.caption(
    "The step is simulated rank by rank in torch's schedule order: per-op roofline times, transfers per hop, "
    "all-reduces and the optimizer (docs/cost_model.md)."
)
st.download_button("Download plan JSON", plan_json, file_name="plan.json", key="plan_download")
st.page_link("views/export.py", label="Next: export it, or run it from the Runs page")
