"""What the fixed-order (contiguous) restriction costs, against an exact MILP without it.

    python bench/dag_gap.py [--dags 8] [--seed 30]

The planner cuts stages as contiguous ranges of the execution order, so that the runtime
can cut between modules (docs/partitioner.md). On random DAGs of 30 nodes and 3 devices of
different speeds and memories, scipy's `milp` (HiGHS) finds the assignment of nodes to
devices that minimises the most loaded device (its compute plus the bytes it sends and
receives over the link), with no contiguity. The same objective over contiguous ranges of
the topological order (every device order, empty devices allowed) can only be worse or
equal; this prints how much worse, DAG by DAG, then the median and the largest gap.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

N, K = 30, 3  # nodes per DAG, devices


def _dag(rng):
    work = [rng.uniform(1, 10) for _ in range(N)]
    memory = [rng.uniform(1, 10) for _ in range(N)]
    edges = {(i, i + 1): rng.uniform(0, 4) for i in range(N - 1)}  # a backbone chain
    for i in range(N):
        for j in range(i + 2, N):
            if rng.random() < 0.06:  # skip connections and branches
                edges[(i, j)] = rng.uniform(0, 4)
    speed = [1.0, 2.0, 1.5]
    capacity = [0.45 * sum(memory)] * K
    return work, memory, edges, speed, capacity


def _load(assign, work, edges, speed):
    loads = [0.0] * K
    for i, d in enumerate(assign):
        loads[d] += work[i] / speed[d]
    for (i, j), c in edges.items():
        if assign[i] != assign[j]:
            loads[assign[i]] += c
            loads[assign[j]] += c
    return max(loads)


def _milp(work, memory, edges, speed, capacity):
    # Variables: x[i,d] (N*K binaries), z[e,d] (|E|*K, >= |x_i,d - x_j,d|), T.
    e_list = list(edges)
    nx_, nz = N * K, len(e_list) * K
    n = nx_ + nz + 1
    x = lambda i, d: i * K + d
    z = lambda e, d: nx_ + e * K + d
    t = n - 1
    rows, lo, hi = [], [], []

    def row(coefs, low, high):
        r = np.zeros(n)
        for k, v in coefs:
            r[k] += v
        rows.append(r)
        lo.append(low)
        hi.append(high)

    for i in range(N):
        row([(x(i, d), 1) for d in range(K)], 1, 1)
    for d in range(K):
        row([(x(i, d), memory[i]) for i in range(N)], -np.inf, capacity[d])
        coefs = [(x(i, d), work[i] / speed[d]) for i in range(N)]
        coefs += [(z(e, d), edges[e_list[e]]) for e in range(len(e_list))]
        row([*coefs, (t, -1)], -np.inf, 0)
    for e, (i, j) in enumerate(e_list):
        for d in range(K):
            row([(z(e, d), 1), (x(i, d), -1), (x(j, d), 1)], 0, np.inf)
            row([(z(e, d), 1), (x(i, d), 1), (x(j, d), -1)], 0, np.inf)
    c = np.zeros(n)
    c[t] = 1
    integrality = np.zeros(n)
    integrality[:nx_] = 1
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=integrality,
        bounds=Bounds(0, [1] * (nx_ + nz) + [np.inf]),
        options={"time_limit": 60},
    )
    if not res.success:
        raise RuntimeError(f"milp found no optimum: {res.message}")
    assign = [max(range(K), key=lambda d: res.x[x(i, d)]) for i in range(N)]
    return res.fun, assign


def _contiguous(work, memory, edges, speed, capacity):
    best = np.inf
    for order in itertools.permutations(range(K)):
        for a, b in itertools.combinations_with_replacement(range(N + 1), 2):
            assign = [order[0]] * a + [order[1]] * (b - a) + [order[2]] * (N - b)
            used = [sum(memory[i] for i in range(N) if assign[i] == d) for d in range(K)]
            if all(u <= cap for u, cap in zip(used, capacity, strict=True)):
                best = min(best, _load(assign, work, edges, speed))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dags", type=int, default=8, help="random DAGs to solve (default 8)")
    parser.add_argument("--seed", type=int, default=30, help="seed of the DAGs (default 30)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    gaps = []
    print(f"{'dag':>3}  {'MILP optimum':>12}  {'contiguous':>10}  {'gap':>6}")
    for index in range(args.dags):
        work, memory, edges, speed, capacity = _dag(rng)
        optimum, assign = _milp(work, memory, edges, speed, capacity)
        # The MILP's assignment must load its devices as it says, and contiguity can only cost.
        if _load(assign, work, edges, speed) > optimum + 1e-6:
            raise RuntimeError(f"DAG {index}: the MILP's assignment loads a device past its optimum")
        contiguous = _contiguous(work, memory, edges, speed, capacity)
        if contiguous < optimum - 1e-6:
            raise RuntimeError(f"DAG {index}: a contiguous split beat the unrestricted optimum")
        gaps.append(contiguous / optimum - 1)
        print(f"{index:>3}  {optimum:>12.2f}  {contiguous:>10.2f}  {gaps[-1]:>6.1%}")
    print(
        f"fixed-order restriction vs MILP optimum on {len(gaps)} DAGs of {N} nodes, {K} devices: "
        f"median gap {statistics.median(gaps):.1%}, max {max(gaps):.1%}"
    )


if __name__ == "__main__":
    main()
