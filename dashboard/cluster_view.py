"""The Devices page's tables: devices by node, links by kind and node pair, and the editors.

A cluster of 32,768 GPUs is a few rows here, never one per device or per device pair: the
device table groups consecutive nodes that hold the same devices, and the link table
counts pairs per link, scope, device kinds and (for a few nodes) node pair, from the link
groups without listing pairs. Small clusters get editors whose figures are in the units
people read (GiB, GB/s, us); `edited_document` turns the edits back into a cluster document.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from dashboard import format as fmt
from planner.cluster import Cluster
from planner.devices import LINK_KINDS, link_kind
from planner.topology import SAME_NODE

GiB = 2**30
GB = 1e9
EDITABLE_DEVICES = 64  # rows a person edits cell by cell; beyond that, edit the JSON
EDITABLE_LINKS = 256
SCOPES = {"same_node": "in a node", "between_nodes": "between nodes"}


# -- read-only summaries -------------------------------------------------------------------------
def device_summary(cluster: Cluster) -> pd.DataFrame:
    """One row per run of consecutive nodes with the same devices, and per device kind there.

    >>> from planner.cluster import parse_short_form
    >>> device_summary(parse_short_form("h100:8x64")).to_dict("records")[0]["Nodes"]
    '0-63 (64 nodes)'
    """
    per_node: dict[int, dict[tuple[str, int, float], int]] = {}
    for d in cluster.devices:
        counts = per_node.setdefault(d.node, {})
        key = (d.kind, d.memory_bytes, d.compute_share)
        counts[key] = counts.get(key, 0) + 1
    runs: list[tuple[int, int, tuple]] = []  # (first node, last node, devices per node)
    for node in sorted(per_node):
        signature = tuple(sorted(per_node[node].items()))
        if runs and runs[-1][2] == signature and runs[-1][1] == node - 1:
            runs[-1] = (runs[-1][0], node, signature)
        else:
            runs.append((node, node, signature))
    rows = []
    for first, last, signature in runs:
        nodes = f"{first}" if first == last else f"{first}-{last} ({fmt.count(last - first + 1)} nodes)"
        for (kind, memory, share), n in signature:
            rows.append(
                {
                    "Nodes": nodes,
                    "Per node": f"{fmt.count(n)} × {kind}",
                    "Memory each": fmt.size(memory),
                    "Compute share": fmt.percent(share),
                    "Devices": fmt.count(n * (last - first + 1)),
                }
            )
    return pd.DataFrame(rows, columns=["Nodes", "Per node", "Memory each", "Compute share", "Devices"])


def link_summary(cluster: Cluster) -> pd.DataFrame:
    """Device pairs per link, scope and node pair (summed over nodes past 16), with the device
    kinds they join."""
    merged: dict[tuple, list] = {}  # one row per link and node pair, whatever the device kinds
    for r in cluster.link_table():
        key = (r.kind, r.bandwidth, r.latency, r.source, r.scope, r.nodes)
        row = merged.setdefault(key, [0, set()])
        row[0] += r.pairs
        row[1].update(r.device_kinds)
    rows = []
    for (kind, bandwidth, latency, source, scope, nodes), (pairs, kinds) in merged.items():
        if nodes is None:
            where = SCOPES[scope]
        elif scope == SAME_NODE:
            where = f"in node {nodes[0]}"
        else:
            where = f"nodes {nodes[0]} and {nodes[1]}"
        rows.append(
            {
                "Link": LINK_KINDS[kind].name.split(" (")[0],  # the catalog's note in brackets left out
                "Where": where,
                "Device kinds": ", ".join(sorted(kinds)),
                "Pairs": fmt.count(pairs),
                "Bandwidth": fmt.bandwidth(bandwidth),
                "Latency": fmt.duration(latency),
                "Stated by": "link group" if source == "group" else "explicit links",
            }
        )
    columns = ["Link", "Where", "Device kinds", "Pairs", "Bandwidth", "Latency", "Stated by"]
    return pd.DataFrame(rows, columns=columns)


# -- editors (small clusters) --------------------------------------------------------------------
def device_frame(cluster: Cluster) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": d.id,
                "kind": d.kind,
                "node": d.node,
                "memory_gib": d.memory_bytes / GiB,
                "compute_share": d.compute_share,
            }
            for d in cluster.devices
        ],
        columns=["id", "kind", "node", "memory_gib", "compute_share"],
    )


def group_frame(cluster: Cluster) -> pd.DataFrame:
    rows = []
    for g in cluster.link_groups:
        spec = link_kind(g.kind)
        rows.append(
            {
                "scope": SCOPES[g.scope],
                "kind_a": g.device_kinds[0],
                "kind_b": g.device_kinds[1],
                "link": g.kind,
                "bandwidth_gbs": (g.bandwidth or spec.bandwidth) / GB,
                "latency_us": (spec.latency if g.latency is None else g.latency) * 1e6,
            }
        )
    return pd.DataFrame(rows, columns=["scope", "kind_a", "kind_b", "link", "bandwidth_gbs", "latency_us"])


def link_frame(cluster: Cluster) -> pd.DataFrame:
    rows = []
    for lk in cluster.links:
        spec = link_kind(lk.kind)
        rows.append(
            {
                "a": lk.a,
                "b": lk.b,
                "link": lk.kind,
                "bandwidth_gbs": (lk.bandwidth or spec.bandwidth) / GB,
                "latency_us": (spec.latency if lk.latency is None else lk.latency) * 1e6,
            }
        )
    return pd.DataFrame(rows, columns=["a", "b", "link", "bandwidth_gbs", "latency_us"])


def edited_document(
    cluster: Cluster,
    devices: pd.DataFrame | None,
    groups: pd.DataFrame,
    links: pd.DataFrame | None,
) -> dict[str, Any]:
    """The cluster document with the editors' rows (None: that table was not editable).

    A figure equal to its link kind's is no override; one left as it was when the kind
    changed is the new kind's. Memory left as shown keeps its exact bytes.
    """
    doc = cluster.model_dump(mode="json")
    if devices is not None:
        before = {i: d for i, d in enumerate(cluster.devices)}
        doc["devices"] = []
        for index, row in _rows(devices):
            old = before.get(index)
            memory = row.pop("memory_gib", None)
            if memory is not None:
                same = old is not None and math.isclose(memory, old.memory_bytes / GiB, rel_tol=1e-12)
                row["memory_bytes"] = old.memory_bytes if same else round(memory * GiB)
            doc["devices"].append(row)
    old_groups = dict(enumerate(group_frame(cluster).to_dict("records")))
    doc["link_groups"] = []
    for index, row in _rows(groups):
        scope = {v: k for k, v in SCOPES.items()}.get(row.pop("scope", None))
        kinds = [row.pop("kind_a", None), row.pop("kind_b", None)]
        group = {"scope": scope, "device_kinds": kinds, **_figures(row, old_groups.get(index))}
        doc["link_groups"].append({k: v for k, v in group.items() if v is not None})
    if links is not None:
        old_links = dict(enumerate(link_frame(cluster).to_dict("records")))
        doc["links"] = [
            {"a": row.get("a"), "b": row.get("b"), **_figures(row, old_links.get(index))}
            for index, row in _rows(links)
        ]
        doc["links"] = [{k: v for k, v in lk.items() if v is not None} for lk in doc["links"]]
    return doc


def _figures(row: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """Link kind and bandwidth/latency overrides (bytes/s, s) from an editor row."""
    kind = row.get("link")
    out: dict[str, Any] = {"kind": kind, "bandwidth": None, "latency": None}
    if kind not in LINK_KINDS:
        return out  # validation names the unknown kind
    spec = LINK_KINDS[kind]
    kept = old is not None and old["link"] != kind  # the kind changed: figures left as shown follow it
    for field, default in (("bandwidth_gbs", spec.bandwidth), ("latency_us", spec.latency)):
        value = row.get(field)
        if value is None or (kept and math.isclose(value, old[field], rel_tol=1e-12)):
            continue
        figure = value * GB if field == "bandwidth_gbs" else value / 1e6  # 7.5 us is 7.5e-6 s exactly
        if not math.isclose(figure, default, rel_tol=1e-9, abs_tol=1e-15):
            out[field.split("_")[0]] = figure
    return out


def _rows(frame: pd.DataFrame):
    """(original row index, row without empty cells, whole numbers as ints)."""
    for index, record in zip(frame.index, frame.to_dict("records"), strict=True):
        row = {}
        for k, v in record.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue  # an empty cell of a new row: the default applies, or validation names it
            if k in ("id", "node", "a", "b") and isinstance(v, float) and v.is_integer():
                v = int(v)
            row[k] = v.item() if hasattr(v, "item") else v
        yield (index if isinstance(index, int) else -1), row
