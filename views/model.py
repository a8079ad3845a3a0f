"""Model page (the landing page): name a model, see its layer graph's size and costs, block by block."""

from __future__ import annotations

import streamlit as st

from dashboard import format as fmt
from dashboard.figures.graph import block_graph_figure
from dashboard.messages import error, guarded, md
from dashboard.shared import current_model, model_trace, set_model
from dashboard.state import FIRST_VISIT
from planner.capture.graph import from_json
from planner.capture.source import PY_ALLOW_ENV, allowed_py_modules, parse_source, py_module
from planner.limits import check_text

EXAMPLES = "gpt · mlp · cnn · gan · hf:gpt2 · hf:llama"


def flops(n: float) -> str:
    """A FLOP count: 1.7 TFLOP, 512 FLOP."""
    text = fmt.count(n)
    return f"{text[:-2]} {text[-1]}FLOP" if text[-1].isalpha() else f"{text} FLOP"


st.title("Model")
if st.session_state.get(FIRST_VISIT):  # a new session: nothing saved under its id
    st.info(
        "Four steps, one page each: **Model** (here: what to train), **Devices** (what to train it on), "
        "**Plan** (how to split it, priced before anything runs), **Run** (launch it and watch it)."
    )
# The widgets start from the current model: it may come from an imported plan or a reload.
saved_source, saved_overrides = current_model()
st.session_state.setdefault("model_source", saved_source)
st.session_state.setdefault("model_overrides", saved_overrides)
left, right = st.columns([2, 3])
source = left.text_input("Model source", key="model_source", help=f"For example: {EXAMPLES}").strip()
overrides_text = right.text_input(
    "Size overrides (key=value, space separated)",
    key="model_overrides",
    help="Values are JSON literals or strings, e.g. n_layer=4 d_model=128, or size=7b for gpt.",
)
st.caption(
    "Zoo models and Hugging Face architectures (built from their config, random weights, nothing "
    "downloaded) are traced on the meta device, so even a 70B model costs no memory here. "
    "Import paths (py:...) run their module's code: the browser accepts only modules the server "
    f"allows (${PY_ALLOW_ENV}); the command line asks for --allow-py."
)

with guarded("Reading the model"):
    check_text(source, "model source")
    check_text(overrides_text, "size overrides")
    module = py_module(parse_source(source))
if module is not None and module not in allowed_py_modules():
    error(
        f"{source}: module {module} is not on this server's allow-list ({PY_ALLOW_ENV}, empty by default), "
        "and importing a module runs its code. Trace it from a terminal instead: "
        f"python -m planner graph --model {source} --allow-py {module}"
    )
    st.stop()
with st.spinner(md(f"Tracing {source} on the meta device...")), guarded("Tracing the model"):
    traced = model_trace(source, tuple(overrides_text.split()))

set_model(source, overrides_text)  # the Plan page plans this model
fine, coarse, graph = traced["fine"], traced["coarse"], from_json(traced["graph"])
if warning := graph.graph.get("warning"):
    st.warning(md(warning))

cols = st.columns(4)
cols[0].metric("Parameters", fmt.count(coarse["param_count"]), help=f"{coarse['param_count']:,} exactly")
cols[1].metric("Forward per sample", flops(coarse["fwd_flops_per_sample"]))
cols[2].metric("Saved for backward", fmt.size(coarse["saved_bytes_per_sample"]), help="Per sample.")
cols[3].metric("Largest activation", fmt.size(coarse["largest_activation_bytes"]), help="Per sample.")
shapes = ", ".join("×".join(map(str, s)) for s in graph.graph["input_shapes"])
st.caption(
    f"Captured by {md(graph.graph['capture'])} in {fmt.duration(graph.graph['trace_seconds'])}: "
    f"{fmt.count(fine['num_nodes'])} ops grouped into {fmt.count(coarse['num_nodes'])} blocks. "
    f"Example input {shapes} ({graph.graph['dtype']}); activation figures are per sample."
)

st.plotly_chart(block_graph_figure(graph), key="block_graph")

rows = [
    {
        "block": name,
        "module": d["op"],
        "parameters": fmt.count(d["param_count"]),
        "forward": flops(d["fwd_flops"]),
        "saved for backward": fmt.size(d["saved_bytes"]),
        "output shape": "×".join(map(str, d["output_shape"])),
        "output": fmt.size(d["output_bytes"]),
        "tied to": ", ".join(d["shared_params"]),
    }
    for name, d in graph.nodes(data=True)
]
st.dataframe(
    rows,
    key="block_table",
    hide_index=True,
    width="stretch",
    column_config={
        "block": st.column_config.TextColumn("Block", help="Module path (FQN) of the block"),
        "module": st.column_config.TextColumn("Module"),
        "parameters": st.column_config.TextColumn("Parameters"),
        "forward": st.column_config.TextColumn("Forward", help="FLOPs of one forward pass, whole batch"),
        "saved for backward": st.column_config.TextColumn("Saved for backward"),
        "output shape": st.column_config.TextColumn("Output shape"),
        "output": st.column_config.TextColumn("Output"),
        "tied to": st.column_config.TextColumn("Tied to", help="Parameters shared with other blocks"),
    },
)
st.page_link("views/devices.py", label="Next: the devices to train on")
