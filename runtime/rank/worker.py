"""The worker: one rank of a run. Runs unchanged under `torchrun`, on one machine or many.

    torchrun --standalone --nproc-per-node 2 -m runtime.rank.worker --plan plan.json --run-id R

Rank and world size come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). CPU
plans use gloo and one process per "device"; GPU plans use nccl and `cuda:LOCAL_RANK`.
Every rank reports its PID, then trains; rank 0 writes the gathered metrics to the runs
database. Checkpoints every ``training.checkpoint_every`` steps and when stopped (SIGUSR1,
runtime.rank.control); ``--resume-from`` continues from a checkpoint, under any plan of the
same model. An exception is written to ``<run-dir>/error-rank<r>.txt`` the moment it is
caught, before the process group is torn down (a peer that loses this rank fails after it,
and the file's time says so), so the supervisor can say which rank failed first and why.
Under a supervisor a rank ignores SIGINT: stopping is the supervisor's to decide.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import sqlite3
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from planner.errors import PlanError
from planner.plan import Plan, Strategy, load_plan
from runtime.measure import compare
from runtime.parallel import checkpoint
from runtime.parallel.conv1d_parallel import is_strided, whole
from runtime.parallel.mesh import Placement, build_mesh
from runtime.parallel.parallelize import Engine, Parallelized, parallelize
from runtime.parallel.pipeline_parallel import load_tracer
from runtime.rank import timeline
from runtime.rank.control import STORE_ENV, SUPERVISOR_ENV, StopFlag, die_with_parent, watch_supervisor
from runtime.rank.data import preload
from runtime.rank.host_allocator import fix_malloc_thresholds
from runtime.rank.metrics import MetricsRecorder, reset_peak_memory
from runtime.rank.tensor_memory import (
    EXPLAIN_ENV,
    PROBE_STEPS,
    TensorPeak,
    check_model_states,
    held_model_states,
)
from runtime.supervise import store
from runtime.supervise.store import RunState

HOST_BYTES = 64


def pick_device(plan: Plan, rank: int, local_rank: int) -> torch.device:
    kind = plan.cluster.device(plan.ranks[rank].device).kind
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PlanError(
            f"ranks[{rank}]: the plan puts this rank on a {kind} GPU, and this machine has no CUDA"
        )
    if local_rank >= torch.cuda.device_count():
        raise PlanError(
            f"ranks[{rank}]: local rank {local_rank}, but only {torch.cuda.device_count()} GPUs here"
        )
    return torch.device("cuda", local_rank)


def _gather_workers(rank: int, world_size: int, group) -> list[tuple[int, int, str]]:
    """(rank, pid, host) of every rank, without pickle: fixed-size integer tensors."""
    host = socket.gethostname().encode()[:HOST_BYTES]
    mine = torch.zeros(2 + HOST_BYTES, dtype=torch.int64)
    mine[0], mine[1] = os.getpid(), len(host)
    mine[2 : 2 + len(host)] = torch.tensor(list(host), dtype=torch.int64)
    out = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(out, mine, group=group)
    return [
        (r, int(t[0]), bytes(t[2 : 2 + int(t[1])].tolist()).decode(errors="replace"))
        for r, t in enumerate(out)
    ]


def _supervisor_store(run_id: str, timeout: timedelta):
    """A client of the supervisor's loopback store, when a supervisor started this rank.

    torchrun's env:// rendezvous would make a new store server on every interface; the
    supervisor's listens on 127.0.0.1 only (runtime.supervise.supervisor.loopback_store). Keys are
    prefixed by run and torchrun attempt, so a restarted attempt never meets stale keys.
    """
    address = os.environ.get(STORE_ENV)
    if not address:
        return None
    host, port = address.rsplit(":", 1)
    client = dist.TCPStore(host, int(port), is_master=False, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"stagecraft/{run_id}/{attempt}/", client)


@dataclass(frozen=True)
class RankRun:
    """This rank's place in its run: what the steps of `train` share."""

    plan: Plan
    run_id: str
    run_dir: Path
    rank: int
    device: torch.device
    cpu_group: Any
    """A gloo group for CPU tensors (metrics, stop flags, barriers) on nccl; None on gloo."""
    conn: sqlite3.Connection | None
    """Rank 0's connection to the runs database; None on the other ranks."""


def train(
    plan: Plan,
    *,
    run_id: str,
    runs_dir: Path,
    steps: int,
    rank: int,
    world_size: int,
    local_rank: int = 0,
    init_method: str = "env://",
    resume_from: Path | None = None,
    save_parameters: Path | None = None,
    stop: StopFlag | None = None,
) -> RunState:
    """Train ``plan`` as rank ``rank``; returns finished or stopped (all ranks agree)."""
    if world_size != len(plan.ranks):
        raise PlanError(
            f"ranks: the plan has {len(plan.ranks)} ranks, but {world_size} processes were started"
        )
    device = pick_device(plan, rank, local_rank)
    join_process_group(plan, run_id, rank, world_size, device, init_method)
    try:
        run = open_rank(plan, run_id, runs_dir, steps, rank, world_size, device)
        stop = stop or StopFlag()
        stop.group = run.cpu_group
        base_memory, tensor_peak = start_memory_baseline(plan, device, rank)
        where = Placement(plan.ranks[rank], build_mesh(plan, device.type), device)
        built = parallelize(plan, where)
        done = restore(built.engine, resume_from, rank)
        recorder = MetricsRecorder(
            plan,
            tokens_per_sample=built.task.tokens_per_sample,
            device=device,
            last_step=steps,
            write=None if run.conn is None else functools.partial(store.insert_metrics, run.conn, run_id),
            group=run.cpu_group,
            base_memory_bytes=base_memory,
            tensor_peak=tensor_peak,
        )
        last, outcome = step_loop(run, built, recorder, stop, first=done + 1, steps=steps)
        finish(run, built.engine, recorder, last, save_parameters)
        return outcome
    except BaseException as exc:
        write_error(runs_dir / run_id, rank, exc)
        dist.destroy_process_group()
        raise
    # Finished or stopped: every rank passed `finish`'s barrier. The group is left standing
    # (gloo's teardown can abort a rank that has finished: SIGABRT in about one tensor-
    # parallel run in ten here); the process leaves without destructors (`leave`).


def join_process_group(
    plan: Plan, run_id: str, rank: int, world_size: int, device: torch.device, init_method: str
) -> None:
    """Join the run's process group: nccl between GPUs, gloo between CPU ranks; on the
    supervisor's store when a supervisor started this rank, else at ``init_method``."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=plan.training.pg_timeout_s)
    rendezvous = _supervisor_store(run_id, timeout)
    if rendezvous is not None:
        dist.init_process_group(backend, store=rendezvous, rank=rank, world_size=world_size, timeout=timeout)
    else:
        dist.init_process_group(
            backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
        )


def open_rank(
    plan: Plan, run_id: str, runs_dir: Path, steps: int, rank: int, world_size: int, device: torch.device
) -> RankRun:
    """This rank's place in the run; rank 0 records the run's row (unless a launcher made
    it) and every rank's PID and host. Collective."""
    # Metrics, stop flags and barriers use CPU tensors: on nccl they need a gloo group.
    cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else None
    run_dir = runs_dir / run_id
    conn = store.connect(runs_dir) if rank == 0 else None
    if conn is not None:  # started by hand or by `runtime command`: no row yet
        store.ensure_run(
            conn,
            run_id=run_id,
            plan_json=plan.to_json(),
            world_size=world_size,
            steps=steps,
            run_dir=str(run_dir),
        )
    workers = _gather_workers(rank, world_size, cpu_group)
    if conn is not None:
        store.record_workers(conn, run_id, workers)
    return RankRun(plan, run_id, run_dir, rank, device, cpu_group, conn)


def memory_baseline(plan: Plan, device: torch.device) -> float:
    """Load what the process holds before the plan adds anything (the interpreter, torch,
    gloo, the data set, the pipeline tracer), then measure memory from there: the baseline
    of the memory compared with the prediction."""
    preload(plan.training.dataset)
    if plan.strategy in (Strategy.PP, Strategy.HYBRID) and not plan.adversarial:
        load_tracer()  # the stages are cut by torch's tracer (a GAN's mp stages are not)
    return reset_peak_memory(device)


def start_memory_baseline(plan: Plan, device: torch.device, rank: int) -> tuple[float, TensorPeak]:
    """`memory_baseline`, and the tensor peak counting from there."""
    base_memory = memory_baseline(plan, device)
    explain = os.environ.get(EXPLAIN_ENV)
    tensor_peak = TensorPeak(device, Path(explain) / f"rank{rank}.json" if explain else None)
    tensor_peak.start()
    return base_memory, tensor_peak


def restore(engine: Engine, resume_from: Path | None, rank: int) -> int:
    """Load a checkpoint into the engine; returns the optimizer steps already taken."""
    if resume_from is None:
        return 0
    latest = checkpoint.Checkpoint(checkpoint.step_of(resume_from), resume_from)
    engine.amp.load_state_dict(checkpoint.load(latest, engine.state_parts(), rank=rank))
    return latest.step


def step_loop(
    run: RankRun, built: Parallelized, recorder: MetricsRecorder, stop: StopFlag, *, first: int, steps: int
) -> tuple[int, RunState]:
    """Steps ``first`` to ``steps`` (1-based); returns the last step taken and how it ended."""
    replica = run.plan.ranks[run.rank].dp_index
    start = sum(r.batch_share for r in run.plan.replicas if r.dp_index < replica)
    share = run.plan.replicas[replica].batch_share  # this replica's samples: [start, start + share)
    last = first - 1
    events = timeline.start(run.rank)  # None unless STAGECRAFT_TIMELINE names a folder
    try:
        for step in range(first, steps + 1):
            t0, cpu0 = time.perf_counter(), time.process_time()
            if events is not None:
                events.begin_step(step)
            inputs, targets = built.task.batch(step - 1, start, share)  # the data index is 0-based
            result = built.engine.train_step(inputs.to(run.device), targets.to(run.device))
            if events is not None:
                events.end_step()
            flushed = recorder.record(step, result, time.perf_counter() - t0, time.process_time() - cpu0)
            if step == first + PROBE_STEPS - 1:  # gradients and optimizer state exist from here
                report_model_states(run, built.engine)
            last = step
            if checkpoint_or_stop(run, built.engine, recorder, stop, step=step, steps=steps, flushed=flushed):
                return last, RunState.STOPPED
        return last, RunState.FINISHED
    finally:
        if events is not None:
            events.save()


def report_model_states(run: RankRun, engine: Engine) -> None:
    """Warn, in this rank's log, where the bytes per parameter it holds in weights,
    gradients and optimizer state differ from its plan's precision's terms."""
    params = engine.local_parameters()
    count = sum(p.numel() for p in {id(p): p for p in params.values()}.values())
    optimizers = [o for _, opts in engine.state_parts() for o in opts]
    opt = run.plan.training.optimizer
    held = held_model_states(params, optimizers)
    for problem in check_model_states(run.plan.training.precision, opt.name, opt.momentum, held, count):
        print(f"warning: rank {run.rank}: model states differ from the price: {problem}", file=sys.stderr)


def checkpoint_or_stop(
    run: RankRun,
    engine: Engine,
    recorder: MetricsRecorder,
    stop: StopFlag,
    *,
    step: int,
    steps: int,
    flushed: bool,
) -> bool:
    """After ``step``: save a checkpoint when one is due or the ranks agree to stop (the
    stop's checkpoint); True when they stop. Collective."""
    every = run.plan.training.checkpoint_every
    # Checked where the ranks meet anyway, not every step: a metrics flush (about once a
    # second) or a checkpoint. A checkpoint flushes the metrics too, so with checkpoints
    # more often than flushes the flush point alone never came.
    at_checkpoint = bool(every) and step % every == 0
    stopping = (flushed or at_checkpoint) and step < steps and stop.agreed()
    if at_checkpoint or stopping:
        recorder.flush()  # the metrics of every step a checkpoint covers are stored
        checkpoint.save(
            run.run_dir,
            step,
            engine.state_parts(),
            rank=run.rank,
            group=run.cpu_group,
            scaler=engine.amp.state_dict(),
        )
    if stopping and run.rank == 0:
        # The supervisor's word that the ranks stopped, saved and flushed (runtime.supervise.supervisor).
        (run.run_dir / "stopped.json").write_text(json.dumps({"step": step}))
    return stopping


def _gathered(p: torch.Tensor) -> torch.Tensor:
    """A parameter whole: a strided shard gathered split by split (`conv1d_parallel.whole`)."""
    if is_strided(p):
        return whole(p)
    return p.full_tensor() if isinstance(p, DTensor) else p


def finish(
    run: RankRun, engine: Engine, recorder: MetricsRecorder, last: int, save_parameters: Path | None
) -> None:
    """The end of a rank: its final parameters (when asked for), the share of the step time
    spent logging (rank 0), and a barrier that every rank reaches before any leaves."""
    if save_parameters is not None:
        save_parameters.mkdir(parents=True, exist_ok=True)
        held = engine.local_parameters()
        # A sharded engine's parameters are DTensors: each is gathered whole (collective).
        params = {fqn: _gathered(p).detach().cpu() for fqn, p in held.items()}
        torch.save(params, save_parameters / f"rank{run.rank}.pt")
        # How each DTensor was laid out on this rank: what a test reads to see a split happen.
        split = {fqn: p for fqn, p in held.items() if isinstance(p, DTensor)}
        placements = {fqn: [str(pl) for pl in p.placements] for fqn, p in split.items()}
        (save_parameters / f"rank{run.rank}.placements.json").write_text(json.dumps(placements))
    if run.conn is not None:
        fraction = recorder.logging_s / recorder.step_s if recorder.step_s else 0.0
        metric = store.Metric(last, store.STEP_RANK, "logging_fraction", fraction, time.time())
        store.insert_metrics(run.conn, run.run_id, [metric])
    dist.barrier(group=run.cpu_group)


def write_error(run_dir: Path, rank: int, exc: BaseException) -> None:
    """``<run-dir>/error-rank<r>.txt``: the exception's line, then its traceback; the file's
    time is when it was caught, to the nanosecond (the supervisor orders the ranks by it).

    A full disk may keep the file short or empty; the line still goes to stderr.
    """
    caught_ns = time.time_ns()
    message = f"rank {rank}: {type(exc).__name__}: {exc}"
    path = run_dir / f"error-rank{rank}.txt"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(message + "\n\n")
            f.flush()  # the message first: its first line is what the supervisor reads
            f.write(traceback.format_exc())
    except OSError as write_failed:
        with contextlib.suppress(OSError):  # stderr is a log file on the same disk
            print(f"rank {rank}: could not write {path}: {write_failed}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        os.utime(path, ns=(caught_ns, caught_ns))


def plan_rank(plan: Plan, node: int, local_rank: int) -> int:
    """The global rank of the ``local_rank``-th process on ``node``, as the plan lays them out."""
    on_node = [r.rank for r in plan.ranks if r.node == node]
    if not on_node:
        raise PlanError(f"ranks: the plan has no rank on node {node}")
    if local_rank >= len(on_node):
        raise PlanError(f"ranks: node {node} has {len(on_node)} ranks in the plan, not {local_rank + 1}")
    return on_node[local_rank]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.rank.worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--runs-dir", type=Path, default=store.default_runs_dir())
    parser.add_argument("--steps", type=int, help="default: the plan's training.steps")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--init-method", default="env://", help="for launchers other than torchrun")
    parser.add_argument("--resume-from", type=Path, help="a complete checkpoint folder to continue from")
    parser.add_argument("--save-parameters", type=Path, help="write each rank's final parameters here")
    parser.add_argument(
        "--plan-node",
        type=int,
        help="this machine's node index in the plan (multi-machine runs; see runtime command)",
    )
    return parser


def set_up_process(threads: int) -> int:
    """What a rank's process needs before anything else runs; returns when it started (ns)."""
    if os.environ.get(SUPERVISOR_ENV):
        # The supervisor turns Ctrl-C into a stop (SIGUSR1); a SIGINT that reaches a rank
        # anyway (torchrun passes its own on) must not end it in the middle of a step.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    started_ns = time.time_ns()
    torch.set_num_threads(threads)
    fix_malloc_thresholds()  # before the model: steady step times (runtime.rank.host_allocator)
    die_with_parent()
    watch_supervisor()
    return started_ns


def report_failure(run_dir: Path, rank: int, exc: BaseException, started_ns: int) -> None:
    """The rank's error file (unless `train` wrote it when it was raised), and its line on stderr."""
    written = run_dir / f"error-rank{rank}.txt"
    with contextlib.suppress(OSError):
        if written.stat().st_mtime_ns >= started_ns:  # `train` wrote it when it was raised
            written = None
    if written is not None:
        write_error(run_dir, rank, exc)
    with contextlib.suppress(OSError):
        print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    stop = StopFlag()  # first: a stop request during start-up must not kill the rank
    started_ns = set_up_process(args.threads)
    run_dir = args.runs_dir / args.run_id
    try:
        plan = load_plan(args.plan)
        if args.plan_node is not None:
            # torchrun numbers nodes in the order they join; the plan says which ranks
            # live on which node, so the rank comes from the plan.
            rank = plan_rank(plan, args.plan_node, local_rank)
        outcome = train(
            plan,
            run_id=args.run_id,
            runs_dir=args.runs_dir,
            steps=args.steps or plan.training.steps,
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            init_method=args.init_method,
            resume_from=args.resume_from,
            save_parameters=args.save_parameters,
            stop=stop,
        )
        if rank == 0 and not os.environ.get(SUPERVISOR_ENV):
            conn = store.connect(args.runs_dir)
            store.finish_once(conn, args.run_id, outcome)  # nobody else will
            compare.record_after_run(conn, args.run_id, args.runs_dir, sys.stderr)
    except BaseException as exc:
        report_failure(run_dir, rank, exc, started_ns)
        return 1
    finally:
        # A stop request that comes late must not kill the exiting process: Python puts
        # its own handlers back to the default (terminate) at exit, but leaves SIG_IGN.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return 0


def leave(code: int) -> None:
    """End the rank's process with ``code`` once its output is out, without Python's
    teardown: that would destroy the process groups `train` leaves standing."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
