"""Export / import page: the plan as JSON, validated uploads, and the commands that run it."""

from __future__ import annotations

import shlex

import streamlit as st

from dashboard.shared import current_plan_json, import_plan
from planner.errors import PlannerError
from planner.plan import plan_from_json
from runtime import multinode
from runtime.store import new_run_id

st.title("Export / import")
text = current_plan_json()
if text is None:
    st.error("No plan fits this model on these devices; see the Plan page for the reasons.")
    st.stop()
plan = plan_from_json(text)

uploaded = st.file_uploader("Import a plan JSON", type=["json"], key="import_upload")
if uploaded is not None:
    try:
        imported = plan_from_json(uploaded.getvalue().decode(errors="replace"), origin=uploaded.name)
    except PlannerError as exc:
        st.error(f"{uploaded.name} was not imported: {exc}")  # the current plan stays as it was
    else:
        plan = imported
        import_plan(plan.to_json(), plan)
        st.success(f"Imported {uploaded.name}: it is now the current plan, also on the Plan page")

nodes = len({r.node for r in plan.ranks})
cols = st.columns(4)
cols[0].metric("Strategy", f"{plan.strategy} dp{plan.dp_degree}×pp{plan.pp_degree}")
cols[1].metric("Model", plan.model.source)
cols[2].metric("Ranks", len(plan.ranks))
cols[3].metric("Nodes", nodes)
st.download_button("Download plan JSON", plan.to_json(), file_name="plan.json", key="export_download")

st.subheader("Run it")
if nodes == 1:
    st.caption("On this machine (saves the plan as plan.json first):")
    st.code(shlex.join(["python", "-m", "runtime", "run", "plan.json"]), language="bash")
else:
    st.caption("This plan spans several machines: use the per-node commands below.")
endpoint = st.text_input(
    "Rendezvous endpoint (node 0, HOST:PORT)", value="node0:29500", key="export_endpoint"
)
try:
    run_id = st.session_state.setdefault("export_run_id", new_run_id())
    per_node = multinode.commands(plan, nodes=nodes, plan_path="plan.json", run_id=run_id, endpoint=endpoint)
    st.caption(f"On {nodes} machine(s), one command each (copy plan.json to every machine):")
    st.code("\n".join(f"# node {k}\n{shlex.join(cmd)}" for k, cmd in enumerate(per_node)), language="bash")
    _, port = multinode.check_endpoint(endpoint)
    st.caption("Under Slurm (sbatch this script):")
    st.code(multinode.slurm_script(plan, plan_path="plan.json", run_id=run_id, port=port), language="bash")
except PlannerError as exc:
    st.error(str(exc))
