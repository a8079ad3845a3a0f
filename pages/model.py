"""Model page: name a model, see its layer graph's size and costs, block by block."""

from __future__ import annotations

import streamlit as st

from dashboard.shared import PY_ALLOW_ENV, allowed_py_sources, set_model
from planner.errors import PlannerError
from planner.figures import block_graph_figure
from planner.graph import from_json

DEFAULT_SOURCE = "gpt"
EXAMPLES = "gpt · mlp · cnn · gan · hf:gpt2 · hf:llama"


@st.cache_data(show_spinner=False, max_entries=16)
def traced(source: str, overrides: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """(fine summary, coarse summary, coarse node-link data): pure and serialisable."""
    from planner.coarsen import coarsen
    from planner.graph import summary, to_json
    from planner.overrides import parse_overrides
    from planner.trace import trace

    fine = trace(source, parse_overrides(overrides))
    coarse = coarsen(fine)
    return summary(fine), summary(coarse), to_json(coarse)


st.title("Model")
left, right = st.columns([2, 3])
with left:
    source = st.text_input(
        "Model source", value=DEFAULT_SOURCE, key="model_source", help=f"For example: {EXAMPLES}"
    )
with right:
    overrides_text = st.text_input(
        "Size overrides (key=value, space separated)",
        value="",
        key="model_overrides",
        help="Values are JSON literals or strings, e.g. n_layer=4 d_model=128, or size=7b for gpt.",
    )
st.caption(
    "Zoo models and Hugging Face architectures (built from their config, random weights, nothing "
    "downloaded) are traced on the meta device, so even a 70B model costs no memory here. "
    "Import paths (py:...) run arbitrary code: the browser accepts only those the server allows "
    f"(${PY_ALLOW_ENV}); the command line takes any."
)

if source.strip().startswith("py:") and source.strip() not in allowed_py_sources():
    st.error(
        f"{source.strip()} is not on this server's allow-list of import paths (${PY_ALLOW_ENV}, empty by "
        "default): importing a module runs its code. Trace it with `python -m planner graph --model py:...`."
    )
    st.stop()
try:
    with st.spinner(f"Tracing {source} on the meta device..."):
        fine, coarse, data = traced(source.strip(), tuple(overrides_text.split()))
except PlannerError as exc:
    st.error(str(exc))
    st.stop()

set_model(source.strip(), overrides_text)  # the Plan page plans this model
graph = from_json(data)
if warning := graph.graph.get("warning"):
    st.warning(warning)

cols = st.columns(5)
cols[0].metric("Parameters", f"{coarse['param_count']:,}")
cols[1].metric("Forward FLOPs / sample", f"{coarse['fwd_flops_per_sample']:.3g}")
cols[2].metric("Saved for backward / sample", f"{coarse['saved_bytes_per_sample'] / 2**20:.2f} MiB")
cols[3].metric("Largest activation", f"{coarse['largest_activation_bytes'] / 2**20:.2f} MiB")
cols[4].metric("Nodes (ops → blocks)", f"{fine['num_nodes']:,} → {coarse['num_nodes']:,}")
st.caption(
    f"Captured by {graph.graph['capture']} in {graph.graph['trace_seconds']:.2f} s; input "
    f"{graph.graph['input_shapes']} {graph.graph['dtype']}; activation figures per sample."
)

st.plotly_chart(block_graph_figure(graph), key="block_graph")

rows = [
    {
        "block": name,
        "module": d["op"],
        "parameters": d["param_count"],
        "forward FLOPs": d["fwd_flops"],
        "saved bytes": d["saved_bytes"],
        "output shape": str(d["output_shape"]),
        "output bytes": d["output_bytes"],
        "tied": ", ".join(d["shared_params"]),
    }
    for name, d in graph.nodes(data=True)
]
st.dataframe(rows, key="block_table", hide_index=True)
