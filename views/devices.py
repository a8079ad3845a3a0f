"""Devices page: a preset, the short form, this machine or a cluster JSON; devices by node and
links by kind (editable where the cluster is small); save the JSON.

What is typed or uploaded is read within `planner.limits` (a cluster of 10^6 devices is
refused before one is built) and any failure is one line; the current cluster is then left
as it was.
"""

from __future__ import annotations

import hashlib
import json

import streamlit as st

from dashboard import format as fmt
from dashboard.cluster_view import (
    EDITABLE_DEVICES,
    EDITABLE_LINKS,
    SCOPES,
    device_frame,
    device_summary,
    edited_document,
    group_frame,
    link_frame,
    link_summary,
)
from dashboard.messages import error, md
from dashboard.shared import current_cluster_json, current_devices_spec, set_cluster_json
from dashboard.uploads import read_cluster_upload
from planner.cluster import PRESETS, cluster_from_json, resolve_cluster
from planner.devices import DEVICE_KINDS, LINK_KINDS
from planner.errors import ClusterError, PlannerError
from planner.limits import MAX_DEVICES, MAX_DEVICES_PER_NODE, MAX_NODES, check_text

ss = st.session_state
st.title("Devices")
# The widget starts from the current devices: a reload, an imported plan or an upload. Empty
# means "the current cluster as it is" (from a file, a plan or edits).
saved = current_devices_spec()
ss.setdefault("devices_spec", saved if saved is not None else ("" if "cluster_json" in ss else "local"))


def _typed() -> None:
    # What was typed replaces a loaded file: a new uploader key drops the file.
    ss["devices_upload_count"] = ss.get("devices_upload_count", 0) + 1


spec = st.text_input(
    "Cluster",
    key="devices_spec",
    on_change=_typed,
    placeholder="empty: the current cluster, as loaded or edited",
    help=f"'local' (this machine), a preset ({', '.join(PRESETS)}), or KIND:PER_NODE[xNODES] joined by + "
    "inside a node and by , between sets of nodes, e.g. h100:8, a100-80gb:4+v100-32gb:4, "
    "h100:8x2,a100-80gb:8x4, cpu:2. At most "
    f"{MAX_DEVICES_PER_NODE:,} devices per node, {MAX_NODES:,} nodes and {MAX_DEVICES:,} devices.",
).strip()
uploaded = st.file_uploader(
    "Or load a cluster JSON", type=["json"], key=f"devices_upload_{ss.get('devices_upload_count', 0)}"
)
try:
    if uploaded is not None:
        base, base_spec = read_cluster_upload(uploaded.name, uploaded.getvalue()), None
    elif spec:
        check_text(spec, "cluster", ClusterError)
        if spec.endswith(".json") or "/" in spec:
            # A path typed in the browser would read the server's files: load JSON by upload.
            raise ClusterError("cluster files are loaded with the uploader, not by path")
        base, base_spec = resolve_cluster(spec), spec
    else:
        base, base_spec = cluster_from_json(current_cluster_json(), origin="the current cluster"), None
except PlannerError as exc:
    error(str(exc))
    st.stop()

# Editors are keyed by the cluster they edit: another cluster starts without the old edits.
digest = hashlib.sha256(base.to_json().encode()).hexdigest()[:12]
small = len(base.devices) <= EDITABLE_DEVICES
cols = st.columns(4)
cols[0].metric("Devices", fmt.count(len(base.devices)))
cols[1].metric("Nodes", fmt.count(len(base.nodes())))
cols[2].metric("Device kinds", fmt.count(len({d.kind for d in base.devices})))
cols[3].metric("Memory in all", fmt.size(sum(d.memory_bytes for d in base.devices)))
for note in base.notes:
    st.caption(md(note))

st.subheader("Devices")
if small:
    st.caption("Edit any cell; the cluster is checked again (a duplicate id, an unknown kind...).")
    devices = device_frame(base)
    edited_devices = st.data_editor(
        devices,
        key=f"devices_editor_{digest}",
        num_rows="dynamic",
        hide_index=True,
        column_config={
            "id": st.column_config.NumberColumn("Device", min_value=0, step=1, required=True),
            "kind": st.column_config.SelectboxColumn("Kind", options=list(DEVICE_KINDS), required=True),
            "node": st.column_config.NumberColumn("Node", min_value=0, step=1, required=True),
            "memory_gib": st.column_config.NumberColumn("Memory (GiB)", min_value=0.001, format="%.1f"),
            "compute_share": st.column_config.NumberColumn(
                "Compute share", min_value=0.01, max_value=1.0, format="%.2f"
            ),
        },
    )
else:
    st.caption(
        f"{fmt.count(len(base.devices))} devices, by node: too many to edit cell by cell here. "
        "Save the JSON below, edit it, and load it back."
    )
    edited_devices = devices = None
    st.dataframe(device_summary(base), hide_index=True, width="stretch")

st.subheader("Links")
nodes = len(base.nodes())
per = "per link and node pair" if nodes <= 16 else f"per link, summed over the {fmt.count(nodes)} nodes"
st.caption(
    f"Device pairs counted {per}: a pair takes its explicit link if it has one, else its link group's."
)
st.dataframe(
    link_summary(base),
    hide_index=True,
    width="stretch",
    column_config={
        "Link": st.column_config.TextColumn(width="medium"),
        "Where": st.column_config.TextColumn(width="medium"),
        "Device kinds": st.column_config.TextColumn(width="medium"),
    },
)
if indirect := base.pairs_without_direct_link():
    st.caption(
        f"{fmt.count(indirect)} pairs have no direct link: they talk over the widest path between them."
    )

st.caption("Link groups: one link for every pair of two device kinds, in a node or between nodes.")
groups = group_frame(base)
edited_groups = st.data_editor(
    groups,
    key=f"groups_editor_{digest}",
    num_rows="dynamic",
    hide_index=True,
    column_config={
        "scope": st.column_config.SelectboxColumn("Scope", options=list(SCOPES.values()), required=True),
        "kind_a": st.column_config.SelectboxColumn("Device kind", options=list(DEVICE_KINDS), required=True),
        "kind_b": st.column_config.SelectboxColumn("With", options=list(DEVICE_KINDS), required=True),
        "link": st.column_config.SelectboxColumn("Link", options=list(LINK_KINDS), required=True),
        "bandwidth_gbs": st.column_config.NumberColumn("Bandwidth (GB/s)", min_value=1e-6, format="%.2f"),
        "latency_us": st.column_config.NumberColumn("Latency (us)", min_value=0.0, format="%.1f"),
    },
)
links = edited_links = None
if small or 0 < len(base.links) <= EDITABLE_LINKS:
    st.caption("Explicit links: a pair of devices whose link differs from its group's.")
    links = link_frame(base)
    edited_links = st.data_editor(
        links,
        key=f"links_editor_{digest}",
        num_rows="dynamic",
        hide_index=True,
        column_config={
            "a": st.column_config.NumberColumn("Device", min_value=0, step=1, required=True),
            "b": st.column_config.NumberColumn("To device", min_value=0, step=1, required=True),
            "link": st.column_config.SelectboxColumn("Link", options=list(LINK_KINDS), required=True),
            "bandwidth_gbs": st.column_config.NumberColumn("Bandwidth (GB/s)", min_value=1e-6, format="%.2f"),
            "latency_us": st.column_config.NumberColumn("Latency (us)", min_value=0.0, format="%.1f"),
        },
    )
elif base.links:
    st.caption(f"{fmt.count(len(base.links))} explicit links: too many to edit here; edit the JSON.")

unchanged = (
    edited_groups.equals(groups)
    and (devices is None or edited_devices.equals(devices))
    and (links is None or edited_links.equals(links))
)
cluster, cluster_spec = base, base_spec
if not unchanged:
    document = edited_document(base, edited_devices, edited_groups, edited_links)
    try:
        cluster = cluster_from_json(json.dumps(document), origin="the edited tables")
    except PlannerError as exc:
        error(str(exc))
        st.stop()
    cluster_spec = None  # no longer what the short form says
    st.success(
        f"Edited: {fmt.count(len(cluster.devices))} devices, {fmt.count(len(cluster.link_groups))} link "
        f"groups, {fmt.count(len(cluster.links))} explicit links. Plans use this cluster."
    )

set_cluster_json(cluster.to_json(), cluster_spec)
st.download_button("Save cluster JSON", cluster.to_json(), file_name="cluster.json", key="devices_download")
