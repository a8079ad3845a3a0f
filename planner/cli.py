"""`python -m planner`: trace a model's layer graph, describe a cluster, check a plan.

    python -m planner graph --model gpt --set n_layer=4 d_model=128 --coarsen
    python -m planner graph --model hf:gpt2 --set n_layer=2 --json
    python -m planner cluster a100-80gb:4+v100-32gb:4
    python -m planner cluster --list
    python -m planner plan --model gpt --cluster cpu:2 --global-batch 16 -o plan.json
    python -m planner size --model hf:llama --set seq_len=4096 --tokens 1T --hours 720
    python -m planner validate plan.json
    python -m planner schema

Bad input exits with status 2 and one line on stderr that names the problem; nothing
prints a traceback. A `py:` model named with --model is imported because the user named
it; one named by a plan file only with --allow-py MODULE (or $STAGECRAFT_ALLOWED_PY).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from planner import cli_size
from planner.cli_args import OneLineParser, allow_py_option, answer, dtype_alias, grant_consent, positive
from planner.limits import MAX_GLOBAL_BATCH, MAX_OVERRIDE_INT, MAX_STEPS
from planner.model_check import SKIPPED
from planner.plan import Strategy, check_writable
from planner.precision import Precision
from planner.schedules import SCHEDULES
from planner.sharding import DpMode


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def command(args: argparse.Namespace) -> int:
        grant_consent(args)
        return args.func(args)

    try:
        return answer(command, args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m planner", description=__doc__.split("\n")[0])
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
    g.add_argument(
        "--batch-size", type=positive(MAX_OVERRIDE_INT), default=1, help="samples in the traced input"
    )
    g.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    g.add_argument("--json", action="store_true", help="print summary and node-link graph as JSON")
    allow_py_option(g)
    g.set_defaults(func=_cmd_graph)

    p = sub.add_parser("plan", help="search the plans for a model on a cluster and write the best")
    p.add_argument("--model", required=True, help="zoo name, hf:<model_type> or py:pkg.mod:factory")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--cluster", required=True, help="preset, cluster .json or short form (h100:8, cpu:2)")
    p.add_argument(
        "--global-batch", type=positive(MAX_GLOBAL_BATCH), required=True, help="samples per optimizer step"
    )
    p.add_argument("--strategy", default="auto", choices=["auto", *(s.value for s in Strategy)])
    p.add_argument("--schedule", choices=[s.value for s in SCHEDULES], help="pin the schedule")
    p.add_argument("--micro-batches", type=positive(MAX_OVERRIDE_INT), help="pin the micro-batch count")
    p.add_argument(
        "--dp-mode",
        default="auto",
        choices=["auto", *(m.value for m in DpMode)],
        help="how data-parallel groups hold the model: replicate (DDP), shard_grad_op (ZeRO-2), full_shard "
        "(ZeRO-3), hybrid_shard (shard in a node, replicate across); auto: the cheapest that fits",
    )
    p.add_argument(
        "--recompute",
        default="auto",
        metavar="{auto,none,full,every-K}",
        help="activation recomputation of every stage: none, full (every block), every-K (every K-th "
        "block); auto: none unless only recomputation fits",
    )
    p.add_argument(
        "--tp",
        default="auto",
        metavar="{auto,N}",
        help="tensor-parallel degree: ranks per tensor group (Megatron-style split of attention and MLP, "
        "inside a node); auto: each divisor of the devices per node that divides the heads",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="with tp > 1: split the tensor groups' norms along the sequence (all-gather / reduce-scatter "
        "in place of all-reduce)",
    )
    p.add_argument(
        "--precision",
        default=Precision.FP32.value,
        choices=[p.value for p in Precision],
        help="fp32; bf16-mixed or fp16-mixed (fp32 weights and optimizer state, 16-bit compute under "
        "torch.autocast; fp16 with loss scaling); bf16 (everything in bf16: small updates are lost)",
    )
    p.add_argument(
        "--dtype",
        dest="precision",
        type=dtype_alias,
        metavar="{float32,bfloat16,float16}",
        help="the older name of --precision: float32 is fp32, bfloat16 bf16-mixed, float16 fp16-mixed",
    )
    p.add_argument("--steps", type=positive(MAX_STEPS), default=100, help="training steps the plan runs")
    p.add_argument("--profile", help="a measured profile.json to use instead of datasheet figures")
    p.add_argument("--top", type=positive(10_000), default=10, help="rows of the candidates table")
    p.add_argument("-o", "--output", help="write the best plan here")
    allow_py_option(p)
    p.set_defaults(func=_cmd_plan)

    v = sub.add_parser("validate", help="check a plan JSON file; exit 2 naming the field that is wrong")
    v.add_argument("plan", help="plan.json")
    v.add_argument(
        "--skip-model-check",
        action="store_true",
        help="do not trace the plan's model (for a model too large to trace here): " + SKIPPED,
    )
    allow_py_option(v)
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser("schema", help="print the plan's JSON Schema")
    s.set_defaults(func=_cmd_schema)

    cli_size.add_parser(sub)

    c = sub.add_parser("cluster", help="describe a cluster (preset, JSON file or short form)")
    c.add_argument("spec", nargs="?", help="e.g. dgx-h100, cluster.json, h100:8, a100-80gb:8x4, cpu:2")
    c.add_argument("--list", action="store_true", help="presets and device kinds with their sources")
    c.add_argument("--json", action="store_true", help="print the cluster JSON")
    c.set_defaults(func=_cmd_cluster)
    return parser


def _cmd_graph(args: argparse.Namespace) -> int:
    from planner.capture.coarsen import coarsen
    from planner.capture.graph import summary, to_json
    from planner.capture.overrides import parse_overrides
    from planner.capture.trace import trace

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


def _cmd_plan(args: argparse.Namespace) -> int:
    from planner.capture.coarsen import coarsen
    from planner.capture.overrides import parse_overrides
    from planner.capture.trace import trace
    from planner.cluster import resolve_cluster
    from planner.plan import save_plan
    from planner.profile import load_profile
    from planner.search.build import model_blocks
    from planner.search.search import search

    if args.output:
        check_writable(args.output)  # before the search, not after it
    cluster = resolve_cluster(args.cluster)
    graph = coarsen(trace(args.model, parse_overrides(args.overrides)))
    profile = load_profile(args.profile) if args.profile else None
    result = search(
        graph,
        cluster,
        global_batch=args.global_batch,
        strategy=args.strategy,
        schedule=args.schedule,
        micro_batches=args.micro_batches,
        dp_mode=args.dp_mode,
        recompute=args.recompute,
        tp=args.tp,
        sequence_parallel=args.sequence_parallel,
        training={"precision": args.precision, "steps": args.steps},
        profile=profile,
    )
    tokens = graph.graph.get("config", {}).get("seq_len")
    print(
        f"{graph.graph['source']} ({len(model_blocks(graph))} blocks, "
        f"{result.units} partitioned{f', {tokens:,} tokens per sample' if tokens else ''}) "
        f"on {cluster.name} ({len(cluster.devices)} devices): "
        f"{result.screened} layouts screened, {len(result.candidates)} priced"
    )
    for note in result.notes:
        print(f"note: {note}")
    header = (
        f"{'':2}{'strategy':<8} {'devices':<16} {'dp':>4} {'pp':>3} {'tp':>5} {'m':>3} {'schedule':<19} "
        f"{'dp mode':<13} {'recompute':<9} {'step':>10} "
        f"{'samples/s':>10} {'MFU':>6} {'peak mem/dev':>13} {'sent/step':>11} {'bubble':>7}  notes"
    )
    print(header)
    for c in result.candidates[: args.top]:
        row = c.row()
        mark = "* " if c is result.best else "  "
        kinds = sorted({cluster.device(d).kind for d in c.devices})
        devices = f"{len(c.devices)}x {'+'.join(kinds)}"
        notes = "; ".join(
            x
            for x in (
                f"infeasible: {c.reason}" if c.reason else "",
                c.mesh,
                "" if c.exact else "split not proven optimal",
            )
            if x
        )
        tp = f"{row['tp']}{' sp' if row['sp'] else ''}"
        head = (
            f"{mark}{row['strategy']:<8} {devices[:16]:<16} {row['dp']:>4} {row['pp']:>3} {tp:>5} "
            f"{row['m']:>3} {row['schedule']:<19} {row['dp_mode']:<13} {row['recompute']:<9} "
        )
        if row["step_s"] is None:
            print(f"{head}{notes}")
            continue
        print(
            f"{head}{_seconds(row['step_s']):>10} {row['samples_s']:>10.1f} {row['mfu']:>6.1%} "
            f"{_bytes(row['peak_mem']):>13} {_bytes(row['bytes_sent']):>11} {row['bubble']:>7.1%}  {notes}"
        )
    best = result.best
    if best is None:
        print("error: no candidate fits; the table says which stage on which device is over", file=sys.stderr)
        return 1
    if args.output:
        save_plan(best.plan, args.output)
        print(
            f"wrote {args.output}: {best.label}, stages {[len(b) for b in best.plan.stage_blocks()]} blocks"
        )
    return 0


def _seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def _cmd_validate(args: argparse.Namespace) -> int:
    from planner.model_check import check_against_model
    from planner.plan import load_plan

    plan = load_plan(args.plan)
    if args.skip_model_check:
        print(f"warning: {SKIPPED}", file=sys.stderr)
    else:
        check_against_model(plan)
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
    if len(cluster.devices) <= DEVICES_LISTED:
        for d in cluster.devices:
            share = f"  compute share {d.compute_share:.2f}" if d.compute_share < 1 else ""
            print(f"  device {d.id:>3}  node {d.node:>2}  {d.kind:<10} {_bytes(d.memory_bytes):>10}{share}")
    else:
        for line in _node_groups(cluster):
            print(f"  {line}")
    for row in cluster.link_table(per_node_pair=False):  # grouped: never one line per pair
        where = "in a node" if row.scope == "same_node" else "between nodes"
        print(
            f"  {row.pairs:,} link(s) {row.kind} {where}, {' - '.join(row.device_kinds)}: "
            f"{row.bandwidth / 1e9:g} GB/s, {row.latency * 1e6:g} us ({row.source})"
        )
    if cluster.pairs_without_direct_link():
        print(f"  {cluster.pairs_without_direct_link():,} pair(s) over the widest path through other devices")
    for note in cluster.notes:
        print(f"  note: {note}")
    return 0


DEVICES_LISTED = 64  # past this, devices are summed up per run of identical nodes


def _node_groups(cluster) -> list[str]:
    """Runs of consecutive nodes that hold the same devices, one line each."""
    by_node: dict[int, list] = {}
    for d in cluster.devices:
        by_node.setdefault(d.node, []).append(d)

    def shape(devices) -> tuple:
        return tuple((d.kind, d.memory_bytes, d.compute_share) for d in devices)

    runs: list[list[int]] = []
    for node in sorted(by_node):
        if runs and runs[-1][-1] == node - 1 and shape(by_node[runs[-1][0]]) == shape(by_node[node]):
            runs[-1].append(node)
        else:
            runs.append([node])
    lines = []
    for nodes in runs:
        kinds: dict[tuple, int] = {}
        for key in shape(by_node[nodes[0]]):
            kinds[key] = kinds.get(key, 0) + 1
        held = ", ".join(f"{n} x {kind} {_bytes(memory)}" for (kind, memory, _), n in kinds.items())
        span = f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {nodes[0]}-{nodes[-1]} ({len(nodes):,})"
        lines.append(f"{span}: {held} each node")
    return lines


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
