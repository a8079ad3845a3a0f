"""`python -m planner size`: which cluster a training job needs, in time and money.

    python -m planner size --model hf:llama --set seq_len=4096 --tokens 1T --hours 720
    python -m planner size --model gpt --set size=70b --tokens 300B --budget 2e6 --kinds h100-80gb h200

Prints the Pareto front of time to train against cost (each point's plan: strategy,
degrees, MFU, peak memory per device) and why the other shapes planned are off it; ``-o``
writes the chosen point's plan (the cheapest that meets a deadline, or the fastest within a
budget) and its cluster next to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from planner.cli_args import allow_py_option, positive
from planner.limits import MAX_GLOBAL_BATCH, MAX_NODES
from planner.plan import check_writable
from planner.precision import Precision
from planner.sizing.report import (
    MAX_HOURS,
    MAX_USD,
    SizingInputError,
    chosen_point,
    dollars,
    duration,
    no_fit_message,
    off_the_front,
    parse_limit,
    parse_tokens,
)


def token_count(text: str) -> int:
    """An argparse type: a token count, as 1000000, 1e12, 1T, 300B or 2.5M (`parse_tokens`)."""
    try:
        return parse_tokens(text)
    except SizingInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_number(limit: float, unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number above 0 and at most ``limit`` (`parse_limit`)."""

    def parse(text: str) -> float:
        try:
            return parse_limit(text, limit, unit)
        except SizingInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_parser(sub) -> None:
    z = sub.add_parser("size", help="which cluster a training job needs: the Pareto front of time and cost")
    z.add_argument("--model", required=True, help="zoo name, hf:<model_type> or py:pkg.mod:factory")
    z.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    z.add_argument("--tokens", type=token_count, required=True, help="tokens to train on: 1e12, 300B, 1T")
    limit = z.add_mutually_exclusive_group(required=True)
    limit.add_argument("--hours", type=positive_number(MAX_HOURS, "hours"), help="the deadline, in hours")
    limit.add_argument("--budget", type=positive_number(MAX_USD, "dollars"), help="the budget, in US dollars")
    z.add_argument(
        "--global-batch",
        type=positive(MAX_GLOBAL_BATCH),
        default=512,
        help="samples per optimizer step (default 512: 2M tokens a step at 4,096 tokens a sample)",
    )
    z.add_argument(
        "--precision",
        default=Precision.BF16_MIXED.value,
        choices=[p.value for p in Precision],
        help="default bf16-mixed, as large models train",
    )
    z.add_argument("--catalog", help="a price catalogue JSON (default: the public list prices shipped)")
    z.add_argument("--kinds", nargs="+", metavar="KIND", help="only these device kinds of the catalogue")
    z.add_argument(
        "--max-nodes", type=positive(MAX_NODES), help="the most nodes (default: the catalogue's cap)"
    )
    z.add_argument(
        "--every-node-count",
        action="store_true",
        help="plan every node count (default: every count to 8, then four a doubling: 10, 12, 14, 16, 20...)",
    )
    z.add_argument(
        "--mixed",
        action="store_true",
        help="also plan clusters of two kinds' nodes (slower: a search over mixes, not every mix)",
    )
    z.add_argument("-o", "--output", help="write the chosen point's plan here, and its cluster beside it")
    allow_py_option(z)
    z.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.capture.coarsen import coarsen
    from planner.capture.overrides import parse_overrides
    from planner.capture.trace import trace
    from planner.cluster import save_cluster
    from planner.plan import save_plan
    from planner.sizing.catalog import default_catalog, load_catalog
    from planner.sizing.size import size

    if args.output:
        check_writable(args.output)
        check_writable(cluster_path(args.output))
    catalog = load_catalog(args.catalog) if args.catalog else default_catalog()
    if args.kinds:
        for kind in args.kinds:
            catalog.offer(kind)  # an unknown kind is named before the trace
    graph = coarsen(trace(args.model, parse_overrides(args.overrides)))

    def progress(i: int, shape) -> None:
        print(f"\r  planning shape {i + 1}: {shape.short_form:<24}", end="", file=sys.stderr, flush=True)

    sizing = size(
        graph,
        catalog,
        tokens=args.tokens,
        global_batch=args.global_batch,
        hours=args.hours,
        budget_usd=args.budget,
        precision=args.precision,
        kinds=args.kinds,
        max_nodes=args.max_nodes,
        every_node_count=args.every_node_count,
        mixed=args.mixed,
        progress=progress if sys.stderr.isatty() else None,
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    limit = f"within {args.hours:,g} h" if args.hours else f"within ${args.budget:,.0f}"
    print(
        f"{graph.graph['source']}: {args.tokens:,} tokens = {sizing.steps:,} steps of {args.global_batch:,} "
        f"samples ({sizing.tokens_per_step:,} tokens), {args.precision}, {limit}; catalogue "
        f"{catalog.name!r}; {len(sizing.points)} shapes planned in {sizing.seconds:.1f} s"
    )
    _print_front(sizing)
    off = off_the_front(sizing.points)
    if off:
        print("\noff the front:")
        for line in off:
            print(f"  {line}")
    if not sizing.front:
        print(f"error: {no_fit_message(sizing, args.hours, args.budget)}", file=sys.stderr)
        return 1
    if args.output:
        chosen = chosen_point(sizing, args.hours)
        save_plan(chosen.best.plan, args.output)
        save_cluster(chosen.cluster, cluster_path(args.output))
        print(
            f"\nwrote {args.output} and {cluster_path(args.output)}: {chosen.shape.short_form}, "
            f"{chosen.best.label}, {duration(chosen.hours)}, {dollars(chosen.cost_usd)}"
        )
    return 0


def cluster_path(plan_path: str) -> str:
    """Where ``-o`` writes the chosen cluster: beside the plan (``plan.json`` -> ``plan.cluster.json``)."""
    p = Path(plan_path)
    return str(p.with_name(f"{p.stem}.cluster.json"))


def _print_front(sizing) -> None:
    print("\nPareto front, time to train against cost (fastest first):")
    print(
        f"  {'cluster':<18} {'devices':>7} {'time':>10} {'cost':>14} {'$/dev-h':>8}  {'plan':<44} "
        f"{'MFU':>6} {'peak mem/dev':>13}"
    )
    for p in sizing.front:
        row = p.best.row()
        print(
            f"  {p.shape.short_form:<18} {p.shape.devices:>7,} {duration(p.hours):>10} "
            f"{dollars(p.cost_usd):>14} {p.usd_per_device_hour:>8.2f}  "
            f"{p.best.label[:44]:<44} {row['mfu']:>6.1%} {row['peak_mem'] / 2**30:>9.1f} GiB"
        )
