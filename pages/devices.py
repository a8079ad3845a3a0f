"""Devices page: a preset, the short form or this machine; edit devices and links; load/save JSON."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboard.shared import set_cluster_json
from planner.cluster import PRESETS, cluster_from_json, resolve_cluster
from planner.errors import PlannerError

GiB = 2**30

st.title("Devices")
spec = st.text_input(
    "Cluster",
    value="local",
    key="devices_spec",
    help=f"'local' (this machine), a preset ({', '.join(PRESETS)}), or KIND:PER_NODE[xNODES] joined by + "
    "inside a node, e.g. h100:8, a100-80gb:4+v100-32gb:4, cpu:2",
)
uploaded = st.file_uploader("Or load a cluster JSON", type=["json"], key="devices_upload")
try:
    if uploaded is not None:
        cluster = cluster_from_json(uploaded.getvalue().decode(), origin=uploaded.name)
    elif spec.strip().endswith(".json") or "/" in spec:
        # A path typed in the browser would read the server's files: load JSON by upload.
        raise PlannerError("cluster files are loaded with the uploader, not by path")
    else:
        cluster = resolve_cluster(spec)
except PlannerError as exc:
    st.error(str(exc))
    st.stop()

st.caption("Edit any cell; the cluster is checked again (a link to a missing device, a duplicate id...).")
devices = pd.DataFrame(
    [{**d.model_dump(), "memory_GiB": d.memory_bytes / GiB} for d in cluster.devices]
).drop(columns=["memory_bytes"])
edited_devices = st.data_editor(devices, key="devices_editor", num_rows="dynamic", hide_index=True)
links = pd.DataFrame(
    [link.model_dump() for link in cluster.links], columns=["a", "b", "kind", "bandwidth", "latency"]
)
edited_links = st.data_editor(links, key="links_editor", num_rows="dynamic", hide_index=True)


def _clean(records: list[dict]) -> list[dict]:
    # Empty cells of new rows come back as NaN/None: leave them out so defaults apply.
    return [
        {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and v != v)}
        for r in records
    ]


document = json.loads(cluster.to_json())
device_rows = _clean(edited_devices.to_dict("records"))
for row in device_rows:
    if "memory_GiB" in row:
        row["memory_bytes"] = int(row.pop("memory_GiB") * GiB)
document["devices"] = device_rows
document["links"] = _clean(edited_links.to_dict("records"))
try:
    cluster = cluster_from_json(json.dumps(document), origin="the edited tables")
except PlannerError as exc:
    st.error(str(exc))
    st.stop()

set_cluster_json(cluster.to_json())
cols = st.columns(4)
cols[0].metric("Devices", len(cluster.devices))
cols[1].metric("Nodes", len({d.node for d in cluster.devices}))
cols[2].metric("Device kinds", len({d.kind for d in cluster.devices}))
cols[3].metric("Memory in all", f"{sum(d.memory_bytes for d in cluster.devices) / GiB:,.1f} GiB")
for note in cluster.notes:
    st.caption(note)
st.download_button("Save cluster JSON", cluster.to_json(), file_name="cluster.json", key="devices_download")
