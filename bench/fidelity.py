"""How good are the predictions? Profile, plan, train for real, compare.

    python bench/fidelity.py [--rounds 3] [--steps 12] [--split-steps 8] [--only fidelity|split]

1. Fidelity. Each model is profiled first (`runtime.measure.profiling`: its blocks at the micro-batch
   sizes the plans use, the optimizer, this machine's links, the schedules' host work); the
   planner makes each plan with that profile (`search(..., profile=...)`, the family pinned).
   Then, in each round, each model's plans are trained in turn (`python -m runtime run`, 1
   thread per rank, gloo) right after a profile of the model taken for that round (the
   first round's is the first profile), and each run is priced with that profile: this
   machine's speed drifts by 10-30% over minutes, and a profile prices the moment it
   caught. Nothing else feeds the predictions: no step time of the runs is used to fit
   anything. Each figure printed is the median over the rounds of the predictions, of the
   measurements (`runtime.measure.compare`: medians over a run's steps after the warm-up)
   and of each round's error (its prediction against its own run). Plans on 2 ranks are
   timed; plans on 4 ranks (more than this machine's 2 cores, the sharing modelled by the
   planner) are in a table of their own.
2. Split comparison: a GPT with vocab 16384, d_model 256, 8 blocks, untied embedding and
   head, batch 16 x 128 tokens, as a 2-stage pipeline on cpu:2 with 8 micro-batches, GPipe
   and 1F1B, trained with the planner's split, Megatron's even split of the blocks,
   DeepSpeed's parameter-balanced split and every other split point. Measured samples/s
   relative to the best split, next to the predicted ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_plan import run_plan
from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import resolve_cluster
from planner.cost.price import Pricer
from planner.plan import Plan
from planner.precision import Precision
from planner.profile import Profile
from planner.search.build import make_plan, model_blocks
from planner.search.partition import min_bottleneck_cuts
from planner.search.search import search
from runtime.measure import compare
from runtime.measure.profiling import make_profile
from runtime.supervise import store

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mlp": ({"hidden": [1024, 1024, 1024, 1024]}, 256),
    "cnn": ({"channels": [32, 64, 64]}, 128),
    "gpt": ({"size": "1m"}, 16),
    "gan": ({"hidden": 1024}, 256),
}
SPLIT_GPT = {"vocab_size": 16384, "d_model": 256, "n_layer": 8, "n_head": 4, "seq_len": 128}
SPLIT_BATCH, SPLIT_M = 16, 8
TRAINING = {"optimizer": {"name": "adamw", "lr": 1e-3}}


@dataclass
class Case:
    name: str
    model: str
    cluster: str
    dp: int
    pp: int
    choices: dict = field(default_factory=dict)  # strategy, schedule, micro_batches, levers
    precision: str = "fp32"
    tp: int = 1


# A table, one plan per line, aligned by hand.
CASES = [
    Case("MLP DP x2", "mlp", "cpu:2", 2, 1, dict(strategy="dp")),
    Case("MLP PP2 GPipe m4", "mlp", "cpu:2", 1, 2, dict(strategy="pp", schedule="gpipe", micro_batches=4)),
    Case("CNN DP x2", "cnn", "cpu:2", 2, 1, dict(strategy="dp")),
    Case("CNN PP2 1F1B m4", "cnn", "cpu:2", 1, 2, dict(strategy="pp", schedule="1f1b", micro_batches=4)),
    Case("GPT DP x2", "gpt", "cpu:2", 2, 1, dict(strategy="dp")),
    Case("GPT PP2 GPipe m4", "gpt", "cpu:2", 1, 2, dict(strategy="pp", schedule="gpipe", micro_batches=4)),
    Case("GPT PP2 1F1B m4", "gpt", "cpu:2", 1, 2, dict(strategy="pp", schedule="1f1b", micro_batches=4)),
    Case("GPT PP2 1F1B m8", "gpt", "cpu:2", 1, 2, dict(strategy="pp", schedule="1f1b", micro_batches=8)),
    Case("GPT PP2 interleaved v2 m4", "gpt", "cpu:2", 1, 2,
         dict(strategy="pp", schedule="interleaved_1f1b", micro_batches=4)),
    Case("GPT DP x2 bf16-mixed", "gpt", "cpu:2", 2, 1, dict(strategy="dp"), "bf16-mixed"),
    Case("GPT PP2 1F1B m4 bf16-mixed", "gpt", "cpu:2", 1, 2,
         dict(strategy="pp", schedule="1f1b", micro_batches=4), "bf16-mixed"),
    Case("GPT DP x2 ZeRO-2", "gpt", "cpu:2", 2, 1, dict(strategy="dp", dp_mode="shard_grad_op")),
    Case("GPT DP x2 ZeRO-3", "gpt", "cpu:2", 2, 1, dict(strategy="dp", dp_mode="full_shard")),
    Case("GPT DP x2 recompute", "gpt", "cpu:2", 2, 1, dict(strategy="dp", recompute="full")),
    Case("GPT DP x2 ZeRO-3 every-2", "gpt", "cpu:2", 2, 1,
         dict(strategy="dp", dp_mode="full_shard", recompute="every-2")),
    Case("MLP DP x2 ZeRO-3", "mlp", "cpu:2", 2, 1, dict(strategy="dp", dp_mode="full_shard")),
    Case("GPT PP2 1F1B m4 recompute", "gpt", "cpu:2", 1, 2,
         dict(strategy="pp", schedule="1f1b", micro_batches=4, recompute="full")),
    Case("GAN G|D", "gan", "cpu:2", 1, 2, dict(strategy="mp")),
    Case("GAN DP x2", "gan", "cpu:2", 2, 1, dict(strategy="dp")),
    Case("GPT TP2", "gpt", "cpu:2", 1, 1, dict(strategy="dp"), tp=2),
    Case("GPT DP2 x TP2", "gpt", "cpu:4", 2, 1, dict(strategy="dp"), tp=2),
    Case("GPT DP2 x PP2 1F1B m4", "gpt", "cpu:4", 2, 2,
         dict(strategy="hybrid", schedule="1f1b", micro_batches=4)),
    Case("GPT DP2 x PP2 1F1B m4 ZeRO-3", "gpt", "cpu:4", 2, 2,
         dict(strategy="hybrid", schedule="1f1b", micro_batches=4, dp_mode="full_shard")),
    Case("MLP DP x4", "mlp", "cpu:4", 4, 1, dict(strategy="dp")),
    Case("GPT PP4 GPipe m8", "gpt", "cpu:4", 1, 4, dict(strategy="pp", schedule="gpipe", micro_batches=8)),
]  # fmt: skip


def graph_of(source: str, overrides: dict):
    return coarsen(trace(source, overrides))


def micro_batch_sizes(model: str) -> list[int]:
    batch = MODELS[model][1]
    sizes = set()
    for c in CASES:
        if c.model == model:
            m = c.choices.get("micro_batches", 1)
            sizes.add(batch // c.dp // m if c.choices["strategy"] != "mp" else batch)
    return sorted(sizes)


def plan_for(case: Case, graph, profile) -> Plan:
    """The planner's best plan of the case's family, made with the measured profile."""
    cluster = resolve_cluster(case.cluster)
    batch = MODELS[case.model][1]
    training = {**TRAINING, "precision": case.precision}
    if case.choices["strategy"] == "dp":  # nothing to split; search would also offer 1 rank
        levers = {k: v for k, v in case.choices.items() if k in ("dp_mode", "recompute")}
        plan = make_plan(
            graph,
            cluster,
            strategy="dp",
            dp_degree=case.dp,
            tp_degree=case.tp,
            global_batch=batch,
            training=training,
            **levers,
        )
        return plan.model_copy(update={"predicted": Pricer(graph, cluster, profile)(plan).to_predicted()})
    result = search(graph, cluster, global_batch=batch, training=training, profile=profile, **case.choices)
    for c in result.candidates:
        if c.feasible and c.plan.dp_degree == case.dp and c.plan.pp_degree == case.pp:
            return c.plan
    raise SystemExit(f"{case.name}: the planner priced no feasible dp{case.dp} x pp{case.pp} plan")


def train(plan: Plan, steps: int, runs_dir: Path, work: Path) -> str:
    """Train for real with the runtime; return the run id."""
    return run_plan(plan, steps, runs_dir, work)[0]


def pooled(runs_dir: Path, run_ids: list[str]) -> dict:
    """Measured figures over all rounds: medians of every post-warm-up step of every run."""
    conn = store.connect(runs_dir)
    metrics = []
    for run_id in run_ids:
        rows, _ = store.read_metrics(conn, run_id)
        metrics += compare_rows(rows)
    return compare.measured_figures(metrics, warmup=0)


def compare_rows(rows: list[store.Metric]) -> list[store.Metric]:
    """One run's rows after its warm-up (dropped per run, before pooling)."""
    steps = sorted({m.step for m in rows if m.rank == store.STEP_RANK and m.name == "step_time_s"})
    first = steps[compare.WARMUP] if len(steps) > compare.WARMUP else float("inf")
    return [m for m in rows if m.step >= first or m.name in compare.MEMORY_FIGURES]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:8.1f}"


def measure(model: str, precision: str) -> Profile:
    """A profile of the model on this machine (`runtime.measure.profiling`)."""
    sizes = micro_batch_sizes(model)
    cluster = resolve_cluster("cpu:2")
    return make_profile(model, MODELS[model][0], cluster, sizes, repeats=15, precision=Precision(precision))


def fidelity(args, runs_dir: Path, work: Path) -> None:
    graphs: dict[str, object] = {}
    measured: dict[tuple[str, str], list[Profile]] = {}
    print(
        "profiles: one before the runs (the planner picks the plans with it), then one before each "
        "model's runs in every round; a run is priced with the profile taken just before it (this "
        "machine's speed drifts by 10-30% over minutes). Nothing is fitted to the runs."
    )
    cases = [c for c in CASES if any(part in c.name for part in args.cases.split(","))]
    keys = list(dict.fromkeys((c.model, c.precision) for c in cases))
    for model, _ in keys:
        graphs[model] = graph_of(model, MODELS[model][0])
    for key in keys:
        measured[key] = [measure(*key)]
    plans = {c.name: plan_for(c, graphs[c.model], measured[c.model, c.precision][0]) for c in cases}
    rounds: dict[str, list[list[compare.Comparison]]] = {c.name: [] for c in cases}
    for r in range(args.rounds):
        for key in keys:
            if r > 0:  # the first round takes the profile just made
                measured[key].append(measure(*key))
            profile = measured[key][-1]
            compare.save_profile(profile, runs_dir)
            for c in [c for c in cases if (c.model, c.precision) == key]:
                run_id = train(plans[c.name], args.steps, runs_dir, work)
                datasheet, calibrated = compare.predictions(plans[c.name], graphs[c.model], profile)
                measured_now = pooled(runs_dir, [run_id])
                rounds[c.name].append(compare.combine(plans[c.name], datasheet, calibrated, measured_now))
                print(f"  round {r + 1}/{args.rounds}: {c.name} done", file=sys.stderr, flush=True)
    for (model, precision), found in measured.items():
        steps = [sum(b.forward_s + b.backward_s for b in p.blocks) for p in found]
        spread = max(steps) / min(steps) - 1
        print(
            f"  {model:4s} {precision:10s} first profile sha256 {found[0].digest()}  sizes "
            f"{micro_batch_sizes(model)}  blocks' time spread {spread:.0%} over {len(steps)} profiles"
        )
    results = {name: over_rounds(comparisons) for name, comparisons in rounds.items()}
    for title, cores, targets in (
        ("2 ranks x 1 thread (timed)", "cpu:2", "targets 5% / 10% / within +-2%"),
        ("4 ranks on 2 cores (shared, modelled)", "cpu:4", "target: median 15%"),
    ):
        if any(c.cluster == cores for c in cases):
            table(title, [c for c in cases if c.cluster == cores], results, targets)
    per_rank([c for c in cases if c.cluster == "cpu:2"], results)
    ranking([c for c in cases if c.cluster == "cpu:2"], results)
    steadiness([c for c in cases if c.cluster == "cpu:2"], rounds)


@dataclass
class OverRounds:
    """One figure of a plan over the rounds: the medians of its predictions and measurements,
    and the median of each round's error (its prediction against its own run)."""

    rank: int
    name: str
    datasheet: float | None
    predicted: float | None
    measured: float | None
    error: float | None


def over_rounds(rounds: list[list[compare.Comparison]]) -> list[OverRounds]:
    """Each figure's medians over the rounds, which compare the same keys in the same order."""

    def median(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    figures = []
    for same in zip(*rounds, strict=True):
        first = same[0]
        predicted, measured = median([x.predicted for x in same]), median([x.measured for x in same])
        figures.append(
            OverRounds(
                first.rank, first.name, first.datasheet, predicted, measured, median([x.error for x in same])
            )
        )
    return figures


def table(title: str, cases: list[Case], results: dict, targets: str) -> None:
    """Per plan: step time, bubble, and the tensor memory of the rank the model gets most wrong."""
    print(f"\n{title}")
    print(
        f"{'plan':28s} {'step ms: datasheet':>18s} {'calibrated':>10s} {'measured':>9s} "
        f"{'error':>7s}   {'bubble: pred':>12s} {'meas':>6s}   {'tensor MiB: pred':>16s} "
        f"{'meas':>6s} {'error':>7s}"
    )
    step_err, signed, bubble_err, mem_err = [], [], [], []
    for c in cases:
        by = {(x.rank, x.name): x for x in results[c.name]}
        step, bubble = by[(-1, "step_time_s")], by[(-1, "bubble_fraction")]
        memory = [x for x in results[c.name] if x.name == "tensor_memory_bytes" and x.error is not None]
        worst = max(memory, key=lambda x: abs(x.error))  # the rank the model gets most wrong
        step_err.append(abs(step.error))
        signed.append(step.error)
        bubble_err.append(abs(bubble.error))
        mem_err += [abs(x.error) for x in memory]
        print(
            f"{c.name:28s} {ms(step.datasheet):>18s} {ms(step.predicted):>10s} "
            f"{ms(step.measured):>9s} {pct(step.error):>7s}   {bubble.predicted:12.1%} "
            f"{bubble.measured:6.1%}   {worst.predicted / 2**20:16.1f} {worst.measured / 2**20:6.1f} "
            f"{pct(worst.error):>7s}"
        )
    p90 = float(np.percentile(step_err, 90))
    print(
        f"step time |error|: median {statistics.median(step_err):.1%}, p90 {p90:.1%}, signed mean "
        f"{statistics.fmean(signed):+.1%} ({targets}); bubble |error|: median "
        f"{statistics.median(bubble_err) * 100:.1f} points;"
        f" tensor memory |error| per rank: median {statistics.median(mem_err):.1%},"
        f" max {max(mem_err):.1%} (target 15%)"
    )


PER_RANK = {
    "compute_s": "compute",
    "optimizer_s": "optimizer",
    "wait_s": "wait",
    "peer_wait_s": "peer",
    "communication_s": "comm",
    "idle_end_s": "end",
    "host_s": "host",
}


def per_rank(cases: list[Case], results: dict) -> None:
    """Where each plan's step goes, rank by rank: predicted (calibrated) and measured."""
    print(
        "\nPer rank, ms a step, predicted / measured: compute (forward, loss, backward), optimizer, "
        "wait = peer (waiting for a peer's data) + comm (communication not hidden) + end (idle at "
        "the step's end) + host (the step's host work: posting, the schedule's bookkeeping)"
    )
    print(f"  {'plan':28s} rank " + "".join(f"{label:>14s}" for label in PER_RANK.values()))
    for c in cases:
        by = {(x.rank, x.name): x for x in results[c.name]}
        for rank in sorted({r for r, _ in by if r >= 0}):
            cells = "".join(f"{cell(by[(rank, name)]):>14s}" for name in PER_RANK)
            print(f"  {c.name:28s} {rank:4d} {cells}")


def cell(x) -> str:
    """predicted/measured in ms, one decimal."""
    short = [("-" if v is None else f"{v * 1e3:.1f}") for v in (x.predicted, x.measured)]
    return "/".join(short)


def ranking(cases: list[Case], results: dict) -> None:
    print("\nIs the plan ranked first by prediction the fastest measured (or within 5%)?")
    for model in MODELS:
        group = [c for c in cases if c.model == model]
        if len(group) < 2:
            continue
        step = {c.name: {(x.rank, x.name): x for x in results[c.name]}[(-1, "step_time_s")] for c in group}
        first = min(group, key=lambda c: step[c.name].predicted).name
        fastest = min(group, key=lambda c: step[c.name].measured).name
        gap = step[first].measured / step[fastest].measured - 1
        verdict = "yes" if first == fastest else ("within 5%" if gap <= 0.05 else "NO")
        print(f"  {model}: predicted first {first!r}, measured fastest {fastest!r} ({gap:+.1%}): {verdict}")


def steadiness(cases: list[Case], rounds: dict[str, list[list[compare.Comparison]]]) -> None:
    """How steady this machine is: a floor under any prediction's error, from the same runs.

    A data-parallel rank of the MLP, CNN or GPT computes the whole model's forward and backward
    at one micro-batch size, the very work the profile timed just before the round (the
    GAN's step runs its players apart, so it is left out); its two ranks do the same work
    in the same steps; and every plan ran once per round with nothing changed."""
    whole = [c for c in cases if c.pp == 1 and c.model != "gan"]
    profiled, ranks, spread = [], [], []
    for c in cases:
        steps = [x.measured for one in rounds[c.name] for x in one if (x.rank, x.name) == (-1, "step_time_s")]
        if len(steps) > 1:
            spread.append(max(steps) / min(steps) - 1)
    for c in whole:
        for one in rounds[c.name]:
            compute = [x for x in one if x.name == "compute_s" and x.rank >= 0 and x.error is not None]
            profiled += [abs(x.error) for x in compute]
            measured = [x.measured for x in compute]
            if len(measured) > 1:
                ranks.append(max(measured) / min(measured) - 1)
    print("\nHow steady is this machine? (a floor under any prediction's error)")
    for label, values in (
        ("a plan's measured step time, from round to round (max / min - 1)", spread),
        ("a data-parallel plan's two ranks, the same work in the same run: their compute apart", ranks),
        ("a data-parallel rank's compute against the profile's whole-model timing: |error|", profiled),
    ):
        if values:
            print(
                f"  {label}: median {statistics.median(values):.1%}, max {max(values):.1%} "
                f"({len(values)} figures)"
            )


def split_plans(graph, profile, schedule: str) -> list[tuple[str, Plan]]:
    """(label, plan) for every split point of the 2-stage pipeline, the named ones first."""
    cluster = resolve_cluster("cpu:2")
    blocks = model_blocks(graph)
    common = dict(
        strategy="pp",
        pp_degree=2,
        schedule=schedule,
        micro_batches=SPLIT_M,
        global_batch=SPLIT_BATCH,
        training=TRAINING,
    )
    planner = search(
        graph,
        cluster,
        global_batch=SPLIT_BATCH,
        strategy="pp",
        schedule=schedule,
        micro_batches=SPLIT_M,
        training=TRAINING,
        profile=profile,
    ).best.plan
    planner_cut = blocks.index(planner.stages[1].first)
    # Megatron: the transformer layers evenly, embedding on the first stage, head on the last.
    layers = [i for i, b in enumerate(blocks) if b.startswith("blocks.")]
    megatron_cut = layers[len(layers) // 2]
    # DeepSpeed partition_method="parameters": balance parameter counts.
    params = [graph.nodes[b]["param_bytes"] for b in blocks]
    deepspeed_cut = min_bottleneck_cuts([params, params])[0]
    named: dict[int, list[str]] = {}
    for cut, name in (
        (planner_cut, "(a) planner"),
        (megatron_cut, "(b) Megatron even"),
        (deepspeed_cut, "(c) DeepSpeed params"),
    ):
        named.setdefault(cut, []).append(name)
    out = []
    for cut in range(1, len(blocks)):
        label = " = ".join(named.get(cut, ["(d)"]))
        plan = make_plan(graph, cluster, cuts=[cut], **common)
        out.append((f"{label}: {cut} blocks | {len(blocks) - cut}", plan))
    return out


def splits(args, runs_dir: Path, work: Path) -> None:
    graph = graph_of("gpt", SPLIT_GPT)
    profile = make_profile("gpt", SPLIT_GPT, resolve_cluster("cpu:2"), [SPLIT_BATCH // SPLIT_M], repeats=15)
    compare.save_profile(profile, runs_dir)
    print(
        f"\nSplit comparison: GPT vocab 16384, d_model 256, 8 blocks, untied; batch 16 x 128 tokens; "
        f"2 stages on cpu:2, m = 8. Profile sha256 {profile.digest()}"
    )
    pricer = Pricer(graph, resolve_cluster("cpu:2"), profile)
    for schedule in ("gpipe", "1f1b"):
        cases = split_plans(graph, profile, schedule)
        runs: dict[str, list[str]] = {label: [] for label, _ in cases}
        for r in range(args.rounds):
            for label, plan in cases:
                runs[label].append(train(plan, args.split_steps, runs_dir, work))
            print(f"  {schedule} round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        predicted = {label: pricer(plan).samples_per_s for label, plan in cases}
        measured = {
            label: SPLIT_BATCH / pooled(runs_dir, runs[label])[(-1, "step_time_s")] for label, _ in cases
        }
        best_p, best_m = max(predicted.values()), max(measured.values())
        print(f"\n{schedule}: samples/s relative to the best split (1.00 = best)")
        print(f"{'split':56s} {'predicted':>9s} {'measured':>9s} {'samples/s':>10s}")
        for label, _ in cases:
            ratios = f"{predicted[label] / best_p:9.2f} {measured[label] / best_m:9.2f}"
            print(f"{label:56s} {ratios} {measured[label]:10.2f}")
        planner = next(label for label, _ in cases if "(a)" in label)
        worst = min(measured.values())
        print(
            f"planner's split: {best_m / measured[planner]:.3f}x the best measured time "
            f"(target within 1.05x); worst split {best_m / worst:.2f}x"
        )
        named = (next(label for label, _ in cases if name in label) for name in ("(b)", "(c)"))
        defaults = dict.fromkeys(named)
        for label in defaults:  # once when both defaults cut in the same place
            print(f"{label.split(':')[0]}: {best_m / measured[label]:.2f}x slower than the best")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times every plan is run, in turn")
    parser.add_argument("--steps", type=int, default=12, help="steps per fidelity run")
    parser.add_argument("--split-steps", type=int, default=8, help="steps per split-comparison run")
    parser.add_argument("--only", choices=("fidelity", "split"))
    parser.add_argument(
        "--cases",
        default="",
        help="fidelity: only plans whose name contains this (or one of these, comma-separated)",
    )
    args = parser.parse_args()
    import torch

    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores; warm-up {compare.WARMUP} steps per run; "
        f"{args.rounds} rounds"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs_dir = work / "runs"
        if args.only in (None, "fidelity"):
            fidelity(args, runs_dir, work)
        if args.only in (None, "split"):
            splits(args, runs_dir, work)


if __name__ == "__main__":
    main()
