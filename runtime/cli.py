"""`python -m runtime`: run plans and look after the runs.

    python -m runtime run plan.json [--steps N] [--runs-dir DIR] [--threads T] [--detach]
    python -m runtime list [--runs-dir DIR]
    python -m runtime stop RUN_ID [--runs-dir DIR]
    python -m runtime resume RUN_ID [--plan other.json] [--steps N] [--detach]
    python -m runtime command plan.json --nodes N --endpoint HOST:PORT
    python -m runtime profile --model SOURCE [--set k=v ...] [--cluster C] [-o profile.json]

Exit codes of run and resume: 0 finished, 1 failed, 2 bad input (nothing was started),
3 stopped; with --detach, 0 once the run is started (its id is printed). Every error is
one line; nothing prints a traceback. A plan naming a `py:` model runs only with
--allow-py MODULE (or $STAGECRAFT_ALLOWED_PY): importing it runs its code.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from planner.cli_args import OneLineParser, allow_py_option, answer, grant_consent
from planner.errors import PlanError
from planner.plan import load_plan
from planner.precision import Precision
from runtime.supervise import launch, multinode, store
from runtime.supervise.supervisor import EXIT_BAD_INPUT, supervise


def _runs_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help=f"where runs.sqlite and the run folders live (default: ${store.RUNS_DIR_ENV} or ./runs)",
    )


def _start_options(p: argparse.ArgumentParser) -> None:
    allow_py_option(p)
    p.add_argument(
        "--skip-model-check",
        action="store_true",
        help="do not trace the plan's model first (for a model too large to trace here)",
    )
    p.add_argument("--steps", type=int, help="optimizer steps in all; default: the plan's training.steps")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    p.add_argument("--detach", action="store_true", help="start the run, print its id and return")
    _runs_dir_option(p)


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog="python -m runtime", description="Run plans with torch.distributed.")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("run", help="train a plan on this machine's ranks (torchrun --standalone)")
    p.add_argument("plan", type=Path, help="a plan JSON file (python -m planner plan -o plan.json)")
    _start_options(p)
    p = commands.add_parser("resume", help="continue a stopped or failed run from its last checkpoint")
    p.add_argument("run_id")
    p.add_argument("--plan", type=Path, help="another plan of the same model (the checkpoint is resharded)")
    _start_options(p)
    p = commands.add_parser("stop", help="stop a run: finish the step, checkpoint, exit")
    p.add_argument("run_id")
    _runs_dir_option(p)
    p = commands.add_parser("list", help="the runs and their states")
    _runs_dir_option(p)
    p = commands.add_parser("command", help="print the torchrun command of every node, and a Slurm script")
    p.add_argument("plan", type=Path)
    p.add_argument("--nodes", type=int, required=True, help="machines (the plan's node count)")
    p.add_argument("--endpoint", required=True, help="HOST:PORT of node 0's rendezvous, reachable from all")
    p.add_argument("--runs-dir", default="runs", help="runs dir on each machine (default: runs)")
    p.add_argument("--run-id", help="default: a new one")
    p = commands.add_parser("profile", help="measure a model's blocks and this machine's links")
    p.add_argument("--model", required=True, help="zoo name or hf:<model_type>")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="size overrides")
    p.add_argument("--cluster", default="local", help="its devices, all of one kind here (default: local)")
    p.add_argument("--micro-batch-sizes", default="1,2,4,8", help="samples per micro-batch to time")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (the median is kept)")
    p.add_argument(
        "--precision",
        default=Precision.FP32.value,
        choices=[p.value for p in Precision],
        help="compute as plans of this precision do (their figures price only those plans)",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("profile.json"))
    _runs_dir_option(p)  # a copy is kept there, for comparing runs with calibrated predictions
    p = commands.add_parser("supervise", help=argparse.SUPPRESS)  # what --detach starts
    p.add_argument("run_id")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume-from", type=Path)
    p.add_argument("--owner-fd", type=int, help=argparse.SUPPRESS)  # the run's lock, from the launcher
    _runs_dir_option(p)
    return top


def print_runs(rows: list[dict]) -> None:
    print(f"{'run':22s} {'state':9s} {'steps':>11s} {'started':19s}  reason")
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])) if r["started"] else "-"
        progress = f"{r['last_step']:>5d}/{r['steps']:<5d}"
        print(f"{r['run_id']:22s} {r['state']:9s} {progress} {started:19s}  {r['reason']}")


def print_commands(args: argparse.Namespace) -> None:
    plan = load_plan(args.plan)
    run_id = args.run_id or store.new_run_id()
    plan_path = str(args.plan)
    per_node = multinode.commands(
        plan,
        nodes=args.nodes,
        plan_path=plan_path,
        run_id=run_id,
        endpoint=args.endpoint,
        runs_dir=args.runs_dir,
    )
    print(f"# run {run_id}: copy {plan_path} to every machine, then run there (node 0 first):")
    for node, cmd in enumerate(per_node):
        print(f"# node {node}")
        print(shlex.join(cmd))
    _, port = multinode.check_endpoint(args.endpoint)
    print("\n# or, under Slurm: sbatch this script")
    print(
        multinode.slurm_script(plan, plan_path=plan_path, run_id=run_id, port=port, runs_dir=args.runs_dir),
        end="",
    )


def write_profile(args: argparse.Namespace) -> int:
    from planner.capture.overrides import parse_overrides
    from planner.cluster import resolve_cluster
    from runtime.measure.compare import save_profile
    from runtime.measure.profiling import make_profile

    try:
        sizes = [int(s) for s in args.micro_batch_sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or args.repeats < 1:
        print("error: --micro-batch-sizes needs positive integers and --repeats >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Checked before minutes of measuring, not after.
    if not args.output.parent.is_dir():
        print(f"error: -o {args.output}: the folder {args.output.parent} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    profile = make_profile(
        args.model,
        parse_overrides(args.set),
        resolve_cluster(args.cluster),
        sizes,
        repeats=args.repeats,
        precision=Precision(args.precision),
    )
    try:
        args.output.write_text(profile.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        print(f"error: -o {args.output}: cannot write it ({exc.strerror})", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"wrote {args.output}: {len(profile.blocks)} block timings, {len(profile.links)} links, "
        f"sha256 {profile.digest()}"
    )
    kept = save_profile(profile, args.runs_dir or store.default_runs_dir())
    print(f"kept a copy in {kept}: runs of this model are compared with it")
    return 0


def main(argv: list[str] | None = None) -> int:
    return answer(_main, parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    grant_consent(args)
    try:
        if args.command in ("run", "resume", "supervise"):
            launch.check_start_options(getattr(args, "steps", None), args.threads)
        if args.command == "command":
            print_commands(args)
            return 0
        if args.command == "profile":
            return write_profile(args)
        runs_dir = args.runs_dir or store.default_runs_dir()
        if args.command == "run":
            return launch.run(
                args.plan,
                runs_dir=runs_dir,
                steps=args.steps,
                threads=args.threads,
                detach=args.detach,
                check_model=not args.skip_model_check,
            )
        if args.command == "resume":
            return launch.resume(
                runs_dir,
                args.run_id,
                plan_path=args.plan,
                steps=args.steps,
                threads=args.threads,
                detach=args.detach,
                check_model=not args.skip_model_check,
            )
        if args.command == "stop":
            return 0 if launch.stop(runs_dir, args.run_id) in store.TERMINAL else 1
        if args.command == "list":
            print_runs(launch.list_runs(runs_dir))
            return 0
        return supervise(
            runs_dir, args.run_id, threads=args.threads, resume_from=args.resume_from, owner_fd=args.owner_fd
        )
    except (launch.RunError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
