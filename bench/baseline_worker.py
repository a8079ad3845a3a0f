"""Hand-written torch baselines for bench/runtime.py: one rank, no Stagecraft runtime.

    python bench/baseline_worker.py --plan plan.json --steps N --init-method file://... --out DIR

A plain DDP loop for dp plans; for pp plans, `torch.distributed.pipelining` used directly
(`pipeline()` with the same split points, torch's schedule). Same model, seed and batches
as the runtime, so the two differ only in what the runtime adds around the step. Each
rank writes the wall-clock time at the end of every step to ``DIR/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, SplitPoint, pipeline
from torch.nn.parallel import DistributedDataParallel

from planner.plan import load_plan
from runtime.rank.host_allocator import fix_malloc_thresholds
from runtime.rank.model import build_full_model, make_optimizer
from runtime.rank.task import plan_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--init-method", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    fix_malloc_thresholds()  # as the runtime's worker does, for a fair ratio
    plan = load_plan(args.plan)
    dist.init_process_group(
        "gloo", init_method=args.init_method, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    full = build_full_model(plan)
    full.materialise(full.module, "cpu")
    task = plan_task(plan, full.config)
    B = plan.training.global_batch
    ends = []
    if plan.strategy == "dp":
        share = B // world
        model = DistributedDataParallel(full.module)
        optimizer = make_optimizer(plan, list(full.module.parameters()))
        for step in range(args.steps):
            x, y = task.batch(step, rank * share, share)
            optimizer.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            optimizer.step()
            ends.append(time.time())
    else:
        m = plan.training.micro_batches
        example = tuple(
            torch.zeros(B // m, *a.shape[1:], dtype=a.dtype) for a in full.example_args
        )  # real, not meta
        pipe = pipeline(full.module, mb_args=example, split_spec={plan.stages[1].first: SplitPoint.BEGINNING})
        stage = pipe.build_stage(rank, torch.device("cpu"))
        cls = ScheduleGPipe if plan.schedule == "gpipe" else Schedule1F1B
        schedule = cls(stage, n_microbatches=m, loss_fn=task.loss_fn)
        optimizer = make_optimizer(plan, list(stage.submod.parameters()))
        for step in range(args.steps):
            x, y = task.batch(step)
            optimizer.zero_grad(set_to_none=True)
            if rank == 0:
                schedule.step(x, return_outputs=False)
            else:
                schedule.step(target=y, losses=[], return_outputs=False)
            optimizer.step()
            ends.append(time.time())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(ends))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
