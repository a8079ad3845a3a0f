"""Clusters: devices (kind, node) and the links between them.

A cluster can be named three ways wherever one is asked for (`resolve_cluster`):
- a preset name (`PRESETS`, including ``local``: this machine, detected);
- a cluster JSON file (strictly validated: unknown keys, negative sizes, a link to a
  missing device are errors naming the field);
- the short form ``KIND:PER_NODE[xNODES]``, with ``+`` joining groups inside one node and
  ``,`` joining sets of nodes: ``h100:8``, ``a100-80gb:8x4``, ``a100-80gb:4+v100-32gb:4``,
  ``h100:8x2,a100-80gb:8x4`` (two H100 nodes, then four A100 nodes), ``cpu:4``.

Links are stated as link groups (one link kind for every pair of two device kinds, inside
one node or between nodes) and, where a pair differs, explicit per-pair links, which win.
A cluster costs what its description costs: 512 GPUs are 512 devices and two groups, not
130,816 pairs (`planner.topology` resolves a pair without listing them). Device and node
counts are checked against `planner.limits` before anything is built.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from planner.devices import (
    DEVICE_KINDS,
    DeviceKind,
    LinkKind,
    device_kind,
    link_kind,
    slower_link,
)
from planner.errors import ClusterError
from planner.limits import (
    MAX_DEVICES,
    MAX_DEVICES_PER_NODE,
    MAX_LINK_GROUPS,
    MAX_LINKS,
    MAX_NODES,
    WHY_CLUSTER_SIZE,
    WHY_DEVICES_PER_NODE,
    check_range,
    check_text,
)
from planner.strict import StrictModel, explain, parse_document, read_document
from planner.topology import BETWEEN_NODES, SAME_NODE, DirectLink, LinkCost, LinkRow, Topology

SCHEMA_VERSION = 1


class Device(StrictModel):
    id: int = Field(ge=0, description="Rank-independent device id, unique in the cluster.")
    kind: str = Field(description="Device kind id from the catalog, e.g. 'h100-80gb'.")
    node: int = Field(ge=0, description="Node (host) index; devices on one node share a host.")
    memory_bytes: int = Field(gt=0, description="Memory available to this device.")
    compute_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Fraction of the kind's peak this device gets (< 1 when CPU ranks share cores).",
    )

    @model_validator(mode="after")
    def _known_kind(self) -> Device:
        device_kind(self.kind)  # raises ClusterError naming the choices
        return self


class Link(StrictModel):
    a: int = Field(ge=0)
    b: int = Field(ge=0)
    kind: str = Field(description="Link kind id from the catalog, e.g. 'nvlink4'.")
    bandwidth: float | None = Field(default=None, gt=0, description="Bytes/s; overrides the kind.")
    latency: float | None = Field(default=None, ge=0, description="Seconds; overrides the kind.")

    @model_validator(mode="after")
    def _check(self) -> Link:
        if self.a == self.b:
            raise ValueError(f"link from device {self.a} to itself")
        link_kind(self.kind)
        return self


class LinkGroup(StrictModel):
    """One link kind for every pair of devices of two kinds, on one node or between nodes."""

    scope: Literal["same_node", "between_nodes"] = Field(
        description="'same_node': pairs on one node; 'between_nodes': pairs on different nodes."
    )
    device_kinds: tuple[str, str] = Field(
        strict=False,
        description="The two device kinds the pairs join (equal for pairs of one kind), in any order.",
    )
    kind: str = Field(description="Link kind id from the catalog, e.g. 'nvlink4'.")
    bandwidth: float | None = Field(default=None, gt=0, description="Bytes/s; overrides the kind.")
    latency: float | None = Field(default=None, ge=0, description="Seconds; overrides the kind.")

    @field_validator("device_kinds")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, str]) -> tuple[str, str]:
        a, b = sorted(device_kind(k).id for k in kinds)  # raises ClusterError naming the choices
        return a, b

    @model_validator(mode="after")
    def _check(self) -> LinkGroup:
        link_kind(self.kind)
        return self


class Cluster(StrictModel):
    """Devices and links. Validated on construction; JSON round-trips exactly."""

    schema_version: int = SCHEMA_VERSION
    name: str = ""
    devices: list[Device] = Field(min_length=1)
    links: list[Link] = Field(
        default_factory=list, description="Explicit per-pair links; a pair's link wins over its group's."
    )
    link_groups: list[LinkGroup] = Field(
        default_factory=list,
        description="One link kind per scope (same node, between nodes) and pair of device kinds.",
    )
    notes: list[str] = Field(default_factory=list)
    overhead_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="Per device kind: memory a rank's process holds before the model (CUDA context, "
        "collective buffers). A measured profile's figure replaces it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _within_limits(cls, data: Any) -> Any:
        # Counted before one device or link is validated: 10^6 devices are refused at once.
        if isinstance(data, dict):
            for field, limit, why in (
                ("devices", MAX_DEVICES, "devices in a cluster"),
                ("links", MAX_LINKS, "explicit links (describe larger clusters with link_groups)"),
                ("link_groups", MAX_LINK_GROUPS, "link groups"),
            ):
                items = data.get(field)
                if isinstance(items, list | tuple) and len(items) > limit:
                    raise ValueError(f"{field}: {len(items):,} entries, over the limit of {limit:,} {why}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Cluster:
        # pydantic re-runs this for a cluster inside every plan built from it; the checks
        # run once per instance.
        _ = self.consistency_checked  # raises ValueError naming the problem
        return self

    @cached_property
    def consistency_checked(self) -> bool:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is newer than this planner's {SCHEMA_VERSION}"
            )
        ids = [d.id for d in self.devices]
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dupes:
            raise ValueError(f"device ids {dupes[:10]} appear more than once")
        per_node = Counter(d.node for d in self.devices)
        if len(per_node) > MAX_NODES:
            raise ValueError(f"{len(per_node):,} nodes, over the limit of {MAX_NODES:,} nodes in a cluster")
        node, most = per_node.most_common(1)[0]
        if most > MAX_DEVICES_PER_NODE:
            raise ValueError(
                f"node {node} holds {most:,} devices, over the limit of {MAX_DEVICES_PER_NODE:,} per node"
            )
        known = set(ids)
        pairs: set[frozenset[int]] = set()
        for i, link in enumerate(self.links):
            missing = [d for d in (link.a, link.b) if d not in known]
            if missing:
                raise ValueError(f"links[{i}] connects device {missing[0]}, which does not exist")
            pair = frozenset((link.a, link.b))
            if pair in pairs:
                raise ValueError(f"links[{i}] repeats the link between {link.a} and {link.b}")
            pairs.add(pair)
        groups: set[tuple[str, tuple[str, str]]] = set()
        for i, group in enumerate(self.link_groups):
            key = (group.scope, group.device_kinds)
            if key in groups:
                raise ValueError(
                    f"link_groups[{i}] repeats the {group.scope} group of {' and '.join(key[1])}"
                )
            groups.add(key)
        parts = self.topology.parts()
        if len(parts) > 1:
            shown = "; ".join(_id_ranges(p) for p in parts[:6]) + ("; ..." if len(parts) > 6 else "")
            raise ValueError(f"devices are not all linked: {len(parts)} separate groups ({shown})")
        return True

    # -- views -------------------------------------------------------------------------
    @cached_property
    def topology(self) -> Topology:
        """Direct links and widest paths, built once per (immutable) cluster."""
        return Topology(
            ((d.id, device_kind(d.kind).id, d.node) for d in self.devices),
            ((lk.a, lk.b, _figures(lk.kind, lk.bandwidth, lk.latency, "link")) for lk in self.links),
            (
                (g.scope, *g.device_kinds, _figures(g.kind, g.bandwidth, g.latency, "group"))
                for g in self.link_groups
            ),
        )

    @cached_property
    def by_id(self) -> dict[int, Device]:
        return {d.id: d for d in self.devices}

    def device(self, device_id: int) -> Device:
        try:
            return self.by_id[device_id]
        except KeyError:
            raise ClusterError(f"device {device_id} is not in cluster {self.name!r}") from None

    def kind_of(self, device_id: int) -> DeviceKind:
        return device_kind(self.device(device_id).kind)

    def peak_flops(self, device_id: int, dtype: str = "float32") -> float:
        """Peak FLOP/s of one device for ``dtype``, scaled by its compute share."""
        d = self.device(device_id)
        peaks = device_kind(d.kind).peak_flops
        if dtype not in peaks:
            raise ClusterError(f"{d.kind} has no {dtype} peak (it supports {', '.join(peaks)})")
        return peaks[dtype] * d.compute_share

    def direct_link(self, a: int, b: int) -> DirectLink | None:
        """The link joining ``a`` and ``b`` directly (explicit, else its group's), or None."""
        self.device(a), self.device(b)  # a ClusterError for a device not in the cluster
        return self.topology.direct(a, b)

    def path(self, a: int, b: int) -> LinkCost:
        """(latency, bandwidth) from device ``a`` to ``b``.

        The pair's explicit link if there is one, else its link group's; else the widest
        path (the most bandwidth at its narrowest hop, then the least latency among those),
        with the latencies of its hops added.
        """
        if a == b:
            return LinkCost(0.0, math.inf)  # nothing crosses a link
        self.device(a), self.device(b)
        return self.topology.path(a, b)

    def link_kinds(self) -> set[str]:
        """Link kinds that join at least one pair of devices."""
        return self.topology.kinds_used()

    def link_table(self, per_node_pair: bool | None = None) -> list[LinkRow]:
        """Device pairs counted per link, scope, device kinds and node pair (summed over
        nodes when there are more than 16: 120 node pairs make a table still read)."""
        if per_node_pair is None:
            per_node_pair = len(self.nodes()) <= 16
        return self.topology.rows(per_node_pair)

    def pairs_without_direct_link(self) -> int:
        """Device pairs that talk over the widest path through other devices."""
        return self.topology.pairs() - sum(r.pairs for r in self.link_table(per_node_pair=False))

    def nodes(self) -> list[int]:
        return sorted({d.node for d in self.devices})

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _figures(kind: str, bandwidth: float | None, latency: float | None, source: str) -> DirectLink:
    spec = link_kind(kind)
    return DirectLink(kind, bandwidth or spec.bandwidth, spec.latency if latency is None else latency, source)


def _id_ranges(ids: list[int]) -> str:
    """``0-7, 9`` for a sorted id list: a part of 10,000 devices in a few characters."""
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:4])
    return "devices " + text + (", ..." if len(spans) > 4 else "")


def cluster_from_json(data: str | bytes, origin: str = "cluster JSON") -> Cluster:
    """Parse and validate a cluster document (text, or bytes as uploaded); errors name the
    field and the problem, or the limit it is over."""
    return parse_document(Cluster, data, origin, ClusterError, "cluster")


def load_cluster(path: str | Path) -> Cluster:
    return read_document(Cluster, path, ClusterError, "cluster file")


def save_cluster(cluster: Cluster, path: str | Path) -> None:
    Path(path).write_text(cluster.to_json() + "\n")


# -- short form --------------------------------------------------------------------------
_GROUP = re.compile(r"^(?P<kind>[a-z0-9][a-z0-9\-]*):(?P<per>\d+)(?:x(?P<nodes>\d+))?$")


def parse_short_form(spec: str) -> Cluster:
    """Build a cluster from ``KIND:PER_NODE[xNODES]`` groups joined by ``+`` (sharing nodes),
    and such node sets joined by ``,`` (nodes of their own, numbered on).

    Devices of one kind in one node use the kind's own link (NVLink, PCIe, loopback);
    different kinds in one node meet over the slower host bus; nodes are joined by the
    slower of the two kinds' inter-node fabrics. Each of these is one link group. The counts
    are checked against the limits before any device is built.

    >>> c = parse_short_form("h100:8x2")
    >>> len(c.devices), len(c.links), [(g.scope, g.kind) for g in c.link_groups]
    (16, 0, [('same_node', 'nvlink4'), ('between_nodes', 'infiniband-ndr')])
    >>> [d.node for d in parse_short_form("a100-80gb:2x2").devices]
    [0, 0, 1, 1]
    >>> m = parse_short_form("h100:2x1,a100-80gb:2x2")
    >>> [(d.kind, d.node) for d in m.devices][::2]
    [('h100-80gb', 0), ('a100-80gb', 1), ('a100-80gb', 2)]
    >>> parse_short_form("h100:999999")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    planner.errors.ClusterError: cluster 'h100:999999': device count per node is 999,999; ...
    """
    check_text(spec, "cluster", ClusterError)
    node_sets = [_node_set(spec, part) for part in spec.split(",")]
    for groups in node_sets:
        check_size(spec, sum(per for _, per, _ in groups), groups[0][2])
    if len(node_sets) > 1:  # and the node sets together
        where = f"cluster {spec!r}"
        nodes = sum(g[0][2] for g in node_sets)
        check_range(nodes, f"{where}: node count", 1, MAX_NODES, WHY_CLUSTER_SIZE, ClusterError)
        total = sum(sum(per for _, per, _ in g) * g[0][2] for g in node_sets)
        check_range(total, f"{where}: device count in all", 1, MAX_DEVICES, WHY_CLUSTER_SIZE, ClusterError)
    devices: list[dict[str, Any]] = []
    notes: list[str] = []
    cpu_per_node = max(sum(per for kind, per, _ in g if kind.id == "cpu") for g in node_sets)
    cpu_memory, cpu_share = _cpu_rank_budget(cpu_per_node, notes) if cpu_per_node else (0, 1.0)
    first = 0
    for groups in node_sets:
        for node in range(first, first + groups[0][2]):
            for kind, per, _ in groups:
                for _ in range(per):
                    is_cpu = kind.id == "cpu"
                    devices.append(
                        {
                            "id": len(devices),
                            "kind": kind.id,
                            "node": node,
                            "memory_bytes": cpu_memory if is_cpu else kind.memory_bytes,
                            "compute_share": cpu_share if is_cpu else 1.0,
                        }
                    )
        first += groups[0][2]
    try:
        return Cluster(name=spec, devices=devices, link_groups=_groups_for(node_sets, first), notes=notes)
    except ValidationError as exc:
        raise ClusterError(f"cluster {spec!r}: {explain(exc)}") from None


def _node_set(spec: str, text: str) -> list[tuple[DeviceKind, int, int]]:
    """One ``,``-separated part of a short form: its ``+``-joined groups, which share nodes."""
    groups = []
    for part in text.split("+"):
        m = _GROUP.match(part.strip())
        if not m:
            raise ClusterError(
                f"cluster {spec!r}: group {part!r} is not KIND:PER_NODE[xNODES], e.g. h100:8 or a100-80gb:8x4"
            )
        kind = device_kind(m["kind"])
        per, nodes = int(m["per"]), int(m["nodes"] or 1)
        if per < 1 or nodes < 1:
            raise ClusterError(f"cluster {spec!r}: group {part!r} needs at least one device and node")
        groups.append((kind, per, nodes))
    if len({n for _, _, n in groups}) > 1:
        raise ClusterError(f"cluster {spec!r}: groups joined by '+' share nodes, so need one node count")
    return groups


def check_size(spec: str, per_node: int, nodes: int) -> None:
    """Refuse a cluster over the device and node limits before anything is built."""
    where = f"cluster {spec!r}"
    for value, what, high, why in (
        (per_node, "device count per node", MAX_DEVICES_PER_NODE, WHY_DEVICES_PER_NODE),
        (nodes, "node count", MAX_NODES, WHY_CLUSTER_SIZE),
        (per_node * nodes, "device count in all", MAX_DEVICES, WHY_CLUSTER_SIZE),
    ):
        check_range(value, f"{where}: {what}", 1, high, why, ClusterError)


def _groups_for(node_sets: list[list[tuple[DeviceKind, int, int]]], nodes: int) -> list[LinkGroup]:
    """The link groups of a short form: only those that join at least one pair."""
    out: dict[tuple[str, str, str], str] = {}
    per_set = [Counter() for _ in node_sets]
    for per, groups in zip(per_set, node_sets, strict=True):
        for kind, n, _ in groups:
            per[kind.id] += n
    kinds = sorted({k for per in per_set for k in per})
    for i, a in enumerate(kinds):
        for b in kinds[i:]:
            ka, kb = DEVICE_KINDS[a], DEVICE_KINDS[b]
            if a != b and any(a in per and b in per for per in per_set):  # they share a node
                out[SAME_NODE, a, b] = slower_link(ka.host_link, kb.host_link)
            elif a == b and any(per[a] > 1 for per in per_set):
                out[SAME_NODE, a, b] = ka.intra_node_link
            if nodes > 1:  # any two kinds' nodes meet over the slower of their fabrics
                out[BETWEEN_NODES, a, b] = slower_link(ka.inter_node_link, kb.inter_node_link)
    return [LinkGroup(scope=s, device_kinds=(a, b), kind=k) for (s, a, b), k in out.items()]


def _cpu_rank_budget(ranks: int, notes: list[str]) -> tuple[int, float]:
    """Memory and compute share of each of ``ranks`` CPU ranks on this host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    share = min(1.0, cores / ranks)
    if ranks > cores:
        notes.append(f"{ranks} CPU ranks share {cores} cores on each node: each gets {share:.2f} of a core")
    return total // ranks, share


# -- presets and detection ----------------------------------------------------------------
PRESETS: dict[str, tuple[str, str]] = {
    "dgx-h100": ("h100:8", "one node of 8x H100 80GB on NVLink"),
    "dgx-a100-x2": ("a100-80gb:8x2", "2 nodes of 8x A100 80GB over InfiniBand"),
    "l4x4": ("l4:4", "4x L4 on PCIe"),
    "a100-v100-mixed": ("a100-80gb:4+v100-32gb:4", "one node: 4x A100 80GB + 4x V100 32GB"),
    "local": ("", "this machine: its CUDA devices, else one CPU rank per core"),
}


def detect_local() -> Cluster:
    """This machine: its CUDA devices if torch sees any, else one CPU rank per core."""
    try:
        import torch

        gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        gpus = []
    if not gpus:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cluster = parse_short_form(f"cpu:{cores or 1}")
        return cluster.model_copy(update={"name": "local"})
    kinds = [kind_of_gpu(p.name, p.total_memory) for p in gpus]
    spec = "+".join(f"{k}:{kinds.count(k)}" for k in dict.fromkeys(kinds))
    cluster = parse_short_form(spec)
    devices = [
        d.model_copy(update={"memory_bytes": p.total_memory})
        for d, p in zip(cluster.devices, gpus, strict=True)
    ]
    return cluster.model_copy(update={"name": "local", "devices": devices})


def kind_of_gpu(name: str, memory: int) -> str:
    """The catalog kind of a GPU torch reports (its name and bytes of memory)."""
    n = name.upper()
    gib = memory / 2**30
    if "H100" in n or "H200" in n:
        return "h100-80gb"  # H200 has no catalog entry yet: planned as an H100
    if "A100" in n:
        return "a100-80gb" if gib > 50 else "a100-40gb"
    if "V100" in n:
        return "v100-32gb" if gib > 20 else "v100-16gb"
    if "L4" in n:
        return "l4"
    if "4090" in n:
        return "rtx4090"
    raise ClusterError(
        f"GPU {name!r} ({gib:.0f} GiB) is not in the device catalog; describe it in a cluster JSON"
    )


def resolve_cluster(spec: str) -> Cluster:
    """A preset name, a cluster JSON file, or the short form."""
    spec = check_text((spec or "").strip(), "cluster", ClusterError)
    if spec == "local":
        return detect_local()
    if spec in PRESETS:
        short, _ = PRESETS[spec]
        return parse_short_form(short).model_copy(update={"name": spec})
    if spec.endswith(".json") or Path(spec).is_file():
        return load_cluster(spec)
    if ":" in spec:
        return parse_short_form(spec)
    raise ClusterError(
        f"cluster {spec!r} is not a preset ({', '.join(PRESETS)}), a .json file, "
        "or KIND:PER_NODE[xNODES] (e.g. h100:8, cpu:2)"
    )


def catalog() -> dict[str, Any]:
    """Every device kind, link kind and preset with its figures and their sources."""
    from dataclasses import asdict

    return {
        "device_kinds": {k: asdict(v) for k, v in DEVICE_KINDS.items()},
        "link_kinds": {k: asdict(v) for k, v in _link_kinds().items()},
        "presets": {k: {"short_form": s or "(detected)", "description": d} for k, (s, d) in PRESETS.items()},
    }


def _link_kinds() -> dict[str, LinkKind]:
    from planner.devices import LINK_KINDS

    return LINK_KINDS
