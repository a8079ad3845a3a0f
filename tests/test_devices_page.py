"""The Devices page through Streamlit's AppTest: limits before anything is built, grouped tables
for big clusters, one line for a bad upload, and the editors' round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.cluster_view import device_frame, edited_document, group_frame, link_frame
from planner.cluster import cluster_from_json, parse_short_form
from planner.limits import MAX_DEVICES, MAX_DEVICES_PER_NODE
from runtime.supervise import store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
# A cell as the page writes it: a count, a size, a rate or a time, always with its unit.
UNITS = re.compile(r"^[\d,.]+( [kMBT])?$|^[\d,.]+ (B|KiB|MiB|GiB|TiB|GB/s|MB/s|us|ms|s)$|^[\d.]+%$")


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(path))
    return path


def devices_page(spec: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/devices.py")
    at.run()
    if spec is not None:
        at.text_input(key="devices_spec").set_value(spec).run()
    return at


def tables(at: AppTest) -> dict[str, list[dict]]:
    """Read-only tables by their first column's name; editors by their key."""
    out = {}
    for frame in at.dataframe:
        name = frame.key.rsplit("_", 1)[0] if frame.key else frame.value.columns[0]
        out[name] = frame.value.to_dict("records")
    return out


def current_cluster(at: AppTest):
    return cluster_from_json(at.session_state["cluster_json"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("h100:999999", f"device count per node is 999,999; it must be from 1 to {MAX_DEVICES_PER_NODE:,}"),
        ("h100:8x100000", "node count is 100,000"),
        ("cpu:99999999999", "device count per node is 99,999,999,999"),
        ("h100:8x" + "9" * 1200, "characters, over the limit of 1,000"),
    ],
    ids=["per-node", "nodes", "cpu", "long"],
)
def test_a_cluster_over_the_limits_is_one_line_and_the_current_cluster_stays(spec, message):
    at = devices_page("cpu:2")
    before = at.session_state["cluster_json"]
    at.text_input(key="devices_spec").set_value(spec).run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value.replace("\\", "")
    assert "\n" not in at.error[0].value
    assert at.session_state["cluster_json"] == before


def test_512_gpus_are_a_few_grouped_rows_with_units():
    at = devices_page("h100:8x64")
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Devices": "512", "Nodes": "64", "Device kinds": "1", "Memory in all": "40.0 TiB"}
    shown = tables(at)
    assert shown["Nodes"] == [
        {
            "Nodes": "0-63 (64 nodes)",
            "Per node": "8 × h100-80gb",
            "Memory each": "80.0 GiB",
            "Compute share": "100.0%",
            "Devices": "512",
        },
    ]
    links = shown["Link"]
    assert [(r["Where"], r["Pairs"], r["Bandwidth"], r["Latency"]) for r in links] == [
        ("in a node", "1,792", "450 GB/s", "3.0 us"),
        ("between nodes", "129.0 k", "50 GB/s", "5.0 us"),
    ]
    assert "devices_editor" not in shown  # 512 rows are not edited cell by cell
    assert len(shown["groups_editor"]) == 2
    for table in (shown["Nodes"], links):
        for row in table:
            for column in ("Memory each", "Compute share", "Devices", "Pairs", "Bandwidth", "Latency"):
                if column in row:
                    assert UNITS.match(row[column]), (column, row[column])
    assert len(current_cluster(at).devices) == 512


def test_a_few_nodes_show_links_per_node_pair_and_edit_in_units():
    at = devices_page("a100-80gb:2x3+v100-32gb:1x3")
    shown = tables(at)
    where = {(r["Where"], r["Link"][:10], r["Pairs"], r["Device kinds"]) for r in shown["Link"]}
    assert ("in node 1", "PCIe 3.0 x", "2", "a100-80gb, v100-32gb") in where
    assert ("nodes 0 and 2", "InfiniBand", "9", "a100-80gb, v100-32gb") in where
    assert len(shown["Link"]) == 3 * 2 + 3  # per node: NVLink + PCIe; per node pair: InfiniBand
    assert shown["devices_editor"][0] == {
        "id": 0,
        "kind": "a100-80gb",
        "node": 0,
        "memory_gib": 80.0,
        "compute_share": 1.0,
    }
    assert {r["bandwidth_gbs"] for r in shown["groups_editor"]} == {300.0, 15.75, 25.0}  # one V100 a node


def test_an_old_per_pair_upload_is_shown_grouped():
    grouped = parse_short_form("h100:4x2")
    doc = json.loads(grouped.to_json())
    del doc["link_groups"]
    doc["links"] = [
        {"a": a, "b": b, "kind": "nvlink4" if a // 4 == b // 4 else "infiniband-ndr"}
        for a in range(8)
        for b in range(a + 1, 8)
    ]
    at = devices_page("cpu:2")
    at.file_uploader[0].set_value(("old.json", json.dumps(doc).encode(), "application/json"))
    at.run()
    assert not at.exception and not at.error
    rows = {(r["Where"], r["Pairs"], r["Stated by"]) for r in tables(at)["Link"]}
    assert ("nodes 0 and 1", "16", "explicit links") in rows and ("in node 0", "6", "explicit links") in rows
    assert current_cluster(at).links and at.session_state["devices_spec_text"] is None


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("deep.json", b"[" * 5000 + b"]" * 5000, "deep.json: JSON nested 5000 deep, over the limit of 32"),
        ("latin1.json", b'{"name": "caf\xe9"}', "latin1.json: not UTF-8"),
        ("huge.json", None, f"devices: {MAX_DEVICES + 1:,} entries, over the limit of {MAX_DEVICES:,}"),
        ("broken.json", b'{"devices": [', "broken.json: not valid JSON"),
    ],
    ids=["deep", "latin1", "huge", "broken"],
)
def test_a_bad_upload_is_one_line_and_changes_nothing(name, data, message):
    if data is None:
        devices = [
            {"id": i, "kind": "h100", "node": i // 8, "memory_bytes": 2**30} for i in range(MAX_DEVICES + 1)
        ]
        data = json.dumps({"devices": devices}).encode()
    at = devices_page("h100:8")
    before = at.session_state["cluster_json"]
    at.file_uploader[0].set_value((name, data, "application/json"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value.replace("\\", "")
    assert "\n" not in at.error[0].value and "Traceback" not in at.error[0].value
    assert at.session_state["cluster_json"] == before
    at.text_input(key="devices_spec").set_value("h100:2").run()  # typing replaces the file
    assert not at.error and at.file_uploader[0].value is None
    assert [d.kind for d in current_cluster(at).devices] == ["h100-80gb"] * 2


# -- the editors' round trip ------------------------------------------------------------------
def test_unchanged_editors_give_back_the_same_cluster():
    for spec in ("cpu:3", "a100-80gb:2x2+v100-32gb:2x2", "h100:8"):
        c = parse_short_form(spec)
        doc = edited_document(c, device_frame(c), group_frame(c), link_frame(c))
        assert cluster_from_json(json.dumps(doc)) == c, spec


def test_edits_become_overrides_only_where_a_figure_differs_from_its_kind():
    c = parse_short_form("h100:4x2")
    groups = group_frame(c)
    groups.loc[0, "link"] = "pcie5"  # a new kind, its figures left as shown: they follow the kind
    groups.loc[1, "bandwidth_gbs"] = 25.0  # half the InfiniBand: an override
    links = link_frame(c)
    links.loc[0] = {"a": 0, "b": 5, "link": "nvlink4", "bandwidth_gbs": 450.0, "latency_us": 7.5}
    devices = device_frame(c)
    devices.loc[3, "memory_gib"] = 40.0
    edited = cluster_from_json(json.dumps(edited_document(c, devices, groups, links)))
    same, between = edited.link_groups
    assert (same.kind, same.bandwidth, same.latency) == ("pcie5", None, None)
    assert (between.kind, between.bandwidth, between.latency) == ("infiniband-ndr", 25e9, None)
    link = edited.links[0]
    assert (link.a, link.b, link.kind, link.bandwidth, link.latency) == (0, 5, "nvlink4", None, 7.5e-6)
    assert edited.path(0, 1) == (5e-6, 63e9) and edited.path(0, 4) == (5e-6, 25e9)
    assert edited.path(0, 5) == pytest.approx((7.5e-6, 450e9))
    assert [d.memory_bytes for d in edited.devices][2:5] == [80 * 2**30, 40 * 2**30, 80 * 2**30]


def test_a_bad_edit_is_named_by_validation():
    c = parse_short_form("h100:2")
    links = link_frame(c)
    links.loc[0] = {"a": 0, "b": 9, "link": "pcie5", "bandwidth_gbs": None, "latency_us": None}
    with pytest.raises(Exception, match="links\\[0\\] connects device 9, which does not exist"):
        cluster_from_json(json.dumps(edited_document(c, device_frame(c), group_frame(c), links)), "the edits")
