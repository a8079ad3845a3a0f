"""The profile schema, with a hand-written profile of a two-block chain."""

from pathlib import Path

import pytest

from planner.capture.graph import graph_digest
from planner.cost.price import price
from planner.cost.timing import CostOptions
from planner.errors import PlannerError
from planner.precision import Precision
from planner.profile import load_profile, profile_from_json
from planner.search.build import make_plan
from tests.handmade import chain, gpus

FIXTURE = Path(__file__).parent / "fixtures" / "profile_chain.json"


def profiled_graph():
    return chain([1, 1], edge_bytes=10**6)


def test_the_hand_written_profile_belongs_to_its_graph():
    profile = load_profile(FIXTURE)
    assert profile.graph_digest == graph_digest(profiled_graph()), (
        "the chain's digest changed: rewrite the fixture"
    )


def test_block_times_interpolate_between_measured_sizes_and_scale_outside():
    profile = load_profile(FIXTURE)
    assert profile.block_time("b0", "h100-80gb", 1) == (0.003, 0.005)
    assert profile.block_time("b0", "h100-80gb", 2) == pytest.approx((0.005, 0.009))
    assert profile.block_time("b0", "h100-80gb", 8) == pytest.approx((0.018, 0.034))
    assert profile.block_time("b0", "a100-80gb", 1) is None
    assert profile.link("nvlink4", "p2p") == (0.0005, 1e9)


def test_measured_numbers_drive_the_price_and_the_plan_cites_the_profile():
    graph, cluster, profile = profiled_graph(), gpus(2), load_profile(FIXTURE)
    plan = make_plan(graph, cluster, strategy="pp", pp_degree=2, schedule="gpipe", global_batch=1)
    pred = price(graph, cluster, plan, profile=profile, options=CostOptions(compute_efficiency=1.0))
    send = 0.0005 + 10**6 / 1e9  # the profile's link, not NVLink's datasheet figure
    optimizer = 0  # no parameters
    assert pred.step_time_s == pytest.approx(0.003 + send + 0.001 + 0.001 + send + 0.005 + optimizer)
    assert pred.sources["step_time_s"] == f"profile:{profile.digest()}"
    assert all(m.overhead == 536870912 for m in pred.memory)
    with pytest.raises(PlannerError, match=r"profile\.graph_digest: measured for graph"):
        price(
            chain([2, 1]),
            cluster,
            make_plan(chain([2, 1]), cluster, strategy="pp", pp_degree=2, schedule="gpipe", global_batch=1),
            profile=profile,
        )


def test_a_profile_prices_only_plans_that_compute_in_its_dtype():
    graph, cluster = profiled_graph(), gpus(2)
    fp32 = load_profile(FIXTURE)
    bf16 = fp32.model_copy(update={"precision": Precision.BF16_MIXED})
    for precision, profile, timed in (
        ("fp32", fp32, True),
        ("bf16-mixed", fp32, False),  # fp32 timings would price bf16 compute 15x too slow on an H100
        ("bf16-mixed", bf16, True),
        ("bf16", bf16, True),  # the same compute dtype
    ):
        plan = make_plan(
            graph,
            cluster,
            strategy="pp",
            pp_degree=2,
            schedule="gpipe",
            global_batch=1,
            training={"precision": precision},
        )
        pred = price(graph, cluster, plan, profile=profile)
        forward = next(i for i in pred.timeline if i.kind == "forward")
        assert (forward.end - forward.start == pytest.approx(0.003)) == timed, (precision, profile.precision)


def test_bad_profiles_name_the_field():
    text = FIXTURE.read_text()
    with pytest.raises(PlannerError, match=r"blocks.0.forward_s: Input should be greater than or equal to 0"):
        profile_from_json(text.replace('"forward_s": 0.003', '"forward_s": -1'))
    negative = text.replace('"host"', '"schedule_action_s": {"cpu": {"1f1b": -0.001}}, "host"')
    with pytest.raises(PlannerError, match=r"schedule_action_s.cpu.1f1b: Input should be greater than"):
        profile_from_json(negative)
    with pytest.raises(PlannerError, match="colour: unknown key"):
        profile_from_json(text.replace('"host"', '"colour": 1, "host"'))
    with pytest.raises(PlannerError, match="graph_digest: String should match pattern"):
        profile_from_json(text.replace(graph_digest(profiled_graph()), "abc"))


def test_a_measured_all_reduce_replaces_the_ring_formula():
    from planner.profile import Profile

    graph, cluster = chain([1], params=[10**6]), gpus(2)
    profile = Profile(
        graph_digest=graph_digest(graph),
        links=[
            {"link_kind": "nvlink4", "op": "all_reduce", "ranks": 2, "latency_s": 0.001, "bandwidth": 5e8}
        ],
    )
    plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2)
    pred = price(graph, cluster, plan, profile=profile, options=CostOptions(compute_efficiency=1.0))
    reduce = next(i for i in pred.timeline if i.kind == "all-reduce")
    assert reduce.end - reduce.start == pytest.approx(0.001 + 4 * 10**6 / 5e8)
    assert pred.sources["step_time_s"].startswith(f"profile:{profile.digest()}")
    # Measured with 4 ranks, priced for 2 as a ring scales: 2(d - 1) steps, 2(d - 1)/d of
    # the buffer sent per rank; so a third of the latency and two thirds of the bytes' time.
    other = profile.model_copy(update={"links": [profile.links[0].model_copy(update={"ranks": 4})]})
    pred = price(graph, cluster, plan, profile=other, options=CostOptions(compute_efficiency=1.0))
    reduce = next(i for i in pred.timeline if i.kind == "all-reduce")
    assert reduce.end - reduce.start == pytest.approx(0.001 / 3 + 4 * 10**6 / 5e8 * (1.0 / 1.5))
    # Measured over another kind of link: the ring formula on the datasheet links instead.
    other = profile.model_copy(update={"links": [profile.links[0].model_copy(update={"link_kind": "pcie4"})]})
    pred = price(graph, cluster, plan, profile=other, options=CostOptions(compute_efficiency=1.0))
    ring = max((i.end - i.start for i in pred.timeline if i.kind == "all-reduce"), default=0.0)
    assert ring < 1e-6  # the handmade links: no latency, unbounded bandwidth


@pytest.mark.parametrize("loop", ["gpipe", "1f1b", "interleaved_1f1b", "ddp"])
def test_the_tiny_runs_host_work_is_shared_over_every_action_a_rank_takes(loop):
    from planner.cluster import parse_short_form
    from planner.schedules import rank_actions
    from runtime.measure.tiny_run import actions_per_rank, tiny_plan

    plan = tiny_plan(loop, parse_short_form("cpu:2"), (0, 1)).plan
    if loop == "ddp":
        assert (plan.dp_degree, plan.pp_degree) == (2, 1) and actions_per_rank(plan) == 2  # forward, backward
        return
    orders = rank_actions(plan.schedule, 2, plan.training.micro_batches, plan.virtual_stages)
    assert [len(order) for order in orders] == [actions_per_rank(plan)] * 2
    assert len(plan.stages) == (4 if loop == "interleaved_1f1b" else 2)


def test_a_profile_times_loading_a_steps_samples_of_the_models_own_data_set(monkeypatch):
    from planner.capture.source import PY_ALLOW_ENV
    from runtime.measure.profiling import batch_load_timings

    timings = batch_load_timings("gpt", {"size": "toy"}, [2, 4], repeats=3)
    assert [t.samples for t in timings] == [2, 4, 16, 32] and all(t.seconds > 0 for t in timings)
    monkeypatch.setenv(PY_ALLOW_ENV, "tests.fixtures.models")  # the user's consent, this test only
    assert batch_load_timings("py:tests.fixtures.models:two_linear", {}, [2], repeats=3) == []  # no data set


def test_the_wide_tiny_pipeline_holds_its_gradients_half_on_each_rank():
    from planner.cluster import parse_short_form
    from runtime.measure.tiny_run import WIDE, tiny_plan

    cluster = parse_short_form("cpu:2")
    narrow, wide = tiny_plan("1f1b", cluster, (0, 1)), tiny_plan("1f1b", cluster, (0, 1), width=WIDE)
    # WIDE -> WIDE -> WIDE -> 8: weights and biases, fp32, over two ranks.
    assert wide.gradient_bytes == 4 * (2 * (WIDE * WIDE + WIDE) + WIDE * 8 + 8) / 2
    assert narrow.gradient_bytes < wide.gradient_bytes / 1000
