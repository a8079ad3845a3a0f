"""The partitioner is exact: on seeded random cases it finds what brute force over every
contiguous split finds, by the same price()."""

import itertools
import math
import random

import pytest

from planner.cluster import Cluster
from planner.cost.price import Pricer
from planner.schedules import schedule_error
from planner.search.build import make_plan
from planner.search.partition import all_splits, best_split, min_bottleneck_cuts
from planner.search.stage_problem import StageProblem
from tests.handmade import chain

KINDS = ["h100-80gb", "a100-80gb", "v100-32gb", "l4"]


def _random_case(rng):
    n = rng.randint(2, 10)
    devices = rng.randint(1, 4)
    m = rng.choice([1, 4, 8])
    forward = [rng.uniform(0.1, 3) for _ in range(n)]
    skips = [(i, j, rng.randint(0, 4000)) for i in range(n) for j in range(i + 2, n) if rng.random() < 0.15]
    graph = chain(
        forward,
        edge_bytes=rng.randint(0, 4000),
        skips=skips,
        params=[rng.randint(0, 10**6) for _ in range(n)],
        saved=[rng.randint(0, 10**5) for _ in range(n)],
    )
    memory = [rng.choice([80 * 2**30, 3 * 10**7, 10**8]) for _ in range(devices)]  # some memory-tight
    kinds = [rng.choice(KINDS) for _ in range(devices)]
    cluster = Cluster(
        devices=[{"id": i, "kind": kinds[i], "node": 0, "memory_bytes": memory[i]} for i in range(devices)],
        links=[
            {
                "a": a,
                "b": b,
                "kind": "pcie4",
                "latency": rng.uniform(0, 1e-3),
                "bandwidth": rng.uniform(1e6, 1e9),
            }
            for a in range(devices)
            for b in range(a + 1, devices)
        ],
    )
    dp = 2 if devices == 4 and rng.random() < 0.3 else 1
    pp = devices // dp
    pp = min(pp, n)
    options = [("gpipe", 1)]
    if m >= pp:
        options.append(("1f1b", 1))
    if n >= 2 * pp and pp > 1 and schedule_error("interleaved_1f1b", pp, m, 2) is None:
        options.append(("interleaved_1f1b", 2))
    schedule, v = rng.choice(options)
    strategy = "dp" if pp == 1 else ("hybrid" if dp > 1 else "pp")
    batch = m * dp * rng.choice([1, 2])
    template = make_plan(
        graph,
        cluster,
        strategy=strategy,
        dp_degree=dp,
        pp_degree=pp,
        schedule=schedule if pp > 1 else None,
        micro_batches=m,
        virtual_stages=v if pp > 1 else 1,
        global_batch=batch,
    )
    return StageProblem(Pricer(graph, cluster), template), n


def test_branch_and_bound_agrees_with_brute_force_on_500_random_cases():
    rng = random.Random(20261128)
    kinds_seen, infeasible, interleaved = set(), 0, 0
    for case in range(500):
        problem, n = _random_case(rng)
        result = problem.solve()
        brute = min(problem.evaluate(cuts) for cuts in all_splits(n, problem.k))
        assert result.exact
        if math.isinf(brute):
            assert result.cuts is None and math.isinf(result.value), case
            infeasible += 1
        else:
            assert result.value == pytest.approx(brute, rel=1e-12), case
            assert problem.evaluate(result.cuts) == result.value
        kinds_seen.add(problem.template.schedule)
        interleaved += problem.template.virtual_stages > 1
    # The sample covers what it claims to: every schedule, memory-tight and interleaved cases.
    assert {"gpipe", "1f1b", "interleaved_1f1b", None} <= kinds_seen
    assert 20 < infeasible < 450 and interleaved > 20


def test_it_prices_far_fewer_splits_than_brute_force():
    rng = random.Random(7)
    priced = total = 0
    for _ in range(100):
        problem, n = _random_case(rng)
        priced += problem.solve().evaluations
        total += len(all_splits(n, problem.k))
    assert priced < total / 2


def test_a_device_twice_as_fast_gets_about_twice_the_work():
    # 12 equal blocks on an H100 (67 TFLOP/s fp32) and an A100 (19.5): the split follows speed.
    work = [[1.0] * 12, [67 / 19.5] * 12]
    cuts = min_bottleneck_cuts(work)
    assert cuts == [10]  # 10 blocks on the fast device (10), 2 on the one 3.4x slower (6.9)
    twice = [[1.0] * 12, [2.0] * 12]
    assert min_bottleneck_cuts(twice) == [8]


def test_never_an_empty_stage():
    for n in range(1, 7):
        for k in range(1, n + 1):
            work = [[1.0] * n for _ in range(k)]
            result = best_split(work, 1, lambda cuts: float(len(cuts)))
            starts = [0, *result.cuts, n]
            assert all(b > a for a, b in itertools.pairwise(starts))
