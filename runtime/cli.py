"""`python -m runtime`: run a plan.

    python -m runtime run plan.json [--steps N] [--runs-dir DIR] [--threads T]

Exit codes: 0 finished, 1 failed, 2 bad input (nothing was started), 3 stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import store
from runtime.launch import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime", description="Run a plan with torch.distributed."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("run", help="train a plan on this machine's ranks (torchrun --standalone)")
    p.add_argument("plan", type=Path, help="a plan JSON file (python -m planner plan -o plan.json)")
    p.add_argument("--steps", type=int, help="optimizer steps; default: the plan's training.steps")
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help=f"where runs.sqlite and the run folders live (default: ${store.RUNS_DIR_ENV} or ./runs)",
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    runs_dir = args.runs_dir or store.default_runs_dir()
    return run(args.plan, runs_dir=runs_dir, steps=args.steps, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
