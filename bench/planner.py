"""How fast and how good the planner's search is.

    python bench/planner.py [--quick]

(a) The full auto search (`planner.search.search.search`) on synthetic layer graphs of 100, 1,000
    and 10,000 blocks (a 7B-parameter transformer, bf16, 2k tokens, cut into that many blocks
    of random sizes, with skip edges) on 8, 64 and 512 H100s, global batch max(64, 2 x devices):
    blocks actually partitioned, wall time on one core (the median of three searches, and
    their range), and whether the split of the chosen
    plan is proven optimal. Where the branch and bound gives up, the gap of the
    screening split to the exact split is printed at the largest size exact still runs.
(b) A GPT with a large vocabulary (16384, d_model 256, 8 blocks; docs/facts.md) on 4 and 8
    devices, pipelines without tensor parallelism: the predicted step time of the plan the
    search picks, against the same
    degrees with an even layer split (Megatron's default) and a parameter-balanced split
    (DeepSpeed's default), as ratios (> 1: the baseline is slower).
(c) The models users bring, bf16-mixed, the whole space (data-parallel modes, recomputation
    and tensor-parallel degrees included): Llama-7B at 4,096 tokens, global batch 32, on 8
    A100-40GB; the zoo's 70B GPT, global batch 512, on 64 and on 512 H100s; GPT-3's 175B
    shape (`size=175b`), global batch 1536, on 128 nodes of 8 A100-80GB, once with sequence
    parallelism. Search time on one core (the trace, on the meta device, not counted), the
    plan chosen, its predicted MFU and peak memory per device; and the 175B priced in
    Megatron-LM's layouts (tensor 8 in a node, pipeline 8 or 16 across nodes).
(d) Sizing (`python -m planner size`): Llama-7B at 4,096 tokens on 1T tokens, global batch
    512, bf16-mixed, within 720 hours, over the default price catalogue (six GPU kinds): the
    shapes planned and the wall time on one core (the trace not counted), and the front.

(e) The same sizing with mixed kinds (`--mixed`): how many shapes, how long, and whether a
    mix of two kinds makes the front.

    python bench/planner.py --only d    # one part: a, b, c, d or e
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networkx as nx

from planner.cluster import resolve_cluster
from planner.cost.price import Pricer
from planner.devices import device_kind
from planner.search.build import model_blocks
from planner.search.partition import min_bottleneck_cuts
from planner.search.search import search
from planner.search.stage_problem import StageProblem

PEAK = device_kind("h100-80gb").peak_flops["float32"]
REPEATS = 3  # each search of (a), the median printed


def synthetic(n: int, seed: int = 0) -> nx.DiGraph:
    """n transformer-like blocks: random FLOPs, parameters and saved bytes, a few skip edges."""
    rng = random.Random(seed)
    g = nx.DiGraph(
        source=f"synthetic-{n}",
        overrides={},
        batch_size=1,
        dtype="bfloat16",
        input_shapes=[[1]],
        param_bytes={},
    )
    g.add_node(
        "input:x",
        kind="input",
        fqn="",
        op="input",
        ops=[],
        param_bytes=0,
        param_count=0,
        saved_bytes=0,
        output_bytes=0,
        params=[],
        shared_params=[],
        resaved_from={},
        fwd_flops=0,
    )
    # A 7B-parameter model (2k tokens, hidden 4096) cut into n blocks of random sizes.
    act = 2048 * 4096 * 2  # one sample's hidden state in fp16
    for i in range(n):
        share = rng.uniform(0.5, 1.5) / n
        flops = share * 6 * 7e9 * 2048 / 3  # forward: a third of 6 N T
        params = int(share * 7e9)
        g.add_node(
            f"b{i}",
            kind="block",
            fqn=f"b{i}",
            op="Block",
            fwd_flops=int(flops),
            ops=[[int(flops), 4 * act, 2 * params]],
            param_bytes=2 * params,
            param_count=params,
            params=[],
            shared_params=[],
            saved_bytes=int(32 * 34 * act * share),
            output_bytes=act,
            resaved_from={},
        )
    g.add_edge("input:x", "b0", bytes=0, grad_bytes=0)
    for i in range(n - 1):
        g.add_edge(f"b{i}", f"b{i + 1}", bytes=act, grad_bytes=act)
        if i + 3 < n and rng.random() < 0.05:
            g.add_edge(f"b{i}", f"b{i + 3}", bytes=act // 4, grad_bytes=act // 4)
    g.graph["order"] = list(g.nodes)
    return g


def part_a(sizes, clusters) -> None:
    print(f"(a) full auto search, one core; each search {REPEATS} times (this machine's speed moves)")
    print(
        f"{'blocks':>7} {'devices':>8} {'partitioned':>11} {'screened':>9} {'priced':>7} {'median s':>8} "
        f"{'range s':<11} {'best plan':<42} {'split proven optimal'}"
    )
    for n in sizes:
        graph = synthetic(n)
        for spec in clusters:
            cluster = resolve_cluster(spec)
            batch = max(64, 2 * len(cluster.devices))
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                result = search(graph, cluster, global_batch=batch, training={"precision": "bf16-mixed"})
                times.append(time.perf_counter() - t0)
            best = result.best
            label = best.label if best else "none fits"
            print(
                f"{n:>7} {len(cluster.devices):>8} {result.units:>11} {result.screened:>9} "
                f"{len(result.candidates):>7} {statistics.median(times):>8.2f} "
                f"{min(times):>5.2f}-{max(times):<5.2f} {label[:42]:<42} "
                f"{'yes' if best and best.exact else 'no'}"
            )


def heuristic_gap(sizes, spec: str, pp: int, m: int) -> None:
    """The screening split (least bottleneck) vs the exact split, where the exact one finishes."""
    from planner.search.build import make_plan

    print(f"\n    screening split vs exact split, pp={pp} m={m} 1f1b on {spec}:")
    cluster = resolve_cluster(spec)
    for n in sizes:
        graph = synthetic(n)
        template = make_plan(
            graph,
            cluster,
            strategy="pp",
            pp_degree=pp,
            schedule="1f1b",
            micro_batches=m,
            global_batch=m,
            devices=[d.id for d in cluster.devices[:pp]],
            training={"precision": "bf16-mixed"},
        )
        problem = StageProblem(Pricer(graph, cluster), template)
        quick = problem.evaluate(min_bottleneck_cuts(problem.work))
        t0 = time.perf_counter()
        exact = problem.solve(max_evaluations=5000, max_nodes=2_000_000)
        dt = time.perf_counter() - t0
        status = "exact" if exact.exact else "gave up"
        print(
            f"    {n:>6} blocks: screening split / best split = {quick / exact.value:.4f}  "
            f"({status} after {exact.evaluations} prices, {dt:.2f} s)"
        )


def part_b(devices_list) -> None:
    from planner.capture.coarsen import coarsen
    from planner.capture.trace import trace
    from planner.search.pricing import candidate_plan

    print("\n(b) GPT, vocab 16384, d_model 256, 8 blocks, global batch 32: baseline step / chosen step")
    graph = coarsen(
        trace("gpt", {"vocab_size": 16384, "d_model": 256, "n_layer": 8, "seq_len": 128, "n_head": 8})
    )
    blocks = model_blocks(graph)
    params = [graph.nodes[b]["param_count"] for b in blocks]
    for n in devices_list:
        cluster = resolve_cluster(f"a100-80gb:{n}")
        result = search(graph, cluster, global_batch=32, strategy="pp", tp=1)  # pipeline splits alone
        best = result.best
        k = best.pp_degree * best.virtual_stages
        pricer = Pricer(graph, cluster)

        def step(cuts, best=best, cluster=cluster, pricer=pricer):
            return pricer(candidate_plan(graph, cluster, best, cuts=cuts)).step_time_s

        chosen = best.prediction.step_time_s
        even = step(_even_layers(blocks, k))
        balanced = step(min_bottleneck_cuts([params] * k))
        print(
            f"  {n} x a100-80gb, {best.label}: chosen {chosen * 1e3:.3f} ms; "
            f"even layers {even / chosen:.3f}x; parameter-balanced {balanced / chosen:.3f}x"
        )


LLMS = (
    ("Llama-7B, 4k tokens", "hf:llama", {"seq_len": 4096}, "a100-40gb:8", 32, False),
    ("GPT 70B", "gpt", {"size": "70b"}, "h100:8x8", 512, False),
    ("GPT 70B", "gpt", {"size": "70b"}, "h100:8x64", 512, False),
    ("GPT 175B", "gpt", {"size": "175b"}, "a100-80gb:8x128", 1536, False),
    ("GPT 175B, seq. par.", "gpt", {"size": "175b"}, "a100-80gb:8x128", 1536, True),
)


def part_c() -> None:
    from planner.capture.coarsen import coarsen
    from planner.capture.trace import trace

    print("\n(c) LLMs, bf16-mixed, every data-parallel mode, recomputation and tp degree: one core")
    print(
        f"  {'model':<20} {'cluster':<16} {'batch':>5} {'time s':>7}  {'best plan':<84} "
        f"{'step s':>7} {'MFU':>6}  peak/device"
    )
    graphs = {}
    for name, source, overrides, spec, batch, sp in LLMS:
        key = (source, tuple(sorted(overrides.items())))
        if key not in graphs:
            graphs[key] = coarsen(trace(source, dict(overrides)))
        cluster = resolve_cluster(spec)
        t0 = time.perf_counter()
        result = search(
            graphs[key],
            cluster,
            global_batch=batch,
            sequence_parallel=sp,
            training={"precision": "bf16-mixed"},
        )
        dt = time.perf_counter() - t0
        best = result.best
        if best is None:  # the candidates say which stage on which device is over
            label, figures = f"none fits: {result.candidates[0].reason}", ""
        else:
            label = best.label
            top = max(best.prediction.memory, key=lambda m: m.total)
            figures = (
                f"{best.prediction.step_time_s:>7.2f} {best.prediction.mfu:>6.1%}  "
                f"{top.total / 2**30:.1f} of {top.capacity / 2**30:.0f} GiB"
            )
        print(f"  {name:<20} {spec:<16} {batch:>5} {dt:>7.2f}  {label[:84]:<84} {figures}")
    megatron_layout(graphs[("gpt", (("size", "175b"),))])


def megatron_layout(graph) -> None:
    """The 175B GPT priced in Megatron-LM's layouts: tensor parallelism 8 inside a node and the
    pipeline across nodes, as Narayanan et al. 2021 (Table 1) lay out every model from 18B up,
    with the pipeline depths of their 145B and 310B rows (8 and 16) and data parallel over
    the rest; 1F1B with micro-batches of one sample, every block recomputed, layers split
    evenly."""
    from planner.search.build import make_plan

    cluster = resolve_cluster("a100-80gb:8x128")
    blocks = model_blocks(graph)
    for pp in (8, 16):
        dp = 1024 // 8 // pp
        m = 1536 // dp  # one sample a micro-batch
        plan = make_plan(
            graph,
            cluster,
            strategy="hybrid",
            global_batch=1536,
            dp_degree=dp,
            pp_degree=pp,
            tp_degree=8,
            schedule="1f1b",
            micro_batches=m,
            cuts=_even_layers(blocks, pp),
            recompute="full",
            training={"precision": "bf16-mixed"},
        )
        p = Pricer(graph, cluster)(plan, with_timeline=False)
        top = max(p.memory, key=lambda m: m.total)
        label = f"hybrid dp{dp}xpp{pp}xtp8 m{m} 1f1b recompute full, layers split evenly"
        print(
            f"  {'GPT 175B, Megatron':<20} {'a100-80gb:8x128':<16} {1536:>5} {'-':>7}  {label:<84} "
            f"{p.step_time_s:>7.2f} {p.mfu:>6.1%}  {top.total / 2**30:.1f} of {top.capacity / 2**30:.0f} GiB"
        )


def _even_layers(blocks: list[str], k: int) -> list[int]:
    """Megatron-style: the same number of transformer layers per stage, the embedding with the
    first, the final norm and head with the last."""
    layers = [i for i, b in enumerate(blocks) if b.startswith("blocks.")]
    per = len(layers) / k
    return [layers[round(per * j)] for j in range(1, k)]


def part_d() -> None:
    from planner.capture.coarsen import coarsen
    from planner.capture.trace import trace
    from planner.sizing.catalog import default_catalog
    from planner.sizing.size import size

    print("\n(d) sizing: Llama-7B at 4,096 tokens, 1T tokens within 720 h, default catalogue: one core")
    t0 = time.perf_counter()
    graph = coarsen(trace("hf:llama", {"seq_len": 4096}))
    traced = time.perf_counter() - t0
    catalog = default_catalog()
    sizing = size(graph, catalog, tokens=10**12, global_batch=512, hours=720.0)
    per_kind = {k: sum(p.shape.label == k for p in sizing.points) for k in catalog.kinds()}
    print(
        f"  {len(catalog.kinds())} kinds, {len(sizing.points)} shapes planned in {sizing.seconds:.1f} s "
        f"(trace {traced:.1f} s, not counted); shapes per kind: "
        + ", ".join(f"{k} {n}" for k, n in per_kind.items())
    )
    for p in sizing.front:
        print(
            f"  front: {p.shape.short_form:<16} {p.hours:>8,.0f} h  ${p.cost_usd:>12,.0f}  "
            f"{p.best.label[:60]:<60} MFU {p.best.prediction.mfu:.1%}"
        )


def part_e() -> None:
    from planner.capture.coarsen import coarsen
    from planner.capture.trace import trace
    from planner.sizing.catalog import default_catalog
    from planner.sizing.size import size

    print("\n(e) sizing with mixed kinds: (d) again, with clusters of two kinds' nodes too: one core")
    graph = coarsen(trace("hf:llama", {"seq_len": 4096}))
    sizing = size(graph, default_catalog(), tokens=10**12, global_batch=512, hours=720.0, mixed=True)
    mixes = [p for p in sizing.points if p.shape.also]
    print(
        f"  {len(sizing.points)} shapes planned in {sizing.seconds:.1f} s, {len(mixes)} of them mixed; "
        f"mixes on the front: {sum(bool(p.shape.also) for p in sizing.front)}"
    )
    meeting = sorted((p for p in mixes if p.fits and p.hours <= 720.0), key=lambda p: p.cost_usd)[:3]
    for p in meeting:
        print(f"  a cheap mix meeting it: {p.shape.short_form:<28} {p.hours:>6,.0f} h  ${p.cost_usd:>10,.0f}")
    for p in sizing.front:
        print(f"  front: {p.shape.short_form:<28} {p.hours:>6,.0f} h  ${p.cost_usd:>10,.0f}")


PARTS = "abcde"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the smaller sizes")
    parser.add_argument("--only", choices=list(PARTS), help="one part")
    args = parser.parse_args()
    parts = args.only or PARTS
    if "a" in parts:
        if args.quick:
            part_a([100, 1000], ["h100:8", "h100:8x8"])
        else:
            part_a([100, 1000, 10000], ["h100:8", "h100:8x8", "h100:8x64"])
        heuristic_gap([20, 50, 100], "h100:8", pp=8, m=16)
    if "b" in parts:
        part_b([4, 8])
    if "c" in parts:
        part_c()
    if "d" in parts:
        part_d()
    if "e" in parts:
        part_e()


if __name__ == "__main__":
    main()
