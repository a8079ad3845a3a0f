"""Export / import page: the current plan as JSON, validated uploads, and the commands that run it."""

from __future__ import annotations

import shlex

import streamlit as st

from dashboard import format as fmt
from dashboard.messages import error, guarded, md, one_line
from dashboard.shared import current_plan, import_plan, summarise
from dashboard.uploads import read_plan_upload
from planner.limits import check_text
from planner.plan import plan_from_json
from runtime.supervise import multinode
from runtime.supervise.store import new_run_id

ss = st.session_state


st.title("Export / import")
current_box = st.container()  # the current plan on top, drawn once an upload has been read
st.subheader("Import a plan")
uploaded = st.file_uploader(
    "Import a plan JSON",
    type=["json"],
    key="import_upload",
    help="A plan saved from this page or by `python -m planner plan`; it becomes the current plan.",
)
if uploaded is not None and ss.get("import_seen") != uploaded.file_id:
    # Once per upload: the file stays in the uploader across reruns, the import must not repeat.
    ss["import_seen"] = uploaded.file_id
    name = uploaded.name
    try:
        with st.spinner(md(f"Checking {name}...")):
            plan = read_plan_upload(name, uploaded.getvalue())
    except Exception as exc:  # any failure leaves the current plan as it was
        ss["import_message"] = (
            "error",
            f"{name} was not imported: {one_line(exc).removeprefix(name + ': ')}",
        )
    else:
        import_plan(plan.to_json(), plan, name)
        ss["import_message"] = (
            "success",
            f"Imported {name}: it is now the current plan, also on the Plan page.",
        )
if uploaded is None:
    ss.pop("import_message", None)
    ss.pop("import_seen", None)
elif message := ss.get("import_message"):
    (error if message[0] == "error" else lambda text: st.success(md(text)))(message[1])

with current_box:
    with st.spinner("Finding the current plan..."), guarded("Finding the current plan"):
        current = current_plan()
    if current is None:
        st.error("No plan fits this model on these devices; see the Plan page for the reasons.")
        st.stop()
    summary = summarise(current)
    plan = plan_from_json(current.json)
    st.subheader(f"The current plan: {md(summary.name)}")
    st.caption(
        f"{md(summary.model)}, {md(summary.layout)}. "
        "This is the plan the Plan page shows and the Runs page launches."
    )
    if summary.edited:
        st.info(md("Edited by hand from the candidate: " + "; ".join(summary.changes)))
    cols = st.columns(4)
    cols[0].metric("Step time", fmt.duration(summary.step_time_s), help="Predicted")
    cols[1].metric("Samples per second", fmt.rate(summary.samples_per_s, "").strip())
    cols[2].metric("Bubble", fmt.percent(summary.bubble_fraction), help="Share of the step devices sit idle")
    cols[3].metric("Peak memory", fmt.size(summary.peak_memory_bytes), help="On the fullest device")
    st.download_button("Download plan JSON", current.json, file_name="plan.json", key="export_download")

st.subheader("Run it")
nodes = len({r.node for r in plan.ranks})
if nodes == 1:
    st.caption("On this machine (save the plan as plan.json first):")
    st.code(shlex.join(["python", "-m", "runtime", "run", "plan.json"]), language="bash", wrap_lines=True)
else:
    st.caption(f"This plan spans {fmt.count(nodes)} machines: use the per-node commands below.")
endpoint = st.text_input(
    "Rendezvous endpoint (node 0, HOST:PORT)", value="node0:29500", key="export_endpoint"
)
with guarded("Writing the commands"):
    check_text(endpoint, "rendezvous endpoint")
    run_id = ss.setdefault("export_run_id", new_run_id())
    per_node = multinode.commands(plan, nodes=nodes, plan_path="plan.json", run_id=run_id, endpoint=endpoint)
    _, port = multinode.check_endpoint(endpoint)
    script = multinode.slurm_script(plan, plan_path="plan.json", run_id=run_id, port=port)
st.caption(f"On {fmt.count(nodes)} machine(s), one command each (copy plan.json to every machine):")
per_node_text = "\n".join(f"# node {k}\n{shlex.join(cmd)}" for k, cmd in enumerate(per_node))
st.code(per_node_text, language="bash", wrap_lines=True)
st.caption("Under Slurm (sbatch this script):")
st.code(script, language="bash", wrap_lines=True)
