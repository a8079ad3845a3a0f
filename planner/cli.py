"""`python -m planner`: trace a model's layer graph, describe a cluster, check a plan.

    python -m planner graph --model gpt --set n_layer=4 d_model=128 --coarsen
    python -m planner graph --model hf:gpt2 --set n_layer=2 --json
    python -m planner cluster a100-80gb:4+v100-32gb:4
    python -m planner cluster --list
    python -m planner validate plan.json
    python -m planner schema

Bad input exits with status 2 and one line on stderr that names the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from planner.errors import PlannerError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m planner", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("graph", help="trace a model into a layer graph and summarise it")
    g.add_argument("--model", required=True, help="zoo name, hf:<model_type> or py:pkg.mod:factory")
    g.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="size overrides; values are JSON literals or strings",
    )
    g.add_argument("--coarsen", action="store_true", help="one node per block (module boundaries)")
    g.add_argument("--batch-size", type=int, default=1, help="samples in the traced input")
    g.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    g.add_argument("--json", action="store_true", help="print summary and node-link graph as JSON")
    g.set_defaults(func=_cmd_graph)

    v = sub.add_parser("validate", help="check a plan JSON file; exit 2 naming the field that is wrong")
    v.add_argument("plan", help="plan.json")
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser("schema", help="print the plan's JSON Schema")
    s.set_defaults(func=_cmd_schema)

    c = sub.add_parser("cluster", help="describe a cluster (preset, JSON file or short form)")
    c.add_argument("spec", nargs="?", help="e.g. dgx-h100, cluster.json, h100:8, a100-80gb:8x4, cpu:2")
    c.add_argument("--list", action="store_true", help="presets and device kinds with their sources")
    c.add_argument("--json", action="store_true", help="print the cluster JSON")
    c.set_defaults(func=_cmd_cluster)
    return parser


def _cmd_graph(args: argparse.Namespace) -> int:
    from planner.coarsen import coarsen
    from planner.graph import summary, to_json
    from planner.overrides import parse_overrides
    from planner.trace import trace

    overrides = parse_overrides(args.overrides)
    graph = trace(args.model, overrides, batch_size=args.batch_size, dtype=args.dtype)
    if args.coarsen:
        graph = coarsen(graph)
    info = summary(graph)
    if args.json:
        json.dump({"summary": info, "graph": to_json(graph)}, sys.stdout)
        print()
        return 0
    if warning := graph.graph.get("warning"):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"model        {graph.graph['source']}  (captured by {graph.graph['capture']}, "
        f"{graph.graph['trace_seconds']:.2f} s)"
    )
    print(f"input        {graph.graph['input_shapes']}  {graph.graph['dtype']}")
    rows = [
        ("nodes", f"{info['num_nodes']:,}" + ("  (blocks)" if args.coarsen else "  (ops)")),
        ("parameters", f"{info['param_count']:,}"),
        ("FLOPs/sample", f"{info['fwd_flops_per_sample']:,}  (forward)"),
        ("saved/sample", _bytes(info["saved_bytes_per_sample"]) + "  (kept for backward)"),
        ("largest act.", _bytes(info["largest_activation_bytes"])),
    ]
    for name, value in rows:
        print(f"{name:<12} {value}")
    if args.coarsen:
        print()
        print(f"{'block':<28} {'op':<22} {'params':>12} {'GFLOP':>10} {'saved':>10} {'out':>10}")
        for node, d in graph.nodes(data=True):
            print(
                f"{node[:28]:<28} {d['op'][:22]:<22} {d['param_count']:>12,} "
                f"{d['fwd_flops'] / 1e9:>10.3f} {_bytes(d['saved_bytes']):>10} "
                f"{_bytes(d['output_bytes']):>10}"
            )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from planner.plan import load_plan

    plan = load_plan(args.plan)
    print(
        f"valid: {plan.strategy} dp={plan.dp_degree} pp={plan.pp_degree} "
        f"{plan.schedule or 'no schedule'}, {len(plan.stages)} stages on {len(plan.ranks)} ranks, "
        f"model {plan.model.source} ({plan.model.graph_digest[:12]})"
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from planner.plan import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from planner.cluster import catalog, resolve_cluster

    if args.list:
        data = catalog()
        if args.json:
            print(json.dumps(data, indent=2))
            return 0
        _print_catalog(data)
        return 0
    if not args.spec:
        print("error: give a cluster (preset, .json file or short form) or --list", file=sys.stderr)
        return 2
    cluster = resolve_cluster(args.spec)
    if args.json:
        print(cluster.to_json())
        return 0
    print(f"cluster {cluster.name}: {len(cluster.devices)} devices on {len(cluster.nodes())} node(s)")
    for d in cluster.devices:
        share = f"  compute share {d.compute_share:.2f}" if d.compute_share < 1 else ""
        print(f"  device {d.id:>3}  node {d.node:>2}  {d.kind:<10} {_bytes(d.memory_bytes):>10}{share}")
    kinds: dict[str, int] = {}
    for link in cluster.links:
        kinds[link.kind] = kinds.get(link.kind, 0) + 1
    for kind, count in kinds.items():
        print(f"  {count} link(s) {kind}")
    for note in cluster.notes:
        print(f"  note: {note}")
    return 0


def _print_catalog(data: dict[str, Any]) -> None:
    print("presets")
    for name, p in data["presets"].items():
        print(f"  {name:<16} {p['short_form']:<26} {p['description']}")
    print("\ndevice kinds (dense peak FLOP/s)")
    for kid, k in data["device_kinds"].items():
        mem = _bytes(k["memory_bytes"]) if k["memory_bytes"] else "detected"
        peaks = ", ".join(f"{dt} {v / 1e12:g} TFLOP/s" for dt, v in k["peak_flops"].items())
        print(f"  {kid:<10} {mem:>10}  {k['memory_bandwidth'] / 1e9:g} GB/s  {peaks}")
        sources = k["sources"]
        if len(set(sources.values())) == 1:
            print(f"  {'':<10}   source: {next(iter(sources.values()))}")
        else:
            for field, src in sources.items():
                print(f"  {'':<10}   {field}: {src}")
    print("\nlink kinds (per direction)")
    for lid, k in data["link_kinds"].items():
        print(f"  {lid:<15} {k['bandwidth'] / 1e9:>7g} GB/s  {k['latency'] * 1e6:>5g} us  {k['source']}")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":
    raise SystemExit(main())
