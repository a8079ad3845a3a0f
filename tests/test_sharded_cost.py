"""Sharded data parallel and recomputation, priced: small cases worked out by hand (times in
ms of forward work on an H100, as in test_cost.py)."""

import itertools

import pytest

from planner.capture.graph import graph_digest
from planner.cluster import resolve_cluster
from planner.cost.price import Pricer, price
from planner.cost.timing import CostOptions
from planner.devices import device_kind
from planner.profile import LinkTiming, OptimizerTiming, Profile
from planner.search.build import make_plan
from planner.search.search import search
from tests.handmade import UNIT, chain, gpus

EXACT = CostOptions(compute_efficiency=1.0, memory_efficiency=1.0, backward_factor=2.0)
COPIES_4MB = 2 * (4e6 + 2e6) / device_kind("h100-80gb").memory_bandwidth / UNIT
"""ms FSDP's copies take around a collective of 4 MB on two H100s (`ShardGroups.copies_s`)."""


def _price(graph, cluster, **kw):
    plan = make_plan(graph, cluster, **kw)
    return plan, price(graph, cluster, plan, options=EXACT)


def test_full_shard_holds_a_shard_of_the_model_states_and_two_blocks_gathered():
    graph = chain([1, 1, 1], params=[1000, 3000, 2000])
    cluster = gpus(4)
    dp = dict(strategy="dp", dp_degree=4, global_batch=4)
    replicated = _price(graph, cluster, **dp)[1].memory[0]
    full = _price(graph, cluster, **dp, dp_mode="full_shard")[1].memory[0]
    assert (replicated.parameters, replicated.optimizer, replicated.gathered) == (4 * 6000, 8 * 6000, 0)
    assert (full.parameters, full.gradients, full.optimizer, full.shard) == (6000, 6000, 12000, 4)
    # The block computing and the one prefetched (the largest such pair: b1 and b2, in fp32),
    # and the reduce-scatter's input (the largest block's gradients, fp32).
    assert full.gathered == (3000 + 2000) * 4 + 3000 * 4
    # ZeRO-2 keeps every block gathered from its forward to its backward.
    grad_op = _price(graph, cluster, **dp, dp_mode="shard_grad_op")[1].memory[0]
    assert grad_op.gathered == 6000 * 4 + 3000 * 4
    # bf16-mixed: gathered in bf16 (FSDP's MixedPrecisionPolicy), reduced in fp32; autocast
    # has no fp32 weight to copy. 16 B/param in all over the group, as ZeRO's (2 + 2 + 12) / N.
    mixed = _price(graph, cluster, **dp, dp_mode="full_shard", training={"precision": "bf16-mixed"})[
        1
    ].memory[0]
    assert mixed.gathered == (3000 + 2000) * 2 + 3000 * 4 and mixed.casts == 0
    assert mixed.parameters + mixed.gradients + mixed.optimizer == 16 * 6000 / 4


def test_a_sharded_pipeline_stage_accumulates_whole_gradients_and_keeps_its_blocks_gathered():
    graph = chain([1, 1, 1, 1], params=[1000, 1000, 3000, 2000])
    plan, pred = _price(
        graph,
        gpus(4),
        strategy="hybrid",
        dp_degree=2,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=2,
        global_batch=4,
        dp_mode="full_shard",
    )
    last = next(m for m in pred.memory if plan.ranks[m.rank].pp_index == 1)  # b2 and b3: 5000
    # torch's pipeline runs its backwards without gradient sync: the gradients accumulate
    # whole and the blocks stay gathered until the step's reduce-scatters.
    assert (last.parameters, last.gradients, last.optimizer) == (5000 * 4 // 2, 5000 * 4, 5000 * 8 // 2)
    assert last.gathered == 5000 * 4 + 3000 * 4


def test_full_shard_gathers_before_each_pass_and_hides_what_compute_covers():
    # Each block: 1 ms forward, 2 ms backward; gathering or reduce-scattering its 4 MB takes
    # 0.5 ms on two devices (half a ring all-reduce: 2 MB over 4 MB/ms), and FSDP's copies
    # around it (C ms: 4 MB and its 2 MB shard, read and written, at the H100's memory speed).
    graph = chain([1, 1, 1], params=[10**6] * 3)
    cluster = gpus(2, bandwidth=4e6 / UNIT)
    _, pred = _price(graph, cluster, strategy="dp", dp_degree=2, global_batch=2, dp_mode="full_shard")
    c = COPIES_4MB
    spans = {i.kind: (i.end - i.start) / UNIT for i in pred.timeline if i.rank == 0}
    assert spans["forward"] == pytest.approx(3.5 + c)  # only the first gather shows
    # Gathered again for backward (first gather shows), reduce-scattered beside it (the last shows).
    assert spans["backward"] == pytest.approx(6.5 + 0.5 + 2 * c)
    assert pred.comm_s[0] / UNIT == pytest.approx(1.5 + 3 * c)
    # The timeline draws each collective where it runs: the forward's gathers at 0, 0.5 + C
    # and, once block 0 is done (two blocks gathered at most), 1.5 + C ms.
    gathers = [
        (i.start / UNIT, i.end / UNIT) for i in pred.timeline if i.rank == 0 and i.kind == "all-gather"
    ]
    assert gathers[:3] == [
        pytest.approx((0, 0.5 + c)),
        pytest.approx((0.5 + c, 1.0 + 2 * c)),
        pytest.approx((1.5 + c, 2.0 + 2 * c)),
    ]
    assert len(gathers) == 6 and len([i for i in pred.timeline if i.kind == "reduce-scatter"]) == 2 * 3
    assert not [i for i in pred.timeline if i.kind == "all-reduce"]  # no DDP all-reduce
    # Two gathers (forward, backward) and one reduce-scatter of every block, (d-1)/d per hop.
    assert pred.link_bytes == {(0, 1): 18 * 10**6, (1, 0): 18 * 10**6}


def test_a_profile_times_gathers_and_reduce_scatters_with_its_own_fits():
    # The same plan as above, with a profile that timed each collective on this link kind:
    # all-gathers of 4 MB whole take 0.1 + 4/8 = 0.6 ms, reduce-scatters 0.1 + 4/2 = 2.1 ms,
    # each with FSDP's copies around it.
    graph = chain([1, 1, 1], params=[10**6] * 3)
    cluster = gpus(2, bandwidth=4e6 / UNIT)
    plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2, dp_mode="full_shard")
    fits = {"all_gather": 8e6 / UNIT, "reduce_scatter": 2e6 / UNIT}
    links = [
        LinkTiming(link_kind="nvlink4", op=op, ranks=2, latency_s=0.1 * UNIT, bandwidth=bandwidth)
        for op, bandwidth in fits.items()
    ]
    pred = price(graph, cluster, plan, Profile(graph_digest=graph_digest(graph), links=links), EXACT)
    spans = {}
    for i in pred.timeline:
        if i.rank == 0 and i.kind in ("all-gather", "reduce-scatter"):
            spans.setdefault(i.kind, set()).add(round((i.end - i.start) / UNIT - COPIES_4MB, 9))
    assert spans == {"all-gather": {0.6}, "reduce-scatter": {2.1}}
    assert pred.sources["step_time_s"].startswith("profile:")


def test_a_sharded_optimizer_pays_the_profiled_cost_of_each_dtensor():
    # Three blocks of one weight each; the profile says a step costs 1 ms a million
    # parameters and 0.5 ms more per DTensor shard: each rank steps half the parameters and
    # all three tensors (one shard of each).
    graph = chain([1, 1, 1], params=[10**6] * 3)
    cluster = gpus(2)
    timing = OptimizerTiming(
        device_kind="h100-80gb",
        optimizer="adamw",
        seconds_per_param=1e-6 * UNIT,
        sharded_s_per_tensor=0.5 * UNIT,
    )
    profile = Profile(graph_digest=graph_digest(graph), optimizers=[timing])

    def optimizer_ms(mode):
        plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2, dp_mode=mode)
        pred = price(graph, cluster, plan, profile, EXACT)
        return sum(i.end - i.start for i in pred.timeline if i.rank == 0 and i.kind == "optimizer") / UNIT

    assert optimizer_ms("replicate") == pytest.approx(3.0)
    assert optimizer_ms("full_shard") == pytest.approx(1.5 + 3 * 0.5)


def test_cpu_ranks_hide_no_collective_behind_compute():
    # gloo runs FSDP's collectives on the cores that compute: every second of them shows.
    graph = chain([1, 1, 1], params=[10**6] * 3)
    cluster = resolve_cluster("cpu:2")
    for mode in ("shard_grad_op", "full_shard"):
        plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2, dp_mode=mode)
        pred = price(graph, cluster, plan, options=EXACT)
        collectives = [i for i in pred.timeline if i.rank == 0 and i.kind in ("all-gather", "reduce-scatter")]
        assert len(collectives) == (9 if mode == "full_shard" else 6)
        assert pred.comm_s[0] == pytest.approx(sum(i.end - i.start for i in collectives))
        ordered = sorted(collectives, key=lambda i: i.start)
        assert all(a.end <= b.start + 1e-12 for a, b in itertools.pairwise(ordered))


def test_fsdp_own_work_is_priced_per_collective_and_per_block_pass_where_profiled():
    # The profile's tiny full_shard run: 0.4 ms of FSDP's own work per collective, 0.1 ms of
    # its hooks per block forward or backward. Three blocks, full_shard on two CPU ranks:
    # 9 collectives (3 gathers for forward, 3 for backward, 3 reduce-scatters), 6 passes.
    graph = chain([1, 1, 1], params=[10**6] * 3)
    cluster = resolve_cluster("cpu:2")
    plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2, dp_mode="full_shard")
    bare = Profile(graph_digest=graph_digest(graph))
    measured = bare.model_copy(update={"fsdp_collective_s": {"cpu": 0.4e-3}, "fsdp_pass_s": {"cpu": 0.1e-3}})
    before, after = (price(graph, cluster, plan, p, EXACT) for p in (bare, measured))
    assert after.comm_s[0] - before.comm_s[0] == pytest.approx(9 * 0.4e-3)
    assert after.step_time_s - before.step_time_s == pytest.approx(9 * 0.4e-3 + 6 * 0.1e-3)
    # A replicated plan has no FSDP: the same profile leaves its price alone.
    ddp = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2)
    assert (
        price(graph, cluster, ddp, measured, EXACT).step_time_s
        == price(graph, cluster, ddp, bare, EXACT).step_time_s
    )


def test_recomputation_keeps_block_inputs_and_runs_each_forward_again():
    graph = chain([1, 2], saved=[400, 800], edge_bytes=100)
    one = dict(strategy="dp", dp_degree=1, global_batch=4)
    _, none = _price(graph, gpus(1), **one)
    _, full = _price(graph, gpus(1), **one, recompute="full")
    _, every = _price(graph, gpus(1), **one, recompute="every-2")  # the block at position 0
    assert (none.memory[0].activations, none.memory[0].recomputed) == ((400 + 800) * 4, 0)
    # Inputs kept (b0's is the data: nothing; b1's: 100 B a sample); the larger block's own
    # activations come back while its backward runs.
    assert (full.memory[0].activations, full.memory[0].recomputed) == (100 * 4, 800 * 4)
    # b0 recomputes after b1's backward has freed b1's 800 B: nothing above what was kept.
    assert (every.memory[0].activations, every.memory[0].recomputed) == (800 * 4, 0)
    _, last = _price(chain([1, 2], saved=[800, 400], edge_bytes=100), gpus(1), **one, recompute="every-2")
    assert last.memory[0].recomputed == (800 - 400) * 4  # b0's 800 B back, b1's 400 B freed
    backward = {name: pred.stage_times[(0, 0)][1] / UNIT for name, pred in (("none", none), ("full", full))}
    # 4 samples: backward 4 x (2 + 4) ms; recomputed, + both forwards (4 x 3), or b0's alone.
    assert backward == {"none": pytest.approx(24), "full": pytest.approx(24 + 12)}
    assert every.stage_times[(0, 0)][1] / UNIT == pytest.approx(24 + 4)
    assert none.stage_times[(0, 0)][0] == full.stage_times[(0, 0)][0]  # the forward is unchanged


def test_hybrid_shard_shards_in_a_node_and_all_reduces_each_shard_across_nodes():
    graph = chain([1, 1], params=[10**6, 10**6])
    _, pred = _price(
        graph, resolve_cluster("h100:2x2"), strategy="dp", dp_degree=4, global_batch=4, dp_mode="hybrid_shard"
    )
    assert {m.shard for m in pred.memory} == {2}
    assert pred.memory[0].parameters == 2 * 10**6 * 4 // 2
    across = [i for i in pred.timeline if i.kind == "all-reduce"]
    assert {i.rank for i in across} == {0, 1, 2, 3}
    backward_end = max(i.end for i in pred.timeline if i.kind == "backward" and i.rank == 0)
    assert min(i.start for i in across) >= backward_end
    # Each shard (half the 8 MB of gradients) is all-reduced across the nodes: rank 0 with rank 2.
    assert pred.link_bytes[(0, 2)] == pytest.approx(2 * (2 - 1) / 2 * 4e6)


def test_the_search_takes_the_cheapest_lever_that_fits():
    # 4 M parameters: 64 MB of fp32 AdamW state in all, 30 MB per device.
    graph = chain([1] * 8, params=[500_000] * 8, saved=[1000] * 8)
    cluster = gpus(4, memory=30 * 2**20)
    result = search(graph, cluster, global_batch=4, strategy="dp", options=EXACT)
    best = result.best
    # Replicated: 64 MB; ZeRO-2 keeps all 16 MB gathered: 34 MB; ZeRO-3: 16 + 4 + 2 MB.
    assert (best.dp_mode, best.recompute, best.dp_degree) == ("full_shard", "none", 4)
    assert best.plan.dp_mode == "full_shard" and best.row()["dp_mode"] == "full_shard"
    pinned = search(graph, cluster, global_batch=4, strategy="dp", dp_mode="replicate", options=EXACT)
    assert pinned.best is None
    assert all("over its" in c.reason for c in pinned.candidates)
    # 10 MB of activations a block and sample, 40 MB per device: only ZeRO-3 with every block
    # recomputed (its inputs kept, one block's activations again in its backward) fits.
    heavy = chain([1] * 8, params=[500_000] * 8, saved=[10 * 2**20] * 8, edge_bytes=1000)
    roomier = gpus(4, memory=40 * 2**20)
    recomputed = search(heavy, roomier, global_batch=4, strategy="dp", options=EXACT).best
    assert (recomputed.dp_mode, recomputed.recompute) == ("full_shard", "full")


def test_a_lever_is_skipped_only_when_no_split_could_fit():
    # may_fit's greedy answer against every contiguous split, by the same lower bound.
    import itertools
    import random

    from planner.search.stage_problem import StageProblem

    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        n, k = rng.randint(2, 7), rng.randint(1, 3)
        k = min(k, n)
        graph = chain([1] * n, params=[rng.randint(1, 9) * 10**5 for _ in range(n)])
        cluster = gpus(k, memory=rng.randint(3, 30) * 2**20)
        kind = "dp" if k == 1 else "pp"
        extra = {} if k == 1 else {"pp_degree": k, "schedule": "gpipe", "micro_batches": 1}
        plan = make_plan(graph, cluster, strategy=kind, global_batch=1, **extra)
        problem = StageProblem(Pricer(graph, cluster, options=EXACT), plan)
        splits = itertools.combinations(range(1, n), k - 1)
        brute = any(
            all(problem.fits(j, a, b - 1) for j, (a, b) in enumerate(itertools.pairwise([0, *cuts, n])))
            for cuts in splits
        )
        assert problem.may_fit() == brute
        seen.add(brute)
    assert seen == {True, False}  # both answers were checked


def test_a_recomputation_setting_is_read_strictly():
    from planner.errors import PlannerError
    from planner.search.levers import check_levers

    for bad in ("every-1", "every-02", "every-\u0661\u0662", "every-" + "9" * 5000, "sometimes"):
        with pytest.raises(PlannerError, match=r"is not none, full or every-K with K >= 2 \(or auto\)"):
            check_levers("auto", bad)
    with pytest.raises(PlannerError, match="dp_mode 'zero4' is not one of auto, replicate"):
        check_levers("zero4", "auto")
    check_levers("full_shard", "every-3")  # accepted


def test_pricing_a_sharded_pipeline_leaves_no_reference_cycle():
    # The search prices thousands of plans: garbage in cycles waits for the cycle collector,
    # which then walks every young object (a third of a large search's time, once).
    import gc

    graph = chain([1, 1, 1, 1], params=[1000, 1000, 3000, 2000])
    cluster = gpus(4)
    plan = make_plan(
        graph,
        cluster,
        strategy="hybrid",
        dp_degree=2,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=2,
        global_batch=4,
        dp_mode="full_shard",
        recompute="full",
    )
    pricer = Pricer(graph, cluster)
    gc.collect()
    gc.disable()
    try:
        pricer(plan)
        assert gc.collect() == 0
    finally:
        gc.enable()
