"""How much glibc's dynamic malloc thresholds move a small model's step time.

    python bench/allocator.py [--processes 4] [--repeats 15]

The profile's whole-model timing (`runtime.measure.profiling.whole_timings`: forward, then forward
and backward, the median of ``--repeats`` after a warm-up) of the fidelity bench's CNN on
32 and 64 samples, each in ``--processes`` fresh processes on one thread, alternately with
glibc's defaults and with the thresholds the runtime's workers and the profile set
(`runtime.rank.host_allocator`). Prints, per setting and size, the fastest and the slowest
process and their ratio: how far apart two measurements of the same thing can land.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose runtime.py would shadow the package

from fidelity import MODELS, micro_batch_sizes  # noqa: E402  (bench/fidelity.py, beside this file)

SOURCE = "cnn"
OVERRIDES, SIZES = MODELS[SOURCE][0], micro_batch_sizes(SOURCE)  # the sizes its profile times
SETTINGS = ("glibc default", "fixed")


def _one_process(fixed: bool, repeats: int) -> None:
    """In a fresh process: print {size: [forward_ms, backward_ms]} as JSON."""
    import torch

    from runtime.measure.profiling import whole_timings
    from runtime.rank.host_allocator import fix_malloc_thresholds

    torch.set_num_threads(1)
    if fixed and not fix_malloc_thresholds():
        raise SystemExit("glibc's thresholds could not be set here (no glibc, or MALLOC_* already set)")
    timings = whole_timings(SOURCE, OVERRIDES, SIZES, repeats)
    print(json.dumps({t.micro_batch_size: [t.forward_s * 1e3, t.backward_s * 1e3] for t in timings}))


def _measure(fixed: bool, repeats: int) -> dict[int, list[float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)  # the default run must be glibc's default
    cmd = [sys.executable, __file__, "--one", "fixed" if fixed else "default", "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"a measuring process failed:\n{done.stderr}")
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--one", choices=["default", "fixed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _one_process(args.one == "fixed", args.repeats)
    runs: dict[str, list[dict[int, list[float]]]] = {s: [] for s in SETTINGS}
    for i in range(args.processes):
        for setting in SETTINGS:  # alternately, so that drift in the machine hits both
            runs[setting].append(_measure(setting == "fixed", args.repeats))
            print(f"  process {i + 1}/{args.processes}, {setting}", file=sys.stderr, flush=True)
    print(f"{SOURCE} {OVERRIDES}, whole model, one thread, {args.processes} fresh processes per setting")
    print(f"{'setting':<14} {'samples':>7} {'forward ms':>16} {'spread':>7} {'fwd+bwd ms':>16} {'spread':>7}")
    for setting in SETTINGS:
        for size in SIZES:
            fwd = [r[size][0] for r in runs[setting]]
            both = [r[size][0] + r[size][1] for r in runs[setting]]
            print(
                f"{setting:<14} {size:>7} {min(fwd):>7.2f}-{max(fwd):<8.2f} {max(fwd) / min(fwd):>6.2f}x "
                f"{min(both):>7.2f}-{max(both):<8.2f} {max(both) / min(both):>6.2f}x"
            )


if __name__ == "__main__":
    main()
