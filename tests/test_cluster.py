"""Clusters: the catalog, short forms, presets, detection, strict JSON."""

import itertools
import json
import os

import pytest

from planner.cluster import (
    PRESETS,
    Cluster,
    catalog,
    cluster_from_json,
    detect_local,
    load_cluster,
    parse_short_form,
    resolve_cluster,
    save_cluster,
)
from planner.devices import DEVICE_KINDS, LINK_KINDS, device_kind
from planner.errors import ClusterError

CORES = len(os.sched_getaffinity(0))


def test_catalog_has_every_kind_with_sources():
    for kind in [
        "h100",
        "h100-80gb",
        "a100-40gb",
        "a100-80gb",
        "v100-16gb",
        "v100-32gb",
        "l4",
        "rtx4090",
        "h200",
        "cpu",
    ]:
        k = device_kind(kind)
        assert k.peak_flops["float32"] > 0 and k.memory_bandwidth > 0
        assert set(k.sources) == {"memory_bytes", "memory_bandwidth", "peak_flops"}
        assert all(k.sources.values())
    assert device_kind("h100").memory_bytes == 80 * 2**30
    assert device_kind("h200").memory_bytes == 141 * 2**30 and device_kind("h200").memory_bandwidth == 4.8e12
    for k in DEVICE_KINDS.values():  # every GPU states each dtype's peak, or why it has none
        if k.id != "cpu":
            assert {"float32", "tf32", "float16"} <= set(k.peak_flops), k.id
            assert "bfloat16" in k.peak_flops or "no bf16" in k.sources["peak_flops"], k.id
    assert all(link.source and link.bandwidth > 0 for link in LINK_KINDS.values())
    assert set(catalog()["device_kinds"]) == set(DEVICE_KINDS)


@pytest.mark.parametrize(
    ("bare", "choices"), [("a100", "a100-40gb, a100-80gb"), ("v100", "v100-16gb, v100-32gb")]
)
def test_ambiguous_kind_names_the_choices(bare, choices):
    with pytest.raises(ClusterError, match=f"'{bare}' is ambiguous: {choices}"):
        device_kind(bare)
    with pytest.raises(ClusterError, match="ambiguous"):
        resolve_cluster(f"{bare}:2")


def test_one_node_of_eight_h100_on_nvlink():
    c = resolve_cluster("h100:8")
    assert [d.kind for d in c.devices] == ["h100-80gb"] * 8
    assert {d.node for d in c.devices} == {0}
    assert c.links == [] and [(g.scope, g.kind) for g in c.link_groups] == [("same_node", "nvlink4")]
    assert [(r.kind, r.pairs) for r in c.link_table()] == [("nvlink4", 28)]
    assert c.path(0, 7) == (3e-6, 450e9)


def test_four_nodes_over_infiniband():
    c = resolve_cluster("a100-80gb:8x4")
    assert len(c.devices) == 32 and c.nodes() == [0, 1, 2, 3]
    kinds = {
        (c.device(a).node == c.device(b).node, c.direct_link(a, b).kind)
        for a, b in itertools.combinations(range(32), 2)
    }
    assert kinds == {(True, "nvlink3"), (False, "infiniband-hdr")}


def test_mixed_node_meets_over_the_slower_host_bus():
    c = resolve_cluster("a100-80gb:4+v100-32gb:4")
    assert [d.kind for d in c.devices] == ["a100-80gb"] * 4 + ["v100-32gb"] * 4
    assert [d.memory_bytes for d in c.devices] == [80 * 2**30] * 4 + [32 * 2**30] * 4
    assert c.direct_link(0, 4).kind == c.direct_link(4, 0).kind == "pcie3"
    assert c.peak_flops(0, "bfloat16") == 312e12
    with pytest.raises(ClusterError, match="v100-32gb has no bfloat16 peak"):
        c.peak_flops(4, "bfloat16")


def test_cpu_ranks_beyond_the_cores_record_that_they_share_them():
    c = resolve_cluster(f"cpu:{2 * CORES}")
    assert all(d.compute_share == pytest.approx(0.5) for d in c.devices)
    assert any("share" in note for note in c.notes)
    assert c.link_kinds() == {"loopback"}
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert sum(d.memory_bytes for d in c.devices) <= total
    assert resolve_cluster(f"cpu:{CORES}").notes == []


def test_cpu_nodes_talk_over_ethernet():
    c = resolve_cluster("cpu:1x2")
    assert c.direct_link(0, 1).kind == "ethernet-10g" and c.link_kinds() == {"ethernet-10g"}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_resolve(name):
    c = resolve_cluster(name)
    assert c.devices and c.name in (name, "local")


def test_local_detection_without_cuda_is_one_cpu_rank_per_core():
    c = detect_local()
    assert [d.kind for d in c.devices] == ["cpu"] * CORES


def test_widest_path_when_there_is_no_direct_link():
    c = Cluster(
        devices=[{"id": i, "kind": "l4", "node": 0, "memory_bytes": 2**30} for i in range(3)],
        links=[
            {"a": 0, "b": 1, "kind": "pcie4"},
            {"a": 1, "b": 2, "kind": "ethernet-100g"},
        ],
    )
    assert c.path(0, 2) == (5e-6 + 20e-6, 12.5e9)


def test_json_round_trips_exactly(tmp_path):
    c = resolve_cluster("a100-80gb:2+v100-16gb:1")
    path = tmp_path / "c.json"
    save_cluster(c, path)
    again = load_cluster(path)
    assert again == c
    assert again.to_json() == c.to_json()
    assert resolve_cluster(str(path)) == c


def _doc(**changes):
    doc = {
        "devices": [
            {"id": 0, "kind": "l4", "node": 0, "memory_bytes": 2**30},
            {"id": 1, "kind": "l4", "node": 0, "memory_bytes": 2**30},
        ],
        "links": [{"a": 0, "b": 1, "kind": "pcie4"}],
    }
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_doc(colour="red"), "colour: unknown key"),
        (_doc(devices=[{"id": 0, "kind": "l4", "node": 0, "memory_bytes": -5}]), "devices.0.memory_bytes"),
        (_doc(devices=[{"id": -1, "kind": "l4", "node": 0, "memory_bytes": 5}], links=[]), "devices.0.id"),
        (
            _doc(links=[{"a": 0, "b": 7, "kind": "pcie4"}]),
            "links\\[0\\] connects device 7, which does not exist",
        ),
        (_doc(links=[{"a": 0, "b": 0, "kind": "pcie4"}]), "link from device 0 to itself"),
        (_doc(links=[{"a": 0, "b": 1, "kind": "warp"}]), "unknown link kind 'warp'"),
        (_doc(links=[{"a": 0, "b": 1, "kind": "pcie4", "bandwidth": 0}]), "links.0.bandwidth"),
        (_doc(links=[]), "not all linked"),
        (_doc(devices=[{"id": 0, "kind": "a100", "node": 0, "memory_bytes": 5}], links=[]), "ambiguous"),
        (_doc(schema_version=2), "schema_version 2 is newer"),
        (_doc(devices=[]), "devices: List should have at least 1 item"),
        ('{"devices": [{"id": 0, "kind": "l4", "node": 0, "memory_bytes": NaN}]}', "NaN is not allowed"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_cluster_json_names_the_field(text, message):
    with pytest.raises(ClusterError, match=message):
        cluster_from_json(text)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nothing", "not a preset"),
        ("h100:0", "needs at least one device"),
        ("h100:8y2", "not KIND:PER_NODE"),
        ("h100:2x2+l4:2", "need one node count"),
        ("tpu:4", "unknown device kind 'tpu'"),
        ("missing.json", "cannot read cluster file 'missing.json'"),
    ],
)
def test_bad_cluster_specs(spec, message):
    with pytest.raises(ClusterError, match=message):
        resolve_cluster(spec)


def test_short_form_states_groups_not_pairs():
    c = parse_short_form("l4:3x2")
    assert c.links == [] and len(c.link_groups) == 2
    assert sum(r.pairs for r in c.link_table()) == 15 and c.pairs_without_direct_link() == 0
    big = parse_short_form("h100:8x64")
    assert len(big.link_groups) == 2 and len(big.to_json()) < 100_000  # 130,816 pairs, not listed
    assert [(r.kind, r.pairs) for r in big.link_table()] == [("nvlink4", 1_792), ("infiniband-ndr", 129_024)]


def test_short_form_sets_of_nodes_of_other_kinds():
    c = parse_short_form("h100:8x2,a100-80gb:8x3")
    assert [sum(d.node == n for d in c.devices) for n in c.nodes()] == [8] * 5
    assert {d.kind for d in c.devices if d.node < 2} == {"h100-80gb"}
    assert {d.kind for d in c.devices if d.node >= 2} == {"a100-80gb"}
    # Each kind's own link inside its nodes; between an H100 node and an A100 node, the
    # slower fabric of the two (the A100's HDR InfiniBand); no host bus: they share no node.
    assert c.path(0, 1).bandwidth == parse_short_form("h100:8").path(0, 1).bandwidth
    assert c.path(16, 17).bandwidth == parse_short_form("a100-80gb:8").path(0, 1).bandwidth
    assert c.path(0, 16) == parse_short_form("a100-80gb:8x2").path(0, 8)
    assert not any(g.scope == "same_node" and len(set(g.device_kinds)) == 2 for g in c.link_groups)
    # The limits count the sets together.
    with pytest.raises(ClusterError, match="node count is 4,100"):
        parse_short_form("h100:8x4000,a100-80gb:8x100")
    with pytest.raises(ClusterError, match="is not KIND:PER_NODE"):
        parse_short_form("h100:8x2,")
