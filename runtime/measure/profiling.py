"""`python -m runtime profile`: measure a model's blocks and this machine's links.

Block timings: the model is cut at every block with `pipeline()` (the same cut the runtime
makes at stage boundaries), and each block runs alone on one thread, as one CPU rank does:
forward, then backward from a gradient of its output's shape, each the median of
``repeats`` runs after a warm-up, per micro-batch size. Bytes kept for backward are
counted with `saved_tensors_hooks`. The uncut model is timed too, eagerly, as a data-parallel
replica runs it, and the optimizer step inside a training loop of it.

Contention: CPU ranks on one machine share its memory bandwidth and caches, so a block
runs slower while the other ranks compute too. One training step of the whole model is
timed in one process alone, then in as many processes at once as the cluster has ranks here
(up to the core count); the ratio, minus 1, is the profile's ``contention``.

Links: two gloo processes on this machine send and all-reduce messages from 1 KiB to
16 MiB; ``time = latency + bytes / bandwidth`` is fitted by least squares (Hockney). Sends
are timed back to back. Each all-reduce is timed after ``COMPUTE_BEFORE_ALL_REDUCE_S`` of
compute on both ranks, as a step's gradient all-reduce follows its backward. Here a try
after compute is either as fast as back to back or a few milliseconds slower, more often
than back to back (`bench/links.py` prints both ways for the fidelity bench's gradients);
the figure is the mean of the tries, what a step pays on average.

Tensor parallelism's own work (`tensor_parallel_pass_s`): the model trained as two DDP
replicas and split across a tensor group of two, at the largest size profiled.

GPUs: when the cluster's devices are GPUs, the same measurements run on this machine's
first GPU (the blocks, the whole model, the optimizer) and first two (the links and the
runtime's own costs, over nccl), each timing between two `torch.cuda.synchronize` calls;
there is no contention figure, since GPUs do not share their cores. The timings are filed
under the cluster's device kind; a GPU here of another model is warned about. This path has
not been run on a GPU yet: the machines this project is built on have none.

Every measuring process fixes glibc's malloc thresholds first, as the runtime's ranks do
(`runtime.rank.host_allocator`): with glibc's dynamic ones, the same model timed up to 1.5x
slower in one fresh process than in the next.
"""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import kind_of_gpu
from planner.devices import device_kind
from planner.errors import ClusterError, PlanError
from planner.precision import Precision
from planner.profile import (
    DDP_STEP,
    BatchTiming,
    BlockTiming,
    LinkTiming,
    ModelTiming,
    OptimizerTiming,
    Profile,
)
from planner.schedules import Schedule
from runtime.measure.tiny_run import (
    LOOPS,
    TINY_WIDTH,
    WIDE,
    actions_per_rank,
    fsdp_collectives,
    tensor_plans,
    tiny_plan,
)
from runtime.rank.amp import Amp
from runtime.rank.host_allocator import fix_malloc_thresholds

SIZES_BYTES = [2**k for k in range(10, 25, 2)]  # 1 KiB .. 16 MiB
CPU = torch.device("cpu")
WARM_RUN = 3  # steps a model trains in a row when two alternate; the first is dropped
COMPUTE_BEFORE_ALL_REDUCE_S = 0.01  # a backward's worth: the fidelity bench's steps take 10-150 ms


def _model_and_batch(source: str, overrides: dict, size: int, dtype: str = "float32", device=CPU):
    """A fresh model in train mode (a language model returning its logits, as the runtime
    runs it) and an example batch of ``size`` samples, on ``device``."""
    from planner.capture.source import build_model, parse_source
    from runtime.rank.model import return_logits

    built = build_model(parse_source(source, overrides), device="cpu", batch_size=1, dtype=dtype)
    model = built.module.train().to(device)
    if source.startswith("hf:"):
        model = return_logits(model)
    return model, tuple(a.expand(size, *a.shape[1:]).contiguous().to(device) for a in built.args)


def _as_one_cpu_rank() -> None:
    """Measure as a CPU rank of the runtime computes: one thread, and glibc's allocator
    set as its worker sets it (runtime.rank.host_allocator)."""
    torch.set_num_threads(1)
    fix_malloc_thresholds()


def _sync(device: torch.device) -> None:
    """Wait for the work queued on ``device``: a GPU runs it after the call that queued it
    has returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_tries(fn, repeats: int, device: torch.device = CPU, before=None) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after a warm-up, each after ``before`` (untimed)."""
    fn()  # warm-up: first calls allocate and pick kernels
    _sync(device)
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
            _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def _median_time(fn, repeats: int, device: torch.device = CPU) -> float:
    return statistics.median(_timed_tries(fn, repeats, device))


def block_timings(
    source: str,
    overrides: dict,
    micro_batch_sizes: list[int],
    *,
    repeats: int = 5,
    precision: Precision = Precision.FP32,
    device: torch.device = CPU,
    kind: str = "cpu",
) -> tuple[str, list[BlockTiming]]:
    """Per block and micro-batch size: (graph digest, timings on ``device``, filed as ``kind``),
    each block computing in ``precision`` as the runtime's stages do (runtime.rank.amp)."""
    from planner.capture.coarsen import coarsen
    from planner.capture.graph import graph_digest
    from planner.capture.trace import trace
    from planner.search.build import model_blocks

    dtype = precision.recipe.weights
    amp = Amp(precision, device)
    graph = coarsen(trace(source, overrides, dtype=dtype))
    blocks = model_blocks(graph)
    timings: list[BlockTiming] = []
    for size in micro_batch_sizes:
        # A fresh model per size: pipeline() patches the modules' forward, and a second cut
        # of the same instance would nest those patches.
        model, example = _model_and_batch(source, overrides, size, dtype, device)
        pipe = _cut_at_blocks(source, model, example, blocks)
        inputs = example
        for i, block in enumerate(blocks):
            forward_s, backward_s, saved_bytes, outs = _time_block(
                pipe.get_stage_module(i), inputs, repeats, device, amp
            )
            timing = BlockTiming(
                block=block,
                device_kind=kind,
                micro_batch_size=size,
                forward_s=forward_s,
                backward_s=backward_s,
                saved_bytes=saved_bytes,
            )
            timings.append(timing)
            inputs = tuple(o.detach() for o in outs)  # the next block's inputs
    return graph_digest(graph), timings


def _cut_at_blocks(source: str, model: torch.nn.Module, example: tuple[torch.Tensor, ...], blocks: list[str]):
    """`pipeline()` over the model, cut at every block (the runtime's cut at stage boundaries)."""
    from torch.distributed.pipelining import SplitPoint, pipeline

    try:
        pipe = pipeline(model, mb_args=example, split_spec={b: SplitPoint.BEGINNING for b in blocks[1:]})
    except Exception as exc:
        raise PlanError(f"model: cannot cut {source} at every block: {exc}") from exc
    if pipe.num_stages != len(blocks):
        raise PlanError(f"model: cutting at every block gave {pipe.num_stages} pieces, not {len(blocks)}")
    return pipe


def _time_block(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    repeats: int,
    device: torch.device,
    amp: Amp | None = None,
):
    """(forward seconds, backward seconds, bytes saved for backward, outputs) of one block,
    its forward in ``amp``'s precision (fp32 without one)."""
    forward = amp.wrap(module) if amp is not None else module
    args = tuple(a.detach().requires_grad_(a.is_floating_point()) for a in inputs)
    saved = [0]

    def pack(t, saved=saved):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(*args)
    outs = out if isinstance(out, tuple) else (out,)
    grads = tuple(torch.ones_like(o) for o in outs)
    forward_s = _median_time(lambda: forward(*args), repeats, device)

    def backward():
        out = forward(*args)
        torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads)

    both = _median_time(backward, repeats, device)  # forward + backward: backward needs a fresh graph
    return forward_s, max(both - forward_s, 0.0), saved[0], outs


def compute_for(seconds: float, device: torch.device = CPU):
    """A function that keeps ``device`` computing (small matrix products) for about
    ``seconds``, calibrated here and now."""
    w = torch.randn(64, 64, device=device) / 8.0
    h0 = torch.randn(8, 64, device=device)

    def products(n: int) -> None:
        h = h0
        for _ in range(n):
            h = torch.tanh(h @ w)

    products(50)  # warm-up
    _sync(device)
    t = time.perf_counter()
    products(500)
    _sync(device)
    n = max(1, round(seconds / ((time.perf_counter() - t) / 500)))
    return lambda: products(n)


def mean_after_compute(fn, compute, repeats: int, device: torch.device = CPU) -> float:
    """Mean seconds of ``fn``, a collective, each try started on every rank after
    ``compute``: the ranks leave a barrier together, compute, then call it."""

    def before() -> None:
        dist.barrier()
        compute()

    return statistics.fmean(_timed_tries(fn, repeats, device, before))


def _leave() -> None:
    """End a measuring process without tearing its process group down: gloo's destructor
    joins a worker thread that can be waiting for the GIL the destructor holds (one profile
    in about fifty hung there). The sockets close with the process."""
    dist.barrier()
    os._exit(0)


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares latency + bytes / bandwidth, on relative error (weights 1/t): the
    small messages that fix the latency count as much as the large ones."""
    import numpy as np

    x = np.array([b for b, _ in points], dtype=float)
    y = np.array([t for _, t in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1, w=1.0 / y)
    return max(float(intercept), 0.0), 1.0 / max(float(slope), 1e-15)


def _join(rank: int, init: str, world: int, device_type: str, timeout_s: float = 60) -> torch.device:
    """Start a measuring rank as the runtime starts its ranks: gloo between CPU ranks,
    nccl between GPUs, one GPU per rank (``cuda:rank``, all on this machine)."""
    _as_one_cpu_rank()
    device = torch.device("cuda", rank) if device_type == "cuda" else CPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world, timeout=timeout)
    return device


def _link_worker(rank: int, init: str, out: str, repeats: int, device_type: str = "cpu") -> None:
    import json
    import resource

    device = _join(rank, init, 2, device_type)
    overhead = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"p2p": [], "all_reduce": [], "all_gather": [], "reduce_scatter": [], "overhead": overhead}
    backward = compute_for(COMPUTE_BEFORE_ALL_REDUCE_S, device)
    for size in SIZES_BYTES:
        t = torch.zeros(size // 4, device=device)

        def p2p(t=t):
            if rank == 0:
                dist.send(t, 1)
                dist.recv(t, 1)
            else:
                dist.recv(t, 0)
                dist.send(t, 0)

        result["p2p"].append((size, _median_time(p2p, repeats, device) / 2))  # one way
        dist.barrier()
        # The mean of more tries: after compute, a try is either fast or several ms slower.
        tries = max(4 * repeats, 20)
        mean = mean_after_compute(lambda t=t: dist.all_reduce(t), backward, tries, device)
        result["all_reduce"].append((size, mean))
        # Sharded data parallel's two (`planner.cost.sharded`), also after compute, as FSDP
        # runs them beside the blocks: a buffer of ``size`` bytes whole, half on each rank.
        shard = torch.zeros(size // 8, device=device)
        gather = mean_after_compute(
            lambda t=t, shard=shard: dist.all_gather_into_tensor(t, shard), backward, tries, device
        )
        result["all_gather"].append((size, gather))
        scatter = mean_after_compute(
            lambda t=t, shard=shard: dist.reduce_scatter_tensor(shard, t), backward, tries, device
        )
        result["reduce_scatter"].append((size, scatter))
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    _leave()


def _spawned(worker, nprocs: int, *args) -> dict:
    """Run ``worker(rank, init, out, *args)`` in ``nprocs`` fresh processes that meet over
    a file rendezvous; return the JSON that rank 0 wrote to ``out``."""
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "measured.json")
        mp.start_processes(
            worker, args=(f"file://{tmp}/rdv", out, *args), nprocs=nprocs, start_method="spawn"
        )
        return json.loads(Path(out).read_text())


SHARDED_TENSORS, SHARDED_NUMEL = 64, 4096  # many small tensors: the per-tensor cost dominates


def _sharded_optimizer_worker(rank: int, init: str, out: str, repeats: int, device_type: str = "cpu") -> None:
    """AdamW (foreach=False, as the runtime makes it) over `SHARDED_TENSORS` parameters as
    FSDP2 holds them (DTensor shards over the 2 ranks), and over plain tensors of the same
    local size: the medians of ``repeats`` steps each."""
    import json

    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    device = _join(rank, init, 2, device_type)
    mesh = DeviceMesh(device.type, [0, 1])
    whole = [torch.randn(SHARDED_NUMEL, device=device) for _ in range(SHARDED_TENSORS)]
    held = {
        "plain": [t[: SHARDED_NUMEL // 2].clone() for t in whole],
        "sharded": [distribute_tensor(t, mesh, [Shard(0)]) for t in whole],
    }
    result = {}
    for name, tensors in held.items():
        params = [torch.nn.Parameter(t) for t in tensors]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        optimizer = torch.optim.AdamW(params, lr=1e-3, foreach=False)
        optimizer.step()  # allocates the state
        result[name] = _median_time(optimizer.step, repeats, device)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    _leave()


def sharded_optimizer_s_per_tensor(repeats: int = 5, device_type: str = "cpu") -> float:
    """What an optimizer step takes more per parameter tensor when the parameters are DTensor
    shards (FSDP2's) than when they are plain tensors of the same size: DTensor dispatches
    each tensor's update (about 0.1 ms a tensor on a CPU rank here, measured by hand)."""
    measured = _spawned(_sharded_optimizer_worker, 2, max(repeats, 5), device_type)
    return max(measured["sharded"] - measured["plain"], 0.0) / SHARDED_TENSORS


def link_timings(link_kind: str, repeats: int = 5, device_type: str = "cpu") -> tuple[list[LinkTiming], int]:
    """p2p, and a 2-rank all-reduce, all-gather and reduce-scatter (each after compute),
    between two processes here (two CPU ranks, or the first two GPUs), fitted; and a rank's
    base RSS."""
    measured = _spawned(_link_worker, 2, repeats, device_type)
    links = []
    for op in ("p2p", "all_reduce", "all_gather", "reduce_scatter"):
        latency, bandwidth = _fit(measured[op])
        links.append(LinkTiming(link_kind=link_kind, op=op, ranks=2, latency_s=latency, bandwidth=bandwidth))
    return links, int(measured["overhead"])


def _training_step(
    source: str, overrides: dict, size: int, precision: Precision = Precision.FP32, device=CPU
):
    """(model, forward, forward and backward) of the whole, uncut model on ``size`` samples,
    its forward in ``precision`` (runtime.rank.amp)."""
    model, example = _model_and_batch(source, overrides, size, precision.recipe.weights, device)
    amp = Amp(precision, device)

    def forward():
        with amp.autocast():
            return model(*example)

    def step() -> None:
        out = forward()
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return model, forward, step


def optimizer_seconds_per_param(
    source: str,
    overrides: dict,
    size: int,
    repeats: int = 5,
    device: torch.device = CPU,
    precision: Precision = Precision.FP32,
) -> float:
    """AdamW's step time per parameter (foreach=False, as the runtime makes it): the median
    of ``repeats`` steps, each timed inside a training loop, after a forward and backward of
    a batch-mean objective, as the runtime steps it.

    Inside the loop, the step finds its state evicted from the caches by the forward and
    backward, and fresh gradients the size a loss gives (on zero or unit-scale gradients it
    ran 3 to 4 times slower here). Timed back to back on one set of gradients instead, the
    MLP's step took nearly twice as long as in the loop and the CNN's half as long (measured
    by hand, once, while choosing this).
    """
    model, forward, _ = _training_step(source, overrides, size, precision, device)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, foreach=False)
    times = []
    for _ in range(repeats + 1):  # the first step allocates the optimizer's state
        optimizer.zero_grad(set_to_none=True)
        out = forward()
        outs = out if isinstance(out, tuple) else (out,)
        sum(o.float().mean() for o in outs if o.requires_grad).backward()
        _sync(device)
        t = time.perf_counter()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    trained = sum(p.numel() for p in params if p.grad is not None)
    return statistics.median(times[1:]) / max(trained, 1)


def whole_timings(
    source: str,
    overrides: dict,
    micro_batch_sizes: list[int],
    repeats: int = 5,
    device: torch.device = CPU,
    kind: str = "cpu",
    precision: Precision = Precision.FP32,
) -> list[ModelTiming]:
    """The uncut model's forward and backward per size, run eagerly as a DDP replica runs it."""
    out = []
    for size in micro_batch_sizes:
        _, forward, step = _training_step(source, overrides, size, precision, device)
        f, both = _median_time(forward, repeats, device), _median_time(step, repeats, device)
        out.append(
            ModelTiming(device_kind=kind, micro_batch_size=size, forward_s=f, backward_s=max(both - f, 0.0))
        )
    return out


def batch_load_timings(source: str, overrides: dict, sizes: list[int], repeats: int) -> list[BatchTiming]:
    """A rank's loading of its share of a step's batch (`runtime.rank.task`: the step's
    sample order, then the samples gathered), from the model's own data set, at each
    micro-batch size and at 8 times it (a pipeline replica loads all its micro-batches at
    once); each try loads another step, as a run does. None for a model the runtime has
    no data set for (a ``py:`` factory)."""
    from planner.capture.source import build_model, parse_source
    from planner.networks import is_adversarial
    from runtime.rank.task import task_for

    built = build_model(parse_source(source, overrides), device="meta")
    counts = sorted({n for size in sizes for n in (size, 8 * size)})
    adversarial = is_adversarial(name for name, _ in built.module.named_children())
    try:
        task = task_for(source, built.config, built.dataset, counts[-1], seed=0, adversarial=adversarial)
    except PlanError:
        return []
    out = []
    steps = itertools.count()  # each try another step: another slice of the sample order
    for samples in counts:
        seconds = _median_time(lambda n=samples: task.batch(next(steps), 0, n), max(repeats, 20))
        out.append(BatchTiming(samples=samples, seconds=seconds))
    return out


def _tiny_run_worker(
    rank: int,
    init: str,
    out: str,
    repeats: int,
    plan_json: str,
    device_type: str = "cpu",
) -> None:
    """Train a tiny plan (`runtime.measure.tiny_run`) with the runtime's own engines
    (`runtime.parallel.parallelize`), and record the host work of a step, the rule of
    `runtime.rank.metrics`: the step less its compute, optimizer step and waits, as the
    runtime's clocks count them; the two ranks' mean of the steps' median. And how much the
    peak memory grew from the moment the process group was up."""
    import json

    from planner.plan import plan_from_json
    from runtime.parallel.mesh import Placement, build_mesh
    from runtime.parallel.parallelize import parallelize
    from runtime.rank.metrics import memory_peaks
    from runtime.rank.worker import memory_baseline

    device = _join(rank, init, 2, device_type)
    plan = plan_from_json(plan_json)
    base = memory_baseline(plan, device)  # as the runtime's worker measures it
    built = parallelize(plan, Placement(plan.ranks[rank], build_mesh(plan, device.type), device))
    samples = plan.replicas[plan.ranks[rank].dp_index].batch_share
    inputs = torch.randn(samples, plan.model.overrides["in_features"], device=device)
    targets = torch.randint(0, TINY_WIDTH, (samples,), device=device)
    hosts, computes, comms = [], [], []
    for i in range(repeats + 1):  # the first is a warm-up: it allocates
        t = time.perf_counter()
        result = built.engine.train_step(inputs, targets)
        _sync(device)
        step_s = time.perf_counter() - t
        if i:
            hosts.append(step_s - result.compute_s - result.optimizer_s - sum(result.waits.values()))
            computes.append(result.compute_s)
            comms.append(result.waits.get("communication", 0.0))
    # The ranks' means of each median.
    medians = [statistics.median(x) / 2 for x in (hosts, computes, comms)]
    means = torch.tensor(medians, dtype=torch.float64, device=device)
    dist.all_reduce(means)
    grown = torch.tensor([memory_peaks(device)[1] - base], dtype=torch.float64, device=device)
    dist.all_reduce(grown, op=dist.ReduceOp.MAX)
    if rank == 0:
        names = ("host_s", "compute_s", "comm_s")
        measured = dict(zip(names, means.tolist(), strict=True))
        Path(out).write_text(json.dumps({**measured, "grown_bytes": int(grown[0])}))
    _leave()


def _tensor_pair_worker(
    rank: int, init: str, out: str, repeats: int, plans: tuple[str, str], share: float, device_type: str
) -> None:
    """Train a model's two `tiny_run.tensor_plans` in the same two processes, a few steps of
    one then a few of the other (paired: this machine's speed drifts by 10-30% over
    minutes), and record the median over pairs of the split step's compute less ``share``
    of the replica's, the two ranks' mean. Each run of steps drops its first: right after
    the other model's steps, its weights and buffers are out of the caches, which a plan
    training on never pays."""
    import json

    from planner.capture.source import build_model, parse_source
    from planner.plan import plan_from_json
    from runtime.parallel.mesh import Placement, build_mesh
    from runtime.parallel.parallelize import parallelize

    device = _join(rank, init, 2, device_type)
    replicated, split = (plan_from_json(p) for p in plans)
    engines = [
        parallelize(plan, Placement(plan.ranks[rank], build_mesh(plan, device.type), device)).engine
        for plan in (replicated, split)
    ]
    model = replicated.model
    example = build_model(parse_source(model.source, model.overrides), device="meta").args[0]
    samples = split.training.global_batch  # each rank computes them, whole or split
    inputs = torch.randint(0, 2, (samples, *example.shape[1:]), device=device)  # ids any vocabulary has

    def warm_compute_s(engine) -> float:
        run = [engine.train_step(inputs, inputs.clone()).compute_s for _ in range(WARM_RUN)]
        return statistics.median(run[1:])

    left = []
    for i in range(repeats + 1):  # the first is a warm-up: it allocates
        alone, together = (warm_compute_s(engine) for engine in engines)
        if i:
            left.append(together - share * alone)
    mean = torch.tensor([statistics.median(left) / 2], dtype=torch.float64, device=device)
    dist.all_reduce(mean)
    if rank == 0:
        Path(out).write_text(json.dumps({"left_s": float(mean[0])}))
    _leave()


class RuntimeCosts(NamedTuple):
    action_s: dict[str, float]
    """Per loop (`tiny_run.LOOPS`): host seconds of one forward or backward action."""
    grad_s_per_byte: float
    """Host seconds a step per byte of gradients a pipeline rank holds."""
    grown_bytes: dict[str, int]
    """Per ``pp`` and ``dp``: how much a rank's peak memory grows to train."""
    fsdp_collective_s: float
    """FSDP2's own work per all-gather or reduce-scatter, beyond what the price charges."""
    fsdp_pass_s: float
    """What a block's forward or backward computes more as an FSDP2 unit."""


def runtime_costs(
    cluster, repeats: int = 5, device_type: str = "cpu", links: list[LinkTiming] | None = None
) -> RuntimeCosts:
    """What the runtime itself costs between the cluster's first two devices (gloo between
    CPU ranks, nccl between GPUs), from a model too small to count: per torch schedule and
    for DDP's step, the host seconds one forward or backward action takes beyond its compute
    and its waits; per byte of a pipeline rank's gradients, the host seconds of a step that
    zeroes and scales them (the 1F1B run again, its blocks `tiny_run.WIDE` wide); and how much a
    rank's peak memory grows to train, per ``pp`` and ``dp``.

    Each schedule posts and waits in its own way (interleaved posts a rank's sends and
    receives apart, and more of them), so each is timed; a data-parallel replica's step too
    (DDP's hooks, zeroing, reading the loss), over its two actions. Loading the batch is
    not in it: the tiny run's batch is made once, the data set's cost is its own.

    FSDP: the data-parallel pair again, full_shard. What the runtime counts as FSDP's work,
    less what the price already charges for those collectives (``links``' all-gather and
    reduce-scatter fits at the tiny units' bytes), over the collectives the price counts, is
    FSDP's own work per collective; what its compute takes more than DDP's, per block and
    pass, is its hooks. Without ``links``, neither is measured (0)."""
    workers = max(repeats, 30)  # a tiny step takes milliseconds: enough tries to be steady
    devices = (cluster.devices[0].id, cluster.devices[1].id)
    action: dict[str, float] = {}
    grown: dict[str, int] = {}
    host: dict[str, float] = {}
    tiny = {loop: tiny_plan(loop, cluster, devices) for loop in LOOPS}
    runs = {}
    for loop, (plan, *_) in tiny.items():
        run = runs[loop] = _spawned(_tiny_run_worker, 2, workers, plan.to_json(), device_type)
        host[loop] = max(run["host_s"], 0.0)
        action[loop] = host[loop] / actions_per_rank(plan)
        if loop in (Schedule.GPIPE.value, DDP_STEP):  # the document's words: "pp", "dp"
            grown["dp" if loop == DDP_STEP else "pp"] = run["grown_bytes"]
    loop = Schedule.ONE_F_ONE_B.value
    wide = tiny_plan(loop, cluster, devices, width=WIDE)
    run = _spawned(_tiny_run_worker, 2, workers, wide.plan.to_json(), device_type)
    per_byte = max(run["host_s"] - host[loop], 0.0) / (wide.gradient_bytes - tiny[loop].gradient_bytes)
    per_collective = per_pass = 0.0
    fits = {t.op: t for t in links or []}
    if "all_gather" in fits and "reduce_scatter" in fits:
        sharded = tiny_plan(DDP_STEP, cluster, devices, dp_mode="full_shard")
        run = _spawned(_tiny_run_worker, 2, workers, sharded.plan.to_json(), device_type)
        gathers, reduces = fsdp_collectives(sharded.plan)
        unit = sharded.unit_bytes  # tiny: the fits' latencies are nearly all of it

        def charged(op: str) -> float:
            return fits[op].latency_s + unit / fits[op].bandwidth

        priced = gathers * charged("all_gather") + reduces * charged("reduce_scatter")
        per_collective = max(run["comm_s"] - priced, 0.0) / (gathers + reduces)
        blocks = len(sharded.plan.model.blocks)
        per_pass = max(run["compute_s"] - runs[DDP_STEP]["compute_s"], 0.0) / (2 * blocks)
    return RuntimeCosts(action, per_byte, grown, per_collective, per_pass)


def tensor_parallel_pass_s(
    profile: Profile, source: str, overrides: dict, cluster, size: int, repeats: int, device_type: str = "cpu"
) -> float:
    """Tensor parallelism's own work per split block and pass, on the profiled model itself
    at ``size`` samples (0 when none of its blocks splits in two): the model as two DDP
    replicas and as one replica at tp 2 (`tiny_run.tensor_plans`), between the cluster's
    first two devices. Of the second's compute (which holds its collectives: the runtime
    does not time them apart inside a forward), what is left beyond what the price gives a
    rank of the group (its share of the first's compute, and its collectives at
    ``profile``'s fits) is its own (`_tensor_pair_worker`: the two step by step): DTensor's
    dispatch and redistributions, and half-width products running less efficiently than
    half the whole ones. Measured on a tiny GPT instead, it was a fifth of what a
    1M-parameter GPT showed; less plain all-reduces timed in the same processes instead of
    the fits, the price charged the difference twice."""
    from planner.cost.price import Pricer

    graph = coarsen(trace(source, overrides))
    devices = (cluster.devices[0].id, cluster.devices[1].id)
    plans = tensor_plans(graph, cluster, devices, size, profile.precision.value)
    if plans is None:
        return 0.0
    pricer = Pricer(graph, cluster, profile)
    replicas, split = pricer(plans.replicated), pricer(plans.split)
    comm = split.comm_s.get(0, 0.0)
    share = (sum(split.stage_times[(0, 0)]) - comm) / sum(replicas.stage_times[(0, 0)])
    jsons = (plans.replicated.to_json(), plans.split.to_json())
    left = _spawned(_tensor_pair_worker, 2, max(repeats, 10), jsons, share, device_type)["left_s"]
    return max(left - comm, 0.0) / (2 * plans.split_blocks)


def _contention_worker(
    rank: int, init: str, out: str, world: int, source: str, overrides: dict, size: int, repeats: int
) -> None:
    import json

    _as_one_cpu_rank()
    timeout = timedelta(seconds=300)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timeout)
    _, _, step = _training_step(source, overrides, size)
    alone = _median_time(step, repeats) if rank == 0 else 0.0  # the others wait, blocked
    dist.barrier()
    together = _median_time(step, repeats)  # every core busy with the same work
    mine = torch.tensor([together], dtype=torch.float64)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    if rank == 0:
        Path(out).write_text(json.dumps({"alone": alone, "together": [float(t) for t in gathered]}))
    _leave()


def contention(source: str, overrides: dict, size: int, processes: int, repeats: int = 5) -> float:
    """How much slower a rank computes while ``processes`` ranks compute at once, minus 1.

    One forward and backward of the whole model on ``size`` samples, timed in one process
    while the others wait, then in all of them at once (each on one thread).
    """
    if processes < 2:
        return 0.0
    measured = _spawned(_contention_worker, processes, processes, source, overrides, size, repeats)
    return max(statistics.median(measured["together"]) / measured["alone"] - 1.0, 0.0)


def measured_device(cluster) -> tuple[str, torch.device]:
    """(device kind, the device here that measures it). A profile measures the cluster's one
    kind of device on this machine: its CPU ranks, or its GPUs (the first one or two)."""
    kinds = sorted({d.kind for d in cluster.devices})
    if len(kinds) != 1:
        raise PlanError(
            f"cluster: a profile measures one kind of device, on a machine that has it; this cluster "
            f"has {kinds}: profile each kind where it is, or plan with datasheet figures"
        )
    kind = kinds[0]
    if kind == "cpu":
        return kind, CPU
    if not torch.cuda.is_available():
        raise PlanError(f"cluster: its devices are {kind} GPUs, and this machine has no CUDA to measure them")
    needed, here = min(len(cluster.devices), 2), torch.cuda.device_count()  # two for the links
    if here < needed:
        raise PlanError(f"cluster: measuring its links needs {needed} GPUs here; this machine has {here}")
    gpu = torch.cuda.get_device_properties(0)
    try:
        found = kind_of_gpu(gpu.name, gpu.total_memory)
    except ClusterError:  # not in the catalog
        found = None
    if found != device_kind(kind).id:
        warnings.warn(
            f"profiling the cluster's {kind} on this machine's {gpu.name}: its timings will be "
            f"filed under {kind}",
            stacklevel=2,
        )
    return kind, torch.device("cuda", 0)


def make_profile(
    source: str,
    overrides: dict,
    cluster,
    micro_batch_sizes: list[int],
    *,
    repeats: int = 5,
    optimizer: str = "adamw",
    precision: Precision = Precision.FP32,
) -> Profile:
    """Measure ``source`` on this machine's devices of the cluster's kind (see the module's
    docstring), computing in ``precision``; the timings are filed under the cluster's
    device and link kinds."""
    _as_one_cpu_rank()
    kind, device = measured_device(cluster)
    digest, blocks = block_timings(
        source, overrides, micro_batch_sizes, repeats=repeats, device=device, kind=kind, precision=precision
    )
    per_param = optimizer_seconds_per_param(
        source, overrides, min(micro_batch_sizes), repeats, device, precision
    )
    profile = Profile(
        precision=precision,
        graph_digest=digest,
        host=socket.gethostname(),
        torch_version=torch.__version__,
        blocks=blocks,
        optimizers=[OptimizerTiming(device_kind=kind, optimizer=optimizer, seconds_per_param=per_param)],
    )
    sizes = sorted(micro_batch_sizes)
    update = {}
    if device.type == "cpu":  # GPUs do not share their cores
        # Ranks that compute at once on this machine: the cluster's, up to the cores there are.
        busy = min(len(cluster.devices), os.cpu_count() or 1)
        update["contention"] = {"cpu": contention(source, overrides, sizes[len(sizes) // 2], busy, repeats)}
    update["whole"] = whole_timings(source, overrides, sizes, repeats, device, kind, precision)
    update["batch_load"] = batch_load_timings(source, overrides, sizes, repeats)
    profile = profile.model_copy(update=update)
    if len(cluster.devices) >= 2:
        a, b = cluster.devices[0].id, cluster.devices[1].id
        direct = cluster.direct_link(a, b)  # explicit, else its link group's
        link_kind = direct.kind if direct is not None else None
        if link_kind is not None:
            links, overhead = link_timings(link_kind, repeats, device.type)
            costs = runtime_costs(cluster, repeats, device.type, links)
            # At the largest size profiled: a tensor group's plan runs its micro-batch whole.
            with_links = profile.model_copy(update={"links": links})  # the fits the price charges
            tp = (with_links, source, overrides, cluster, sizes[-1], repeats, device.type)
            tp_pass = tensor_parallel_pass_s(*tp)
            sharded = profile.optimizers[0].model_copy(
                update={"sharded_s_per_tensor": sharded_optimizer_s_per_tensor(repeats, device.type)}
            )
            update = {
                "links": links,
                "optimizers": [sharded],
                "pipeline_action_s": {kind: costs.action_s[Schedule.GPIPE.value]},
                "schedule_action_s": {kind: costs.action_s},
                "grad_s_per_byte": {kind: costs.grad_s_per_byte},
                "fsdp_collective_s": {kind: costs.fsdp_collective_s},
                "fsdp_pass_s": {kind: costs.fsdp_pass_s},
                "tp_pass_s": {kind: tp_pass},
                "runtime_bytes": {kind: costs.grown_bytes},
            }
            if device.type == "cpu":  # a GPU rank's memory is its GPU's, not the process's pages
                update["overhead_bytes"] = {"cpu": overhead}
            profile = profile.model_copy(update=update)
    return profile
