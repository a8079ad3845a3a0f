"""Where a step's time goes, event by event: the runtime's timeline next to the simulator's.

    python bench/waits.py [--cases "GPT PP2"] [--steps 10]

For each plan of `bench/fidelity.py` whose name contains ``--cases``: profile the model,
train the plan for real with every rank recording its timeline (``STAGECRAFT_TIMELINE``,
`runtime.rank.timeline`: each compute span, each batch of sends and receives posted, each
wait, the optimizer), and price it with the simulator (`planner.cost.price`). Printed per
plan and rank, in ms a step: compute, optimizer, and the wait in parts (waiting for a peer's
data, communication not hidden, idle at the step's end, host work: posting and the
schedule's own bookkeeping), predicted / measured (the run's stored figures, medians over
the steps after the warm-up, as `bench/fidelity.py` compares them); then one step drawn
as lanes, measured above simulated, one character per 1/100 of the step:

    F/B  forward / backward (simulated)     #  compute (measured)
    .    waiting for a peer's data          s  waiting for its own sends or reductions
    p    posting sends and receives         o  optimizer
    ' '  host work, or idle at the end

The measured lanes line up across ranks: every rank stamps its steps on the machine's
monotonic clock. Nothing here feeds the predictions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fidelity import CASES, MODELS, graph_of, measure, plan_for
from bench.run_plan import run_plan
from planner.cost.price import Pricer
from runtime.measure.compare import WARMUP, measured_figures, predicted_figures
from runtime.rank.timeline import TIMELINE_ENV
from runtime.supervise import store

WIDTH = 100
PARTS = ("compute_s", "optimizer_s", "peer_wait_s", "communication_s", "idle_end_s", "host_s")
LABELS = ("compute", "optimizer", "peer", "comm", "end", "host")


def load(folder: Path, ranks: int) -> list[list[dict]]:
    """Per rank, its recorded steps after the warm-up."""
    return [json.loads((folder / f"rank{r}.json").read_text())["steps"][WARMUP:] for r in range(ranks)]


def table(ranks: int, predicted: dict, measured: dict) -> None:
    """Predicted / measured parts per rank: the run's stored figures, as the fidelity bench
    compares them (`runtime.measure.compare`)."""
    print(f"  {'rank':4s}" + "".join(f"{label:>16s}" for label in LABELS))
    for r in range(ranks):
        cells = [f"{predicted[(r, n)] * 1e3:.1f}/{measured.get((r, n), math.nan) * 1e3:.1f}" for n in PARTS]
        print(f"  {r:4d}" + "".join(f"{c:>16s}" for c in cells))


def lanes(steps: list[list[dict]], prediction, step_s: float) -> None:
    """The middle step drawn per rank: measured lane, then simulated lane."""
    k = len(steps[0]) // 2
    origin = min(rank[k]["at"] for rank in steps)
    span = max(rank[k]["at"] + rank[k]["end"] for rank in steps) - origin
    scale = max(span, step_s) / WIDTH
    print(f"  step {steps[0][k]['step']}: one character = {scale * 1e3:.2f} ms; measured above simulated")
    for r, rank in enumerate(steps):
        line = [" "] * WIDTH
        offset = rank[k]["at"] - origin
        for e in rank[k]["events"]:
            mark = {"compute": "#", "optimizer": "o", "post": "p"}.get(e["kind"])
            if e["kind"] == "wait":
                mark = "." if e.get("cause") == "peer" else "s"
            paint(line, offset + e["start"], offset + e["end"], mark, scale)
        print(f"  rank {r} measured  |{''.join(line)}|")
        line = [" "] * WIDTH
        for i in prediction.timeline:
            if i.rank != r:
                continue
            mark = {"forward": "F", "backward": "B", "optimizer": "o"}.get(i.kind)
            if i.kind == "idle" and i.waiting_for != "end":
                mark = "." if i.waiting_for == "peer" else "s"
            if mark:
                paint(line, i.start, i.end, mark, scale)
        print(f"  rank {r} simulated |{''.join(line)}|")


def paint(line: list[str], start: float, end: float, mark: str | None, scale: float) -> None:
    if mark is None:
        return
    for i in range(max(int(start / scale), 0), min(int(end / scale) + 1, len(line))):
        line[i] = mark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default="GPT PP2", help="plans of bench/fidelity.py whose name contains this"
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per run (the first are warm-up)")
    args = parser.parse_args()
    cases = [c for c in CASES if args.cases in c.name]
    if not cases:
        raise SystemExit(f"no plan of bench/fidelity.py has {args.cases!r} in its name")
    profiles, graphs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for c in cases:
            key = (c.model, c.precision)
            if key not in profiles:
                profiles[key] = measure(*key)
                graphs[c.model] = graph_of(c.model, MODELS[c.model][0])
            plan = plan_for(c, graphs[c.model], profiles[key])
            prediction = Pricer(graphs[c.model], plan.cluster, profiles[key])(plan)
            folder = work / f"timeline-{len(os.listdir(work))}"
            os.environ[TIMELINE_ENV] = str(folder)
            try:
                run_id, _ = run_plan(plan, args.steps, work / "runs", work)
            finally:
                del os.environ[TIMELINE_ENV]
            metrics, _ = store.read_metrics(store.connect(work / "runs"), run_id)
            measured = measured_figures(metrics)
            print(
                f"\n{c.name}: step predicted {prediction.step_time_s * 1e3:.1f} ms, measured "
                f"{measured[(store.STEP_RANK, 'step_time_s')] * 1e3:.1f} (slowest rank, median of steps "
                f"{WARMUP + 1}-{args.steps})"
            )
            print("  ms a step, predicted/measured")
            table(len(plan.ranks), predicted_figures(plan, prediction), measured)
            lanes(load(folder, len(plan.ranks)), prediction, prediction.step_time_s)


if __name__ == "__main__":
    main()
