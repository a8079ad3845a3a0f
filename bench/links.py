"""How much the profile's link measurement moves from one try to the next on this machine.

    python bench/links.py [--tries 5] [--repeats 15]

Runs the profile's own link measurement (`runtime.measure.profiling.link_timings`: two fresh gloo
processes, point-to-point and all-reduce from 1 KiB to 16 MiB, each all-reduce timed after
10 ms of compute on both ranks, fitted as latency + bytes / bandwidth) ``--tries`` times in
a row, and prints each fit's prediction for an all-reduce of the fidelity bench's models'
gradients (the CNN's 0.37 MiB, the GPT's 4.1 MiB) next to that all-reduce timed directly in
the same try: after the same compute (the mean of ``4 x --repeats`` tries, as the profile
takes it), and back to back (the median of ``--repeats``, as the profile took it before).
The spread of the direct timings is what a profile made at one moment cannot know about
the runs that come after it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/: runtime.py here

import torch
import torch.distributed as dist
from fidelity import MODELS  # bench/fidelity.py, beside this file

from runtime.measure.profiling import (
    COMPUTE_BEFORE_ALL_REDUCE_S,
    _leave,
    _median_time,
    _model_and_batch,
    _spawned,
    compute_for,
    link_timings,
    mean_after_compute,
)
from runtime.rank.host_allocator import fix_malloc_thresholds


def gradient_bytes(model: str) -> int:
    """Bytes of one fidelity model's float32 gradients: what its data-parallel ranks reduce."""
    module, _ = _model_and_batch(model, MODELS[model][0], 1)
    return 4 * sum(p.numel() for p in module.parameters())


def _direct_worker(rank: int, init: str, out: str, repeats: int, gradients: dict[str, int]) -> None:
    """All-reduce each model's gradient bytes between two gloo processes: seconds after
    compute (mean) and back to back (median)."""
    import json
    from datetime import timedelta

    torch.set_num_threads(1)
    fix_malloc_thresholds()
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    backward = compute_for(COMPUTE_BEFORE_ALL_REDUCE_S)
    timed = {}
    for model, nbytes in gradients.items():
        t = torch.zeros(nbytes // 4)
        after = mean_after_compute(lambda t=t: dist.all_reduce(t), backward, 4 * repeats)
        timed[model] = (after, _median_time(lambda t=t: dist.all_reduce(t), repeats))
    if rank == 0:
        Path(out).write_text(json.dumps(timed))
    _leave()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    gradients = {m: gradient_bytes(m) for m in ("cnn", "gpt")}
    head = "".join(f"  {m} all-reduce ms: fit  after compute  back to back" for m in gradients)
    print(f"try  all-reduce fit: latency ms  bandwidth GB/s{head}")
    columns = ("fit", "timed after compute", "timed back to back")
    series: dict[tuple[str, str], list[float]] = {(m, c): [] for m in gradients for c in columns}
    for i in range(args.tries):
        links, _ = link_timings("loopback", args.repeats)
        fit = next(link for link in links if link.op == "all_reduce")
        direct = _spawned(_direct_worker, 2, args.repeats, gradients)
        cells = ""
        for model, nbytes in gradients.items():
            row = (fit.latency_s + nbytes / fit.bandwidth, *direct[model])
            for column, seconds in zip(columns, row, strict=True):
                series[(model, column)].append(seconds)
            cells += f"  {row[0] * 1e3:>{len(model) + 18}.2f} {row[1] * 1e3:>14.2f} {row[2] * 1e3:>13.2f}"
        print(f"{i + 1:>3}  {fit.latency_s * 1e3:>26.3f} {fit.bandwidth / 1e9:>15.2f}{cells}")
    for (model, column), times in series.items():
        print(
            f"{model} gradients' all-reduce, {column}: {min(times) * 1e3:.2f}-{max(times) * 1e3:.2f} ms "
            f"over {args.tries} tries ({max(times) / min(times):.1f}x)"
        )


if __name__ == "__main__":
    main()
