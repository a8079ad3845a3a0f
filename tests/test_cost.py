"""price(): small cases worked out by hand (times in ms of forward work on an H100)."""

import networkx as nx
import pytest

from planner.capture.graph import graph_digest
from planner.cluster import Cluster
from planner.cost.price import Pricer, price
from planner.cost.timing import CostOptions, ring_all_reduce_time
from planner.devices import device_kind
from planner.errors import PlanError
from planner.profile import Profile
from planner.schedules import closed_form_step
from planner.search.build import make_plan
from tests.handmade import PEAK, UNIT, chain, gpus

EXACT = CostOptions(compute_efficiency=1.0, memory_efficiency=1.0, backward_factor=2.0)


def _pp(graph, cluster, schedule, m, *, batch=None, **kw):
    p = len([n for n in graph if n.startswith("b")])
    plan = make_plan(
        graph,
        cluster,
        strategy="pp",
        pp_degree=kw.pop("pp", p),
        schedule=schedule,
        micro_batches=m,
        global_batch=batch or m,
        **kw,
    )
    return price(graph, cluster, plan, options=EXACT)


def _ms(pred):
    return pred.step_time_s / UNIT


def test_gpipe_equals_the_closed_form_without_communication():
    f = [2, 1, 1, 1]
    pred = _pp(chain(f), gpus(4), "gpipe", 8)
    assert _ms(pred) == pytest.approx(closed_form_step([3 * x for x in f], 8)) == pytest.approx(57)


def test_1f1b_with_an_uneven_first_stage_is_below_the_closed_form():
    pred = _pp(chain([2, 1, 1, 1]), gpus(4), "1f1b", 8)
    assert _ms(pred) == pytest.approx(51)  # docs/facts.md (Pipeline pricing): the same case simulated
    assert _ms(pred) < closed_form_step([6, 3, 3, 3], 8)


def test_1f1b_timeline_matches_the_one_drawn_by_hand():
    # p=2, m=2, forward [2, 1], backward [4, 2]. Stage 0: F0 F1 B0 B1; stage 1: F0 B0 F1 B1.
    pred = _pp(chain([2, 1]), gpus(2), "1f1b", 2)
    got = [
        (i.rank, i.kind, i.micro_batch, round(i.start / UNIT, 9), round(i.end / UNIT, 9))
        for i in pred.timeline
        if i.kind != "optimizer"
    ]
    assert got == [
        (0, "forward", 0, 0, 2),
        (0, "forward", 1, 2, 4),
        (0, "idle", None, 4, 5),
        (0, "backward", 0, 5, 9),
        (0, "backward", 1, 9, 13),
        (1, "idle", None, 0, 2),
        (1, "forward", 0, 2, 3),
        (1, "backward", 0, 3, 5),
        (1, "forward", 1, 5, 6),
        (1, "backward", 1, 6, 8),
        (1, "idle", None, 8, 13),
    ]
    assert _ms(pred) == pytest.approx(13)
    busy = (2 + 2 + 4 + 4) + (1 + 2 + 1 + 2)
    assert pred.bubble_fraction == pytest.approx(1 - busy / (2 * 13))


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_link_latency_adds_exactly_the_per_hop_cost(stages):
    graph = chain([1] * stages, edge_bytes=1024)
    base = _pp(graph, gpus(stages), "gpipe", 1)
    slow = _pp(graph, gpus(stages, latency=0.25 * UNIT), "gpipe", 1)
    hops = 2 * (stages - 1)  # one forward and one backward transfer per boundary
    assert _ms(slow) - _ms(base) == pytest.approx(0.25 * hops)


def test_a_skip_edge_is_sent_across_every_boundary_it_crosses():
    plain = chain([1, 1, 1], edge_bytes=100)
    skip = chain([1, 1, 1], edge_bytes=100, skips=[(0, 2, 1000)])
    bw = 1000 / UNIT  # 1000 bytes take 1 ms
    m = 2
    base, pred = _pp(plain, gpus(3, bandwidth=bw), "gpipe", m), _pp(skip, gpus(3, bandwidth=bw), "gpipe", m)
    samples = 1  # global batch m over m micro-batches
    # Forward on both boundaries, backward (gradients) on both: the skip is charged twice each way.
    assert pred.link_bytes[(0, 1)] == pred.link_bytes[(1, 0)] == (100 + 1000) * samples * m
    assert pred.link_bytes[(1, 2)] == pred.link_bytes[(2, 1)] == (100 + 1000) * samples * m
    assert pred.bytes_sent - base.bytes_sent == 4 * 1000 * m
    assert _ms(pred) > _ms(base)


def test_1f1b_keeps_fewer_micro_batches_in_flight_on_stage_0():
    graph = chain([1, 1, 1, 1], saved=[1000] * 4)
    gpipe, one_f = _pp(graph, gpus(4), "gpipe", 8), _pp(graph, gpus(4), "1f1b", 8)
    assert gpipe.memory[0].in_flight == {0: 8} and one_f.memory[0].in_flight == {0: 4}
    assert gpipe.memory[0].activations == 8 * 1000 and one_f.memory[0].activations == 4 * 1000
    assert [m.in_flight for m in one_f.memory] == [{0: 4}, {1: 3}, {2: 2}, {3: 1}]


def test_a_rank_with_two_stages_holds_the_highest_sum_over_the_order_not_the_sum_of_peaks():
    graph = chain([1, 1, 1, 1], saved=[1000] * 4)
    pred = _pp(graph, gpus(2), "interleaved_1f1b", 4, pp=2, virtual_stages=2)
    second = pred.memory[1]  # stages 1 and 3: at most 3 and 1 micro-batches in flight
    assert second.in_flight == {1: 3, 3: 1}
    # ...but never 4 at once: stage 3's first backward comes before stage 1's third forward.
    assert second.activations == 3 * 1000


def test_pipeline_stages_hold_a_receive_buffer_per_micro_batch():
    # torch's stages allocate, once, a buffer for every micro-batch's activation coming in
    # and every gradient coming back; the first stage receives no activation, the last no
    # gradient.
    graph = chain([1, 1, 1], edge_bytes=100, grad_bytes=30)
    pred = _pp(graph, gpus(3), "1f1b", 4, batch=8)  # micro-batches of 2
    assert [m.buffers for m in pred.memory] == [4 * 2 * 30, 4 * 2 * (100 + 30), 4 * 2 * 100]
    dp = price(graph, gpus(2), make_plan(graph, gpus(2), strategy="dp", dp_degree=2, global_batch=8))
    assert [m.buffers for m in dp.memory] == [0, 0]


def test_a_rank_with_a_small_share_holds_only_its_own_share():
    # Ranks build the model on the meta device and make only their own stages real: a last
    # stage far smaller than the first is priced for its own parameters, never the whole model.
    graph = chain([1, 1], params=[10**6, 10], saved=[0, 0])
    pred = _pp(graph, gpus(2), "gpipe", 2, batch=8)
    first, last = pred.memory
    assert "build" not in last.terms()
    assert last.parameters == 4 * 10 and first.parameters == 4 * 10**6
    assert last.total - last.overhead - last.runtime < 4 * 10**6 // 100


def test_memory_terms_follow_the_formula():
    graph = chain([1, 1], params=[1000, 3000], saved=[40, 80], out_bytes=[0, 12])
    cluster = gpus(2)
    plan = make_plan(
        graph, cluster, strategy="pp", pp_degree=2, schedule="gpipe", micro_batches=2, global_batch=8
    )
    last = price(graph, cluster, plan, options=EXACT).memory[1]
    assert last.terms() == {
        "parameters": 4 * 3000,
        "gradients": 4 * 3000,
        "optimizer": 8 * 3000,  # AdamW: two fp32 moments
        "gathered": 0,  # replicated: no sharded group gathers parameters
        "casts": 0,  # fp32: no autocast copies of the weights
        "activations": 80 * 4 * 2,  # saved per sample x micro-batch of 4 x 2 in flight (GPipe)
        "recomputed": 0,  # no block recomputes
        "loss_outputs": 2 * 12 * 4 * 2,  # the output and cross-entropy's log-probabilities
        "buffers": 0,  # the chain's edges carry no bytes
        # AdamW's step holds two temporaries of the largest parameter; the activations are
        # freed by then, so this is how far the step rises above them.
        "temporaries": 2 * 4 * 3000 - (80 * 4 * 2 + 2 * 12 * 4 * 2),
        "runtime": 0,  # measured by a profile only
        "overhead": 0,
    }
    m = _pp(graph, cluster, "gpipe", 2, batch=8, training={"precision": "bf16-mixed"}).memory[1]
    # 16 B/param in all, as autocast holds them: fp32 weights (4), gradients (4), two moments (8)...
    assert (m.parameters, m.gradients, m.optimizer) == (4 * 3000, 4 * 3000, 8 * 3000)
    # ...and a bf16 copy of the weights per micro-batch in flight, kept for its backward.
    assert m.casts == 2 * 3000 * 2
    assert m.activations == 80 * 4 * 2 // 2  # bf16 activations
    # The output in bf16, cross-entropy's log-probabilities in fp32 (on autocast's fp32 list).
    assert m.loss_outputs == (12 // 2 + 12) * 4 * 2
    p = _pp(graph, cluster, "gpipe", 2, batch=8, training={"precision": "bf16"}).memory[1]
    assert (p.parameters + p.gradients + p.optimizer) / 3000 == 8 and p.casts == 0
    assert p.loss_outputs == 2 * 12 // 2 * 4 * 2


def test_each_precision_prices_compute_at_its_own_peak():
    graph = chain([1, 1], params=[1000, 3000], saved=[40, 80])
    cluster = gpus(2)
    times = {
        precision: _pp(graph, cluster, "gpipe", 2, batch=8, training={"precision": precision}).step_time_s
        for precision in ("fp32", "bf16-mixed", "bf16")
    }
    kind = device_kind(cluster.devices[0].kind)
    ratio = kind.peak_flops["bfloat16"] / kind.peak_flops["float32"]
    assert times["fp32"] / times["bf16-mixed"] == pytest.approx(ratio, rel=0.01)
    assert times["bf16"] == pytest.approx(times["bf16-mixed"], rel=0.01)


def test_backward_holds_an_ops_gradients_and_a_weights_gradient_at_once():
    graph = chain([1, 1], params=[1000, 3000], saved=[40, 80])
    # One op of b1 reads and writes 5000 B of activations per sample: in backward, the
    # gradients of its output and of its input exist together, with its weight's gradient.
    graph.nodes["b1"]["ops"] = [[UNIT * PEAK, 5000, 0]]
    cluster = gpus(2)
    plan = make_plan(
        graph, cluster, strategy="pp", pp_degree=2, schedule="gpipe", micro_batches=2, global_batch=8
    )
    first, last = price(graph, cluster, plan, options=EXACT).memory
    assert last.temporaries == 4 * 3000 + 5000 * 4  # micro-batches of 4 samples
    # b0's ops move nothing: AdamW's step, above the activations, is the higher.
    assert first.temporaries == 2 * 4 * 1000 - 40 * 4 * 2


def test_data_parallel_all_reduce_is_a_ring_after_the_last_backward():
    graph = chain([1], params=[10**6])
    latency, bw = 0.1 * UNIT, 4e6 / UNIT  # 4 MB per ms
    cluster = gpus(2, latency=latency, bandwidth=bw)
    plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2)
    pred = price(graph, cluster, plan, options=EXACT)
    ring = ring_all_reduce_time(4e6, 2, latency, bw)  # 2 latencies + 4 MB / 4 MB/ms
    assert ring / UNIT == pytest.approx(1.2)
    reduce = [i for i in pred.timeline if i.kind == "all-reduce"]
    assert {i.rank for i in reduce} == {0, 1}
    assert reduce[0].start / UNIT == pytest.approx(3)  # after F (1) + B (2)
    assert (reduce[0].end - reduce[0].start) == pytest.approx(ring)
    optimizer = [i for i in pred.timeline if i.kind == "optimizer"]
    assert optimizer[0].start == pytest.approx(reduce[0].end)
    assert pred.link_bytes == {(0, 1): 4 * 10**6, (1, 0): 4 * 10**6}  # 2(d-1)/d x 4 MB each way


def test_tied_weights_on_two_stages_are_summed_between_them():
    graph = chain([1, 1], params=[100, 0])
    graph.nodes["b0"]["shared_params"] = ["b0.weight"]
    graph.nodes["b1"]["shared_params"] = ["b0.weight"]
    pred = _pp(graph, gpus(2, latency=0.5 * UNIT), "gpipe", 1)
    tied = [i for i in pred.timeline if i.kind == "all-reduce"]
    assert {i.rank for i in tied} == {0, 1}
    assert pred.memory[1].parameters == 400  # the copy of the tied weight on stage 1


def _cpus(n, cores, *, latency=0.0, bandwidth=1e30):
    """n CPU ranks on one node of ``cores`` cores, every pair linked by loopback."""
    return Cluster(
        devices=[
            {"id": i, "kind": "cpu", "node": 0, "memory_bytes": 2**30, "compute_share": cores / n}
            for i in range(n)
        ],
        links=[
            {"a": a, "b": b, "kind": "loopback", "latency": latency, "bandwidth": bandwidth}
            for a in range(n)
            for b in range(a + 1, n)
        ],
    )


def test_cores_shared_by_more_ranks_than_there_are_run_at_their_share():
    graph = chain([1])
    cluster = _cpus(4, 2)
    alone = make_plan(graph, cluster, strategy="dp", global_batch=4)
    four = make_plan(graph, cluster, strategy="dp", dp_degree=4, global_batch=16)
    t_alone = price(graph, cluster, alone, options=EXACT)
    t_four = price(graph, cluster, four, options=EXACT)
    compute = lambda p: sum(
        i.end - i.start for i in p.timeline if i.kind in ("forward", "backward") and i.rank == 0
    )
    # Same per-rank batch (4 samples); four ranks on two cores each run at half speed.
    assert compute(t_four) == pytest.approx(2 * compute(t_alone))


def test_communication_between_ranks_sharing_cores_runs_at_their_share():
    graph = chain([1], params=[10**6])
    bw = 4e6 / UNIT  # 4 MB per ms

    def all_reduce(cores):
        cluster = _cpus(4, cores, bandwidth=bw)
        plan = make_plan(graph, cluster, strategy="dp", dp_degree=4, global_batch=4)
        pred = price(graph, cluster, plan, options=EXACT)
        return next(i.end - i.start for i in pred.timeline if i.kind == "all-reduce")

    ring = ring_all_reduce_time(4e6, 4, 0.0, bw)
    assert all_reduce(4) == pytest.approx(ring)  # a core per rank: the link's figure
    # Four processes reducing on two cores get half a core each: twice as long.
    assert all_reduce(2) == pytest.approx(2 * ring)


def test_a_send_moves_once_its_receiver_has_posted_the_receive():
    # GPipe, p = 2, m = 2, forward [1, 2], a 0.5 ms hop. Stage 1 posts micro-batch 1's
    # receive when its forward of micro-batch 0 ends (at 3.5), so the send made ready at 2
    # starts then, and its forward waits for the whole transfer: 4.0, not 3.5.
    pred = _pp(chain([1, 2], edge_bytes=1), gpus(2, latency=0.5 * UNIT), "gpipe", 2)
    at = lambda kind, rank, mb: next(
        (round(i.start / UNIT, 9), round(i.end / UNIT, 9))
        for i in pred.timeline
        if i.kind == kind and i.rank == rank and i.micro_batch == mb
    )
    assert at("send", 0, 0) == (1.0, 1.5)
    assert at("forward", 1, 0) == (1.5, 3.5)
    assert at("send", 0, 1) == (3.5, 4.0)
    assert at("forward", 1, 1) == (4.0, 6.0)


def test_idle_time_carries_its_cause():
    # Data parallel: the gap before the optimizer is the all-reduce; a pipeline's last
    # stage waits for its peer's data first, and its first stage idles at the step's end.
    graph = chain([1], params=[10**6])
    cluster = gpus(2, latency=0.1 * UNIT, bandwidth=4e6 / UNIT)
    dp = price(graph, cluster, make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2))
    assert {i.waiting_for for i in dp.timeline if i.kind == "idle"} == {"communication"}
    pp = _pp(chain([1, 1], edge_bytes=1), gpus(2, latency=0.5 * UNIT), "gpipe", 2)
    idle = {(i.rank, i.waiting_for) for i in pp.timeline if i.kind == "idle"}
    # Stage 0 waits for gradients, stage 1 for activations, then idles once its last
    # backward is done while stage 0 still computes.
    assert idle == {(0, "peer"), (1, "peer"), (1, "end")}


def test_a_profile_prices_each_schedules_host_work_per_action():
    graph = chain([1, 1])
    cluster = gpus(2)
    base = _pp(graph, cluster, "gpipe", 2)
    profile = Profile(
        graph_digest=graph_digest(graph),
        pipeline_action_s={"h100-80gb": 0.5 * UNIT},
        schedule_action_s={"h100-80gb": {"1f1b": 0.25 * UNIT, "ddp": 0.125 * UNIT}},
    )

    def host(schedule):
        plan = make_plan(
            graph, cluster, strategy="pp", pp_degree=2, schedule=schedule, micro_batches=2, global_batch=2
        )
        return price(graph, cluster, plan, profile, options=EXACT).host_s

    # Four actions a rank (two forwards, two backwards), each its schedule's figure; a
    # schedule the profile did not time takes the pipeline's figure.
    assert host("1f1b") == {0: pytest.approx(1.0 * UNIT), 1: pytest.approx(1.0 * UNIT)}
    assert host("gpipe") == {0: pytest.approx(2.0 * UNIT), 1: pytest.approx(2.0 * UNIT)}
    assert base.host_s == {0: 0.0, 1: 0.0}  # datasheet only: no host work priced
    dp = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2)
    assert price(graph, cluster, dp, profile, options=EXACT).host_s == {
        0: pytest.approx(0.25 * UNIT),
        1: pytest.approx(0.25 * UNIT),
    }


def test_a_step_pays_its_batch_load_and_a_pipeline_rank_its_gradients_before_its_first_action():
    from planner.profile import BatchTiming

    graph = chain([1, 1], params=[1000, 3000])
    cluster = gpus(2)
    profile = Profile(
        graph_digest=graph_digest(graph),
        grad_s_per_byte={"h100-80gb": 1e-6 * UNIT},
        batch_load=[BatchTiming(samples=1, seconds=0.1 * UNIT), BatchTiming(samples=4, seconds=0.4 * UNIT)],
    )
    bare = Profile(graph_digest=graph_digest(graph))
    plan = make_plan(
        graph, cluster, strategy="pp", pp_degree=2, schedule="gpipe", micro_batches=2, global_batch=2
    )
    paid, base = (price(graph, cluster, plan, p, options=EXACT) for p in (profile, bare))
    load = 0.2 * UNIT  # two samples, between the measured one and four
    assert paid.host_s == {0: pytest.approx(load + 4000e-6 * UNIT), 1: pytest.approx(load + 12000e-6 * UNIT)}
    assert base.host_s == {0: 0.0, 1: 0.0}
    first = min((i for i in paid.timeline if i.rank == 0 and i.kind == "forward"), key=lambda i: i.start)
    assert first.end - first.start == pytest.approx(1.0 * UNIT + paid.host_s[0])  # paid by its first forward
    assert paid.step_time_s >= base.step_time_s + paid.host_s[0]  # which everything after waits for
    # One stage: the batch alone (DDP's gradients are not zeroed in place).
    dp = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=8)
    assert price(graph, cluster, dp, profile, options=EXACT).host_s == {
        0: pytest.approx(0.4 * UNIT),
        1: pytest.approx(0.4 * UNIT),
    }


def test_gan_is_priced_as_its_phases():
    graph = nx.relabel_nodes(chain([1, 2], edge_bytes=500), {"b0": "generator", "b1": "discriminator"})
    graph.graph["order"] = ["input:x", "generator", "discriminator"]
    for name in ("generator", "discriminator"):
        graph.nodes[name]["fqn"] = name
    cluster = gpus(2, latency=0.5 * UNIT)
    plan = make_plan(
        graph, cluster, strategy="mp", pp_degree=2, global_batch=1, stage_names=["generator", "discriminator"]
    )
    pred = price(graph, cluster, plan, options=EXACT)
    # D: real F(2) B(4); fake F(2) B(4) after G F(1) + send(0.5); opt; G-step F(2) B(4);
    # grad back (0.5); G backward (2).
    assert _ms(pred) == pytest.approx(2 + 4 + 2 + 4 + 2 + 4 + 0.5 + 2)
    assert pred.link_bytes == {(0, 1): 500, (1, 0): 500}


def test_a_gan_replica_runs_d_three_times_and_reduces_its_gradients_twice():
    # G: 1 ms forward per sample; D: 2 ms; 100 and 10 parameters.
    graph = nx.relabel_nodes(chain([1, 2], params=[100, 10]), {"b0": "generator", "b1": "discriminator"})
    graph.graph["order"] = ["input:x", "generator", "discriminator"]
    for name in ("generator", "discriminator"):
        graph.nodes[name]["fqn"] = name
    cluster = gpus(2)
    plan = make_plan(graph, cluster, strategy="dp", dp_degree=2, global_batch=2)  # one sample each
    pred = price(graph, cluster, plan, options=EXACT)
    # runtime.parallel.gan.gan_step: G(z); D on real and generated (2 samples); D again on generated
    # (1) for G's loss, backward through D and G.
    forward, backward = pred.stage_times[(0, 0)]
    assert forward == pytest.approx((1 + 2 * 2 + 2) * UNIT)
    assert backward == pytest.approx((2 + 2 * 4 + 4) * UNIT)
    # D's gradients after D's loss, then G's and D's after G's loss: each hop of a
    # 2-rank ring carries the whole buffer.
    assert pred.link_bytes[(0, 1)] == 4 * (10 + 110)


def test_a_profile_replaces_datasheet_times_and_is_cited():
    graph = chain([1, 1])
    cluster = gpus(2)
    plan = make_plan(
        graph, cluster, strategy="pp", pp_degree=2, schedule="gpipe", micro_batches=1, global_batch=1
    )
    profile = Profile(
        graph_digest=graph_digest(graph),
        blocks=[
            {
                "block": "b0",
                "device_kind": "h100-80gb",
                "micro_batch_size": 1,
                "forward_s": 0.003,
                "backward_s": 0.005,
            },
            {
                "block": "b1",
                "device_kind": "h100-80gb",
                "micro_batch_size": 1,
                "forward_s": 0.001,
                "backward_s": 0.001,
            },
        ],
    )
    pred = price(graph, cluster, plan, profile=profile, options=EXACT)
    assert _ms(pred) == pytest.approx(3 + 1 + 1 + 5)
    assert pred.sources["step_time_s"] == f"profile:{profile.digest()}+datasheet"  # links from the datasheet
    assert (
        plan.model_copy(update={"predicted": pred.to_predicted()}).predicted.step_time_s == pred.step_time_s
    )


def test_a_plan_for_another_graph_is_refused():
    plan = make_plan(chain([1, 1]), gpus(2), strategy="pp", pp_degree=2, schedule="gpipe", global_batch=1)
    with pytest.raises(PlanError, match=r"model\.graph_digest: this plan is for graph"):
        price(chain([1, 2]), gpus(2), plan)


def _nodes_of(per_node: int, nodes: int) -> Cluster:
    n = per_node * nodes
    return Cluster(
        devices=[
            {"id": i, "kind": "h100-80gb", "node": i // per_node, "memory_bytes": 2**34} for i in range(n)
        ],
        links=[
            {"a": a, "b": b, "kind": "nvlink4" if a // per_node == b // per_node else "infiniband-ndr"}
            for a in range(n)
            for b in range(a + 1, n)
        ],
    )


@pytest.mark.parametrize(
    "per_node, nodes, dp, pp, dp_mode, classes",
    [
        (4, 2, 2, 4, "replicate", 1),  # a pipeline per node: one simulated for both
        (4, 3, 4, 3, "replicate", 3),  # pipelines of 3 on nodes of 4 cross them in three ways
        (4, 3, 4, 3, "shard_grad_op", 3),
        (4, 3, 4, 3, "full_shard", 3),
        (4, 2, 4, 2, "hybrid_shard", 1),  # (needs as many ranks of a stage on every node)
        (4, 3, 2, 6, "replicate", 2),  # pipelines of 6 cross a node boundary at their 4th or 2nd hop
    ],
)
def test_replicas_that_run_alike_are_simulated_once_with_the_same_result(
    per_node, nodes, dp, pp, dp_mode, classes
):
    from planner.cost.plan_pricing import PlanPricing

    graph = chain([1, 2, 1, 1, 2, 1], edge_bytes=5000, params=[1000] * 6)
    cluster = _nodes_of(per_node, nodes)
    plan = make_plan(
        graph,
        cluster,
        strategy="hybrid",
        dp_degree=dp,
        pp_degree=pp,
        schedule="1f1b",
        micro_batches=max(4, pp),
        global_batch=2 * max(4, pp) * dp,
        dp_mode=dp_mode,
    )
    fast = price(graph, cluster, plan, options=EXACT)
    assert len(PlanPricing(Pricer(graph, cluster, options=EXACT), plan).simulated) == classes
    every = PlanPricing.replicas_to_simulate
    try:
        PlanPricing.replicas_to_simulate = lambda self: {dp: dp for dp in range(self.plan.dp_degree)}
        slow = price(graph, cluster, plan, options=EXACT)
    finally:
        PlanPricing.replicas_to_simulate = every
    assert fast.step_time_s == slow.step_time_s
    assert fast.bubble_fraction == pytest.approx(slow.bubble_fraction, rel=1e-12)
    assert fast.link_bytes == slow.link_bytes
    assert fast.memory == slow.memory  # a mirrored rank holds what its simulated twin holds
    assert fast.host_s == slow.host_s and fast.comm_s == slow.comm_s
    key = lambda p: sorted((i.rank, round(i.start, 12), round(i.end, 12), i.kind) for i in p.timeline)
    assert key(fast) == key(slow)


def test_measured_contention_slows_only_the_compute_that_overlaps():
    from planner.cost.simulate import Task, simulate

    # Two ranks on one 2-core node: rank 0 runs 1 s then 1 s; rank 1 runs 1 s once.
    tasks = [Task(0, "forward", 1.0, 0), Task(1, "backward", 1.0, 0, deps=[0]), Task(2, "forward", 1.0, 1)]
    programs, node_of = {0: [0, 1], 1: [2]}, {0: 0, 1: 0}
    times, step = simulate(tasks, programs, node_of, {0: 2.0})
    assert step == pytest.approx(2.0)  # two cores: no sharing
    times, step = simulate(tasks, programs, node_of, {0: 2.0}, {0: 0.5})
    # Both compute at once at 1 / 1.5 speed; rank 0's second task then runs alone at full speed.
    assert times[0] == pytest.approx((0.0, 1.5)) and times[2] == pytest.approx((0.0, 1.5))
    assert times[1] == pytest.approx((1.5, 2.5)) and step == pytest.approx(2.5)
    # Four ranks on two cores: half a core each, and the contention on top.
    four = [Task(i, "forward", 1.0, i) for i in range(4)]
    _, step = simulate(four, {i: [i] for i in range(4)}, dict.fromkeys(range(4), 0), {0: 2.0}, {0: 0.5})
    assert step == pytest.approx(2.0 * 1.5)


def test_the_memory_check_without_the_step_agrees_with_the_priced_step():
    """`Pricer.fits` (what the search asks of each lever before timing it) says what pricing
    the whole step says, for plans that fit and plans that do not, in every data-parallel
    mode, with and without recomputation, on every schedule."""
    from planner.capture.coarsen import coarsen
    from planner.capture.trace import trace
    from planner.cluster import parse_short_form

    graph = coarsen(trace("gpt", {"size": "125m", "seq_len": 512}))
    verdicts = set()
    for memory_gib in (1.5, 3, 12):
        cluster = parse_short_form("a100-40gb:4x2")
        small = [d.model_copy(update={"memory_bytes": int(memory_gib * 2**30)}) for d in cluster.devices]
        cluster = cluster.model_copy(update={"devices": small})
        pricer = Pricer(graph, cluster)
        for dp, pp, schedule, dp_mode, recompute in [
            (8, 1, None, "replicate", "none"),
            (8, 1, None, "full_shard", "full"),
            (2, 4, "1f1b", "shard_grad_op", "none"),
            (4, 2, "gpipe", "hybrid_shard", "full"),
            (2, 4, "interleaved_1f1b", "replicate", "none"),
        ]:
            plan = make_plan(
                graph,
                cluster,
                strategy="dp" if pp == 1 else "hybrid",
                dp_degree=dp,
                pp_degree=pp,
                schedule=schedule,
                micro_batches=4,
                virtual_stages=2 if schedule == "interleaved_1f1b" else 1,
                global_batch=64,
                dp_mode=dp_mode,
                recompute=recompute,
                training={"precision": "bf16-mixed"},
            )
            feasible = pricer(plan).feasible
            assert pricer.fits(plan) == feasible, (memory_gib, dp, pp, schedule, dp_mode, recompute)
            verdicts.add(feasible)
    assert verdicts == {True, False}  # both answers were checked
