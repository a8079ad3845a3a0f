"""Trace time and peak memory for the zoo GPT at 1M, 125M, 7B and 70B parameters.

    python bench/trace.py [--repeat 3] [--sizes 1m 125m 7b 70b]

Each size runs in a fresh process (peak RSS is per process), traced on the meta device and
coarsened. Printed per size: parameters, fine ops and blocks, the median time to trace and
to coarsen, the process's peak RSS, and its RSS after importing torch and transformers (the
baseline the tracing adds to). Targets (issue): 7B under 10 s and 2 GB; 70B under 60 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(size: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (the baseline includes the imports every trace needs)
    import transformers  # noqa: F401

    from planner.capture.coarsen import coarsen
    from planner.capture.graph import summary
    from planner.capture.trace import trace

    baseline = _rss_mib()
    t0 = time.perf_counter()
    fine = trace("gpt", {"size": size})
    t1 = time.perf_counter()
    coarse = coarsen(fine)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "size": size,
        "params": summary(fine)["param_count"],
        "ops": fine.number_of_nodes(),
        "blocks": coarse.number_of_nodes(),
        "trace_s": t1 - t0,
        "coarsen_s": t2 - t1,
        "peak_rss_mib": peak,
        "baseline_rss_mib": baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "125m", "7b", "70b"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    print(
        f"{'size':>5} {'params':>16} {'ops':>6} {'blocks':>6} {'trace s':>8} {'coarsen s':>9} "
        f"{'total s':>8} {'peak RSS':>9} {'baseline':>9}"
    )
    for size in args.sizes:
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, __file__, "--one", size], capture_output=True, text=True, check=True
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[0]
        trace_s = statistics.median(x["trace_s"] for x in runs)
        coarsen_s = statistics.median(x["coarsen_s"] for x in runs)
        total = statistics.median(x["trace_s"] + x["coarsen_s"] for x in runs)
        peak = max(x["peak_rss_mib"] for x in runs)
        base = statistics.median(x["baseline_rss_mib"] for x in runs)
        print(
            f"{size:>5} {r['params']:>16,} {r['ops']:>6} {r['blocks']:>6} {trace_s:>8.2f} {coarsen_s:>9.3f} "
            f"{total:>8.2f} {peak:>5.0f} MiB {base:>5.0f} MiB"
        )
    print(f"median of {args.repeat} fresh processes; peak RSS is the largest; baseline is RSS after imports")


if __name__ == "__main__":
    main()
