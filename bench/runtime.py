"""The runtime's own cost: samples/s of its runs against hand-written torch baselines.

    python bench/runtime.py [--repeats 5] [--steps 60]

For each configuration (2 ranks x 1 thread, gloo), the same plan is trained by
`runtime.rank.worker` and by `bench/baseline_worker.py` (a plain DDP loop; torch.distributed.
pipelining used directly), launched alternately, ``--repeats`` times each. Throughput is
taken from the wall clock at the end of each step on every rank, over the steps after
the first quarter (warm-up), so it includes everything the runtime adds: compute hooks,
data slicing, the metrics all-gather and the database writes. Both fix glibc's malloc
thresholds as the runtime's ranks do (`runtime.rank.host_allocator`), so the ratio compares the
runtimes, not two allocator states. Prints the median samples/s
of each, their ratio (target >= 0.97), and the runtime's own measure of metrics logging
as a share of step time (target < 1%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import parse_short_form
from planner.plan import Plan, save_plan
from planner.search.build import make_plan
from runtime.supervise import store

ROOT = Path(__file__).resolve().parents[1]
GPT_1M = {"size": "1m"}
CONFIGS = [
    ("DDP x2, GPT 1m, batch 16", dict(strategy="dp", dp_degree=2)),
    (
        "GPipe 2 stages, m=4, GPT 1m, batch 16",
        dict(strategy="pp", pp_degree=2, schedule="gpipe", micro_batches=4),
    ),
    (
        "1F1B 2 stages, m=4, GPT 1m, batch 16",
        dict(strategy="pp", pp_degree=2, schedule="1f1b", micro_batches=4),
    ),
]


def start_ranks(cmd_for_rank, world: int, tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)  # holds the file:// rendezvous
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(world)}
    procs = [
        subprocess.Popen(
            cmd_for_rank(r),
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode:
            raise SystemExit(f"a rank failed:\n{out[-2000:]}")


def throughput(step_ends: list[list[float]], batch: int) -> float:
    """Samples/s over the steps after the first quarter; a step ends when its last rank does."""
    ends = [max(ts) for ts in zip(*step_ends, strict=True)]
    first = len(ends) // 4
    return batch * (len(ends) - 1 - first) / (ends[-1] - ends[first])


def run_ours(plan_path: Path, plan: Plan, steps: int, tmp: Path) -> tuple[float, float]:
    runs = tmp / "runs"
    init = f"file://{tmp / 'rdv'}"
    start_ranks(
        lambda r: [
            sys.executable,
            "-m",
            "runtime.rank.worker",
            "--plan",
            str(plan_path),
            "--run-id",
            "bench",
            "--runs-dir",
            str(runs),
            "--steps",
            str(steps),
            "--init-method",
            init,
        ],
        len(plan.ranks),
        tmp,
    )
    metrics, _ = store.read_metrics(store.connect(runs), "bench", names=["step_time_s", "logging_fraction"])
    per_rank: dict[int, dict[int, float]] = {}
    logging = 0.0
    for m in metrics:
        if m.name == "logging_fraction":
            logging = m.value
        elif m.rank >= 0:
            per_rank.setdefault(m.rank, {})[m.step] = m.time
    ends = [[per_rank[r][s] for s in sorted(per_rank[r])] for r in sorted(per_rank)]
    return throughput(ends, plan.training.global_batch), logging


def run_baseline(plan_path: Path, plan: Plan, steps: int, tmp: Path) -> float:
    out = tmp / "baseline"
    init = f"file://{tmp / 'rdv-baseline'}"
    start_ranks(
        lambda r: [
            sys.executable,
            str(ROOT / "bench" / "baseline_worker.py"),
            "--plan",
            str(plan_path),
            "--steps",
            str(steps),
            "--init-method",
            init,
            "--out",
            str(out),
        ],
        len(plan.ranks),
        tmp,
    )
    ends = [json.loads((out / f"rank{r}.json").read_text()) for r in range(len(plan.ranks))]
    return throughput(ends, plan.training.global_batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    graph = coarsen(trace("gpt", GPT_1M))
    header = ("configuration", "runtime", "baseline", "ratio", "range", "logging")
    print("{:42s} {:>12s} {:>12s} {:>7s} {:>13s} {:>8s}".format(*header))
    for name, choices in CONFIGS:
        plan = make_plan(
            graph, parse_short_form("cpu:2"), global_batch=16, training={"steps": args.steps}, **choices
        )
        ours, base, logging = [], [], []
        with tempfile.TemporaryDirectory() as tmpdir:
            plan_path = Path(tmpdir) / "plan.json"
            save_plan(plan, plan_path)
            for i in range(args.repeats):  # interleaved: slow stretches of the machine hit both
                t, lf = run_ours(plan_path, plan, args.steps, Path(tmpdir) / f"ours{i}")
                ours.append(t)
                logging.append(lf)
                base.append(run_baseline(plan_path, plan, args.steps, Path(tmpdir) / f"base{i}"))
        o, b = statistics.median(ours), statistics.median(base)
        ratios = sorted(x / y for x, y in zip(ours, base, strict=True))  # back-to-back pairs
        spread = f"{ratios[0]:.3f}-{ratios[-1]:.3f}"
        print(
            f"{name:42s} {o:9.1f}/s {b:9.1f}/s {statistics.median(ratios):7.3f} {spread:>13s}"
            f" {100 * statistics.median(logging):7.2f}%"
        )
    print(
        "samples/s: median over runs; ratio: median over back-to-back pairs of runtime / baseline"
        " (target >= 0.97), with its range; logging: metrics gather + database writes / step time"
        " (target < 1%)"
    )


if __name__ == "__main__":
    main()
