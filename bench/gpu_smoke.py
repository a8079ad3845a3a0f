"""The GPU path, once: the zoo GPT at 125M parameters in bf16-mixed on one GPU.

    python bench/gpu_smoke.py [--steps 30] [--batch 8]

Plans the zoo GPT (`size=125m`, 1,024 tokens) as data parallel on one device of this GPU's
kind (H200, H100, A100 40 or 80 GB, L4, RTX 4090: matched by name and memory), trains it
for real with the runtime (`python -m runtime run`: nccl, `cuda:0`, torch.autocast to
bf16), and prints the measured step time and tensor peak (torch.cuda.max_memory_allocated)
next to the datasheet prediction. Under five minutes on one GPU. Exits 2, saying so, where
there is no GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.run_plan import run_plan
from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import resolve_cluster
from planner.search.build import make_plan
from runtime.measure import compare
from runtime.supervise import store

ROOT = Path(__file__).resolve().parents[1]
GPT = {"size": "125m"}


def gpu_kind() -> str:
    """This GPU's kind in the catalog (planner.devices), from its name and memory."""
    props = torch.cuda.get_device_properties(0)
    name, gib = props.name.upper(), props.total_memory / 2**30
    for key, kind in (("H200", "h200"), ("H100", "h100-80gb"), ("L4", "l4"), ("4090", "rtx4090")):
        if key in name:
            return kind
    if "A100" in name:
        return "a100-80gb" if gib > 45 else "a100-40gb"
    raise SystemExit(f"no catalog kind for {props.name!r} ({gib:.0f} GiB); add it to planner/devices.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU here: bench/gpu_smoke.py runs on a machine with one", file=sys.stderr)
        raise SystemExit(2)
    kind = gpu_kind()
    cluster = resolve_cluster(f"{kind}:1")
    graph = coarsen(trace("gpt", GPT))
    params = sum(graph.nodes[b]["param_count"] for b in graph.nodes)
    training = {"precision": "bf16-mixed", "steps": args.steps, "optimizer": {"name": "adamw", "lr": 1e-4}}
    plan = make_plan(graph, cluster, strategy="dp", dp_degree=1, global_batch=args.batch, training=training)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        run_id, _ = run_plan(plan, args.steps, runs, Path(tmp), timeout=600, one_thread=False)
        metrics, _ = store.read_metrics(store.connect(runs), run_id)
    rows = {(c.rank, c.name): c for c in compare.compare(plan, metrics, None, graph)}
    print(
        f"{torch.cuda.get_device_name(0)} as {kind}; torch {torch.__version__}; zoo GPT 125m "
        f"({params / 1e6:.0f}M parameters, 1,024 tokens), batch {args.batch}, bf16-mixed, AdamW, "
        f"{args.steps} steps (medians after {compare.WARMUP} warm-up steps)"
    )
    for key, label, unit, scale in (
        ((store.STEP_RANK, "step_time_s"), "step time", "ms", 1e3),
        ((store.STEP_RANK, "samples_per_s"), "samples/s", "", 1.0),
        ((0, "compute_s"), "compute", "ms", 1e3),
        ((0, "optimizer_s"), "optimizer", "ms", 1e3),
        ((0, "tensor_memory_bytes"), "tensor peak", "MiB", 2**-20),
    ):
        row = rows.get(key)
        if row is None or row.measured is None or not row.datasheet:
            continue
        predicted, measured = row.datasheet * scale, row.measured * scale
        error = row.measured / row.datasheet - 1
        print(
            f"  {label:12s} predicted {predicted:10.1f} {unit:3s}  "
            f"measured {measured:10.1f} {unit:3s}  ({error:+.1%})"
        )


if __name__ == "__main__":
    main()
