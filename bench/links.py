"""How much the profile's link measurement moves from one try to the next on this machine.

    python bench/links.py [--tries 5] [--repeats 15]

Runs the profile's own link measurement (`runtime.profile.link_timings`: two fresh gloo
processes, point-to-point and all-reduce from 1 KiB to 16 MiB, each size the median of
``--repeats``, fitted as latency + bytes / bandwidth) ``--tries`` times in a row, and prints
each fit's prediction for an all-reduce of the fidelity bench's models' gradients (the
CNN's 0.37 MiB, the GPT's 4.1 MiB) next to that all-reduce timed directly, the same way, in
the same try. The spread of the direct timings is what a profile made at one moment cannot
know about the runs that come after it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/: runtime.py here

import torch
import torch.distributed as dist
from fidelity import MODELS  # bench/fidelity.py, beside this file

from runtime.profile import _leave, _median_time, _model_and_batch, _spawned, link_timings


def gradient_bytes(model: str) -> int:
    """Bytes of one fidelity model's float32 gradients: what its data-parallel ranks reduce."""
    module, _ = _model_and_batch(model, MODELS[model][0], 1)
    return 4 * sum(p.numel() for p in module.parameters())


def _direct_worker(rank: int, init: str, out: str, repeats: int, gradients: dict[str, int]) -> None:
    """All-reduce each model's gradient bytes between two gloo processes: median seconds."""
    import json
    from datetime import timedelta

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    timed = {}
    for model, nbytes in gradients.items():
        t = torch.zeros(nbytes // 4)
        timed[model] = _median_time(lambda t=t: dist.all_reduce(t), repeats)
    if rank == 0:
        Path(out).write_text(json.dumps(timed))
    _leave()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    gradients = {m: gradient_bytes(m) for m in ("cnn", "gpt")}
    head = "".join(f"  {m} all-reduce ms: fit  timed" for m in gradients)
    print(f"try  all-reduce fit: latency ms  bandwidth GB/s{head}")
    fitted: dict[str, list[float]] = {m: [] for m in gradients}
    timed: dict[str, list[float]] = {m: [] for m in gradients}
    for i in range(args.tries):
        links, _ = link_timings("loopback", args.repeats)
        fit = next(link for link in links if link.op == "all_reduce")
        direct = _spawned(_direct_worker, 2, args.repeats, gradients)
        cells = ""
        for model, nbytes in gradients.items():
            fitted[model].append(fit.latency_s + nbytes / fit.bandwidth)
            timed[model].append(direct[model])
            cells += f"  {fitted[model][-1] * 1e3:>{len(model) + 18}.2f} {timed[model][-1] * 1e3:>6.2f}"
        print(f"{i + 1:>3}  {fit.latency_s * 1e3:>26.3f} {fit.bandwidth / 1e9:>15.2f}{cells}")
    for model in gradients:
        for what, times in (("fit", fitted[model]), ("timed", timed[model])):
            print(f"{model} gradients' all-reduce, {what}: {min(times) * 1e3:.2f}-{max(times) * 1e3:.2f} ms "
                  f"over {args.tries} tries ({max(times) / min(times):.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
