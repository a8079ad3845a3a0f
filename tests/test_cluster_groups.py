"""Link groups: the same answers as the per-pair form, pair by pair; limits on size; old
per-pair clusters and plans still load and price the same."""

from __future__ import annotations

import itertools
import json
import random

import networkx as nx
import pytest

from planner.cluster import PRESETS, Cluster, cluster_from_json, parse_short_form, resolve_cluster
from planner.cost.price import price
from planner.devices import DEVICE_KINDS, LINK_KINDS, slower_link
from planner.errors import ClusterError
from planner.limits import MAX_DEVICES, MAX_DEVICES_PER_NODE, MAX_LINKS, MAX_NODES
from planner.plan import plan_from_json
from planner.search.build import make_plan
from tests.handmade import chain

MIXED = [
    "a100-80gb:2x3+v100-32gb:2x3",
    "h100:4x2+l4:2x2+cpu:1x2",
    "cpu:2x2",
    "l4:3x2",
    "h100:8x4",
    "rtx4090:1x3",
]
SHORT_FORMS = [short for short, _ in PRESETS.values() if short] + MIXED


def per_pair_document(cluster: Cluster) -> dict:
    """The cluster as it was written before link groups: one link per pair, by the catalog's rule
    (a kind's own link in a node, the slower host bus between kinds, the slower fabric between
    nodes), and no ``link_groups`` key."""
    links = []
    for a, b in itertools.combinations(cluster.devices, 2):
        ka, kb = DEVICE_KINDS[a.kind], DEVICE_KINDS[b.kind]
        if a.node != b.node:
            kind = slower_link(ka.inter_node_link, kb.inter_node_link)
        elif ka.id == kb.id:
            kind = ka.intra_node_link
        else:
            kind = slower_link(ka.host_link, kb.host_link)
        links.append({"a": a.id, "b": b.id, "kind": kind})
    doc = json.loads(cluster.to_json())
    del doc["link_groups"]
    return {**doc, "links": links}


@pytest.mark.parametrize("spec", SHORT_FORMS)
def test_groups_give_the_per_pair_answer_for_every_pair(spec):
    grouped = parse_short_form(spec)
    pairwise = cluster_from_json(json.dumps(per_pair_document(grouped)))
    assert grouped.links == [] and grouped.link_groups and pairwise.link_groups == []
    for a, b in itertools.permutations([d.id for d in grouped.devices], 2):
        assert grouped.path(a, b) == pairwise.path(a, b), (a, b)
        assert grouped.direct_link(a, b)[:3] == pairwise.direct_link(a, b)[:3], (a, b)
    assert grouped.link_kinds() == pairwise.link_kinds()
    assert sum(r.pairs for r in grouped.link_table()) == sum(r.pairs for r in pairwise.link_table())


def oracle(doc: dict) -> nx.Graph:
    """Every pair's direct link written out (explicit first, then its group), as a graph."""
    g = nx.Graph()
    devices = doc["devices"]
    g.add_nodes_from(d["id"] for d in devices)
    explicit = {frozenset((lk["a"], lk["b"])): lk for lk in doc["links"]}
    groups = {(gr["scope"], frozenset(gr["device_kinds"])): gr for gr in doc["link_groups"]}
    for a, b in itertools.combinations(devices, 2):
        scope = "same_node" if a["node"] == b["node"] else "between_nodes"
        spec = explicit.get(frozenset((a["id"], b["id"]))) or groups.get(
            (scope, frozenset((a["kind"], b["kind"])))
        )
        if spec is not None:
            kind = LINK_KINDS[spec["kind"]]
            g.add_edge(
                a["id"],
                b["id"],
                bandwidth=spec.get("bandwidth") or kind.bandwidth,
                latency=spec.get("latency", kind.latency),
            )
    return g


def widest(g: nx.Graph, a: int, b: int) -> tuple[float, float]:
    """(latency, bandwidth): the most bandwidth at the narrowest hop, then the least latency
    over links that wide."""
    if g.has_edge(a, b):
        return g.edges[a, b]["latency"], g.edges[a, b]["bandwidth"]
    tree = nx.maximum_spanning_tree(g, weight="bandwidth")
    hops = nx.shortest_path(tree, a, b)
    width = min(tree.edges[u, v]["bandwidth"] for u, v in itertools.pairwise(hops))
    wide = g.edge_subgraph([(u, v) for u, v, w in g.edges(data="bandwidth") if w >= width])
    return nx.shortest_path_length(wide, a, b, weight="latency"), width


def random_document(rng: random.Random) -> dict:
    kinds = rng.sample(["h100-80gb", "a100-80gb", "l4", "cpu"], rng.randint(1, 3))
    devices = []
    for node in range(rng.randint(1, 4)):
        for _ in range(rng.randint(1, 4)):
            devices.append(
                {"id": len(devices), "kind": rng.choice(kinds), "node": node, "memory_bytes": 2**30}
            )
    link_kinds = list(LINK_KINDS)
    groups = []
    for scope in ("same_node", "between_nodes"):
        for pair in itertools.combinations_with_replacement(sorted(kinds), 2):
            if rng.random() < 0.5:
                group = {"scope": scope, "device_kinds": list(pair), "kind": rng.choice(link_kinds)}
                if rng.random() < 0.3:
                    group["bandwidth"] = rng.choice([1e9, 5e9, 50e9])
                if rng.random() < 0.3:
                    group["latency"] = rng.choice([0.0, 1e-6, 1e-4])
                groups.append(group)
    pairs = list(itertools.combinations(range(len(devices)), 2))
    links = []
    for a, b in rng.sample(pairs, min(len(pairs), rng.randint(0, 4))):
        link = {"a": a, "b": b, "kind": rng.choice(link_kinds)}
        if rng.random() < 0.3:
            link["bandwidth"] = rng.choice([1e9, 5e9, 50e9])
        links.append(link)
    return {"devices": devices, "links": links, "link_groups": groups}


def test_mixed_groups_and_links_match_every_pair_written_out():
    rng = random.Random(17)
    checked = refused = 0
    for _ in range(300):
        doc = random_document(rng)
        g = oracle(doc)
        if not nx.is_connected(g):
            with pytest.raises(
                ClusterError, match=f"not all linked: {nx.number_connected_components(g)} separate"
            ):
                cluster_from_json(json.dumps(doc))
            refused += 1
            continue
        cluster = cluster_from_json(json.dumps(doc))
        assert cluster.topology.parts() == [sorted(g)]
        for a, b in itertools.permutations(g, 2):
            assert cluster.path(a, b) == pytest.approx(widest(g, a, b), rel=1e-12, abs=1e-15), (doc, a, b)
            edge = g.edges[a, b] if g.has_edge(a, b) else None
            direct = cluster.direct_link(a, b)
            assert (direct is None) == (edge is None)
        checked += 1
    assert checked > 100 and refused > 20  # both kinds of cluster were tried


def test_connectivity_between_nodes_is_found_from_groups_alone():
    # Two kinds that meet only between nodes: a on node 0, b on node 1, a and b on node 2.
    devices = [("a100-80gb", 0), ("l4", 1), ("a100-80gb", 2), ("l4", 2)]
    doc = {
        "devices": [
            {"id": i, "kind": k, "node": n, "memory_bytes": 2**30} for i, (k, n) in enumerate(devices)
        ],
        "links": [],
        "link_groups": [{"scope": "between_nodes", "device_kinds": ["l4", "a100-80gb"], "kind": "pcie4"}],
    }
    cluster = cluster_from_json(json.dumps(doc))
    # No link in node 2 and none between the L4s: 2 -> 1 -> 0 -> 3, three PCIe hops.
    assert cluster.path(2, 3) == pytest.approx((15e-6, 31.5e9))
    doc["devices"] = doc["devices"][2:]  # node 2 alone: its two devices have no link
    with pytest.raises(ClusterError, match="not all linked: 2 separate groups"):
        cluster_from_json(json.dumps(doc))


def test_explicit_links_win_over_their_group_and_are_counted_apart():
    c = parse_short_form("h100:4x2")
    doc = json.loads(c.to_json())
    doc["links"] = [
        {"a": 0, "b": 4, "kind": "ethernet-100g"},
        {"a": 1, "b": 2, "kind": "pcie5", "latency": 0},
    ]
    edited = cluster_from_json(json.dumps(doc))
    assert edited.path(0, 4) == (20e-6, 12.5e9) and edited.path(1, 2) == (0.0, 63e9)
    assert edited.path(0, 5) == c.path(0, 5) and edited.direct_link(0, 4).source == "link"
    rows = {(r.kind, r.source, r.nodes): r.pairs for r in edited.link_table()}
    assert rows[("ethernet-100g", "link", (0, 1))] == 1 and rows[("infiniband-ndr", "group", (0, 1))] == 15
    assert rows[("pcie5", "link", (0, 0))] == 1 and rows[("nvlink4", "group", (0, 0))] == 5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("h100:999999", f"device count per node is 999,999; it must be from 1 to {MAX_DEVICES_PER_NODE:,}"),
        ("h100:8x100000", f"node count is 100,000; it must be from 1 to {MAX_NODES:,}"),
        ("cpu:99999999999", "device count per node is 99,999,999,999"),
        ("h100:1024x4096", f"device count in all is 4,194,304; it must be from 1 to {MAX_DEVICES:,}"),
        ("h100:600+l4:600", "device count per node is 1,200"),
        ("h100:" + "9" * 2000, "2,005 characters, over the limit of 1,000"),
    ],
    ids=["per-node", "nodes", "cpu", "in-all", "per-node-mixed", "long"],
)
def test_cluster_sizes_over_the_limits_are_one_line_errors(spec, message):
    with pytest.raises(ClusterError, match=message) as caught:
        resolve_cluster(spec)
    assert "\n" not in str(caught.value)


def _devices(n: int, per_node: int = 8) -> list[dict]:
    return [{"id": i, "kind": "h100", "node": i // per_node, "memory_bytes": 2**30} for i in range(n)]


def _over(limit: str) -> tuple[dict, str]:
    """A cluster document one over ``limit``, and the message that names it."""
    if limit == "devices":
        return {
            "devices": _devices(MAX_DEVICES + 1)
        }, f"devices: {MAX_DEVICES + 1:,} entries, over the limit of"
    if limit == "links":
        links = [{"a": 0, "b": 1, "kind": "pcie4"}] * (MAX_LINKS + 1)
        return {"devices": _devices(2), "links": links}, f"links: {MAX_LINKS + 1:,} entries, over the limit"
    if limit == "nodes":
        return {"devices": _devices(MAX_NODES + 1, per_node=1)}, f"{MAX_NODES + 1:,} nodes, over the limit of"
    doc = {"devices": _devices(MAX_DEVICES_PER_NODE + 1, per_node=10**6)}
    return doc, f"node 0 holds {MAX_DEVICES_PER_NODE + 1:,} devices, over the limit of"


@pytest.mark.parametrize("limit", ["devices", "links", "nodes", "devices per node"])
def test_cluster_json_over_the_limits_is_refused_naming_the_limit(limit):
    doc, message = _over(limit)
    with pytest.raises(ClusterError, match=message):
        cluster_from_json(json.dumps(doc), origin="big.json")


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"scope": "rack", "device_kinds": ["h100", "h100"], "kind": "nvlink4"}, "link_groups.0.scope"),
        ({"scope": "same_node", "device_kinds": ["h100"], "kind": "nvlink4"}, "link_groups.0.device_kinds"),
        (
            {"scope": "same_node", "device_kinds": ["h100", "tpu"], "kind": "nvlink4"},
            "unknown device kind 'tpu'",
        ),
        (
            {"scope": "same_node", "device_kinds": ["h100", "h100"], "kind": "warp"},
            "unknown link kind 'warp'",
        ),
        (
            {"scope": "same_node", "device_kinds": ["h100", "h100"], "kind": "nvlink4", "bandwidth": -1},
            "bandwidth",
        ),
    ],
)
def test_bad_link_groups_name_the_field(group, message):
    doc = {"devices": _devices(2), "link_groups": [group]}
    with pytest.raises(ClusterError, match=message):
        cluster_from_json(json.dumps(doc))


def test_a_repeated_group_is_refused_and_kind_aliases_are_the_same_kind():
    group = {"scope": "same_node", "device_kinds": ["h100", "h100-80gb"], "kind": "nvlink4"}
    c = cluster_from_json(json.dumps({"devices": _devices(2), "link_groups": [group]}))
    assert c.link_groups[0].device_kinds == ("h100-80gb", "h100-80gb") and c.path(0, 1) == (3e-6, 450e9)
    with pytest.raises(ClusterError, match=r"link_groups\[1\] repeats the same_node group of h100-80gb"):
        cluster_from_json(json.dumps({"devices": _devices(2), "link_groups": [group, group]}))


def test_a_per_pair_cluster_json_round_trips_and_a_per_pair_plan_prices_the_same():
    grouped = parse_short_form("a100-80gb:2x2")
    old = per_pair_document(grouped)
    assert "link_groups" not in old
    loaded = cluster_from_json(json.dumps(old))
    assert len(loaded.links) == 6 and cluster_from_json(loaded.to_json()) == loaded
    graph = chain([1, 2, 3, 4], edge_bytes=1e6, params=[4e6] * 4)
    plan = make_plan(
        graph,
        grouped,
        strategy="hybrid",
        dp_degree=2,
        pp_degree=2,
        global_batch=8,
        micro_batches=2,
        schedule="1f1b",
    )
    doc = json.loads(plan.model_dump_json())
    doc["cluster"] = old  # a plan written before link groups: every pair listed
    old_plan = plan_from_json(json.dumps(doc))
    assert old_plan.cluster.links and not old_plan.cluster.link_groups
    assert price(graph, old_plan.cluster, old_plan) == price(graph, grouped, plan)
