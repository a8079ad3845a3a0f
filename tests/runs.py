"""Helpers for runtime tests: plans of small zoo models, and ranks started as processes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import parse_short_form
from planner.plan import Plan, save_plan
from planner.search.build import make_plan
from runtime.supervise import store

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def graph_of(source: str, overrides_json: str = "{}"):
    return coarsen(trace(source, json.loads(overrides_json)))


def zoo_plan(
    source: str, overrides: dict | None = None, *, ranks: int, training: dict | None = None, **choices
) -> Plan:
    """A plan for a zoo model on ``ranks`` CPU ranks, with explicit choices (see make_plan)."""
    graph = graph_of(source, json.dumps(overrides or {}, sort_keys=True))
    train = {"steps": 10, "optimizer": {"name": "adamw", "lr": 1e-3}, **(training or {})}
    return make_plan(graph, parse_short_form(f"cpu:{ranks}"), training=train, **choices)


def run_ranks(
    plan: Plan,
    tmp: Path,
    *,
    steps: int = 10,
    timeout: float = 240,
    runs: Path | None = None,
    resume_from: Path | None = None,
) -> Path:
    """Start one worker process per rank (file:// rendezvous, no torchrun) and wait for all.

    Returns the runs dir; final parameters are in ``<runs>/params/rank<r>.pt``.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    runs = runs or tmp / "runs"
    plan_path = tmp / "plan.json"
    save_plan(plan, plan_path)
    init = f"file://{tmp / 'rendezvous'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(len(plan.ranks))}
    procs = []
    for rank in range(len(plan.ranks)):
        cmd = [
            sys.executable,
            "-m",
            "runtime.rank.worker",
            "--plan",
            str(plan_path),
            "--run-id",
            "test",
            "--runs-dir",
            str(runs),
            "--steps",
            str(steps),
            "--init-method",
            init,
            "--save-parameters",
            str(runs / "params"),
            *(["--resume-from", str(resume_from)] if resume_from else []),
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    failed = [
        (r, p.returncode, out) for r, (p, out) in enumerate(zip(procs, outputs, strict=True)) if p.returncode
    ]
    assert not failed, "\n".join(f"rank {r} exited {code}:\n{out[-3000:]}" for r, code, out in failed)
    return runs


def step_losses(runs: Path, name: str = "loss") -> list[float]:
    conn = store.connect(runs)
    rows, _ = store.read_metrics(conn, "test", names=[name])
    return [m.value for m in sorted(rows, key=lambda m: m.step) if m.rank == store.STEP_RANK]


def rank_parameters(runs: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(runs / "params" / f"rank{rank}.pt", weights_only=True)
