"""Does each pipeline rank hold its own share, and only that? Memory, not time.

    python bench/memory.py [--precision fp32] [--stages 2 8] [--steps 3]

A zoo GPT of about 130M parameters (vocab 32000, d_model 768, 12 layers, 12 heads, 128
tokens) is cut into pipeline stages (GPipe, 4 micro-batches of one sample) on cpu:N and
trained for a few steps by the runtime (`python -m runtime run`; 8 ranks may share the 2
cores: nothing here is timed). For every rank it prints the price's terms for its own
stages (model states: weights, gradients, optimizer state and autocast's copies;
activations: saved activations, the loss's outputs, receive buffers, temporaries), the
tensor peak the rank measured (runtime.rank.tensor_memory) and its private memory
(runtime.rank.metrics), next to one process training the whole model on the same batch.

Target: every rank's measured tensor peak within 10% of its own priced share, with no
term for the whole model (ranks build it on the meta device and make only their own
stages real: runtime.rank.materialise).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_plan import run_plan
from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import resolve_cluster
from planner.cost.price import price
from planner.plan import Plan
from planner.search.build import make_plan
from runtime.supervise import store

ROOT = Path(__file__).resolve().parents[1]
GPT = {"vocab_size": 32000, "d_model": 768, "n_layer": 12, "n_head": 12, "seq_len": 128}
BATCH, MICRO_BATCHES = 4, 4
MiB = 2**20
STATES = ("parameters", "gradients", "optimizer", "casts")
ACTIVATIONS = ("activations", "loss_outputs", "buffers", "temporaries")


def run(plan: Plan, steps: int, work: Path) -> dict[int, dict[str, float]]:
    """Train ``plan`` with the runtime; per rank, its highest tensor and private peaks."""
    runs = work / "runs"
    run_id, stderr = run_plan(plan, steps, runs, work, timeout=3600)
    warnings = [line for line in stderr.splitlines() if "model states differ" in line]
    for line in warnings:
        print(f"  {line}")
    rows, _ = store.read_metrics(store.connect(runs), run_id)
    out: dict[int, dict[str, float]] = {}
    for m in rows:
        if m.rank >= 0 and m.name in ("tensor_memory_bytes", "dynamic_memory_bytes"):
            held = out.setdefault(m.rank, {})
            held[m.name] = max(held.get(m.name, 0.0), m.value)
    return out


def mib(x: float) -> str:
    return f"{x / MiB:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    graph = coarsen(trace("gpt", GPT))
    params = sum(graph.nodes[b]["param_count"] for b in graph.nodes)
    training = {"precision": args.precision, "optimizer": {"name": "adamw", "lr": 1e-4}}
    print(
        f"GPT vocab 32000, d_model 768, 12 layers, 128 tokens: {params / 1e6:.1f}M parameters; "
        f"batch {BATCH}, GPipe with {MICRO_BATCHES} micro-batches; {args.precision}, AdamW. MiB."
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        whole_plan = make_plan(
            graph, resolve_cluster("cpu:1"), strategy="dp", dp_degree=1, global_batch=BATCH, training=training
        )
        whole = run(whole_plan, args.steps, work)[0]
        priced_whole = price(graph, whole_plan.cluster, whole_plan).memory[0]
        print(
            f"\nOne process, the whole model: tensor peak {mib(whole['tensor_memory_bytes'])} "
            f"(priced {mib(priced_whole.total - priced_whole.overhead - priced_whole.runtime)}), "
            f"private {mib(whole['dynamic_memory_bytes'])}"
        )
        for stages in args.stages:
            cluster = resolve_cluster(f"cpu:{stages}")
            plan = make_plan(
                graph,
                cluster,
                strategy="pp",
                pp_degree=stages,
                schedule="gpipe",
                micro_batches=MICRO_BATCHES,
                global_batch=BATCH,
                training=training,
            )
            priced = price(graph, cluster, plan).memory
            measured = run(plan, args.steps, work)
            print(
                f"\nPP={stages}: rank, its blocks | priced: model states, activations, tensor total | "
                "measured: tensor peak (vs priced), private | tensor peak / the whole model's"
            )
            worst = 0.0
            for m in priced:
                stage = plan.stages[m.rank]
                terms = m.terms()
                states, acts = sum(terms[t] for t in STATES), sum(terms[t] for t in ACTIVATIONS)
                total = m.total - m.overhead - m.runtime
                got = measured[m.rank]
                peak = got["tensor_memory_bytes"]
                worst = max(worst, abs(peak / total - 1))
                print(
                    f"  {m.rank}  {stage.first + '..' + stage.last:34s} | {mib(states)} {mib(acts)} "
                    f"{mib(total)} | {mib(peak)} ({peak / total - 1:+6.1%}) "
                    f"{mib(got['dynamic_memory_bytes'])} | {peak / whole['tensor_memory_bytes']:5.2f}x"
                )
            verdict = "within" if worst <= 0.10 else "NOT within"
            print(f"  every rank {verdict} 10% of its own share (worst {worst:.1%})")


if __name__ == "__main__":
    main()
