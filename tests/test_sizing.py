"""Sizing: the price catalogue's validation, the smallest cluster that meets a deadline (against
a brute force over node counts), the Pareto front, and `python -m planner size`."""

from __future__ import annotations

import json
import math
from functools import cache

import pytest

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cli import main
from planner.cluster import load_cluster, parse_short_form
from planner.errors import PlannerError
from planner.plan import load_plan
from planner.search.search import search
from planner.sizing.catalog import DEFAULT_PATH, CatalogError, catalog_from_json, default_catalog
from planner.sizing.report import off_the_front
from planner.sizing.size import (
    HOUR_S,
    SEARCH,
    Point,
    Shape,
    mixed_bound_hours,
    node_counts,
    size,
    step_bound,
)

OFFER = {
    "kind": "h100-80gb",
    "usd_per_device_hour": 3.0,
    "server_devices": 8,
    "node_sizes": [1],
    "source": "a test's own price",
    "date": "2026-12-01",
}
MODEL = ("gpt", {"size": "1m"})
BATCH = 64


def catalogue(max_nodes: int = 8, **changes) -> dict:
    return {"schema_version": 1, "name": "test", "max_nodes": max_nodes, "offers": [{**OFFER, **changes}]}


@cache
def graph():
    return coarsen(trace(*MODEL))


def test_the_default_catalogue_names_a_source_and_date_for_every_price():
    c = default_catalog()
    assert len(c.kinds()) >= 4
    for o in c.offers:
        assert o.source.strip() and o.date[:2] == "20" and o.usd_per_device_hour > 0
    # The datacenter GPUs come in whole 8-GPU servers; the others in parts of one too.
    assert c.offer("h100-80gb").node_sizes == [8]
    assert c.offer("rtx4090").node_sizes == [1, 2, 4, 8]
    assert json.loads(DEFAULT_PATH.read_text())["schema_version"] == 1


@pytest.mark.parametrize(
    "change, field, words",
    [
        (dict(usd_per_device_hour=-1.0), "offers.0.usd_per_device_hour", "greater than 0"),
        (dict(usd_per_device_hour=0.0), "offers.0.usd_per_device_hour", "greater than 0"),
        (dict(kind="h900"), "offers.0.kind", "h900"),
        (dict(kind="cpu"), "offers.0.kind", "no memory of its own"),
        (dict(node_sizes=[3]), "offers.0", "node_sizes: 3 does not divide the server's 8 devices"),
        (dict(node_sizes=[2, 2]), "offers.0", "names a size twice"),
        (dict(node_sizes=[]), "offers.0.node_sizes", "at least 1"),
        (dict(server_devices=0), "offers.0.server_devices", "greater than or equal to 1"),
        (dict(date="last year"), "offers.0.date", "not a date"),
        (dict(source=""), "offers.0.source", "at least 1"),
        (dict(usd_per_device_hour="3"), "offers.0.usd_per_device_hour", "valid number"),
        (dict(discount=0.2), "offers.0.discount", "unknown key"),
    ],
)
def test_a_bad_catalogue_is_refused_naming_the_field(change, field, words):
    with pytest.raises(CatalogError) as err:
        catalog_from_json(json.dumps(catalogue(**change)))
    assert f"{field}: " in str(err.value) and words in str(err.value)


def test_a_catalogue_offering_a_kind_twice_or_no_nodes_is_refused():
    twice = catalogue()
    twice["offers"].append(dict(OFFER, kind="h100"))  # the alias of the same kind
    with pytest.raises(CatalogError, match="kind 'h100-80gb' is offered twice"):
        catalog_from_json(json.dumps(twice))
    with pytest.raises(CatalogError, match="max_nodes: Input should be greater than or equal to 1"):
        catalog_from_json(json.dumps(catalogue(max_nodes=0)))
    with pytest.raises(CatalogError, match=r"not valid JSON|NaN"):
        catalog_from_json(json.dumps(catalogue()).replace("3.0", "NaN"))


def brute_force_hours(nodes: int | str, tokens: int) -> float | None:
    """Time to train on ``nodes`` single-H100 nodes (or on a cluster's short form), planned by
    the search alone; None when no plan fits."""
    best = search(
        graph(),
        parse_short_form(nodes if isinstance(nodes, str) else f"h100-80gb:1x{nodes}"),
        global_batch=BATCH,
        training={"precision": "bf16-mixed"},
        **SEARCH,
    ).best
    steps = math.ceil(tokens / (BATCH * graph().graph["config"]["seq_len"]))
    return None if best is None else best.prediction.step_time_s * steps / HOUR_S


@pytest.mark.parametrize("every", [False, True])
def test_the_smallest_node_count_that_meets_a_deadline_is_found(every):
    tokens, cap = 10**11, 16
    counts = node_counts(cap, every)
    assert counts == (list(range(1, 17)) if every else [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16])
    hours = {n: brute_force_hours(n, tokens) for n in counts}
    # No plan beats the bound the scan starts from: else it would skip a node count.
    steps = math.ceil(tokens / (BATCH * graph().graph["config"]["seq_len"]))
    bound = step_bound(graph(), "h100-80gb", BATCH, "bf16-mixed")
    assert all(bound.hours(n, steps) <= h for n, h in hours.items() if h is not None)
    assert bound.hours(1, steps) > 0.3 * hours[1]  # and it bounds closely enough to skip some
    # Each node count's own time as the deadline: the first count that meets it is the answer
    # (on this small model more nodes are not always faster).
    for deadline in sorted(h for h in hours.values() if h is not None):
        expected = min(n for n, h in hours.items() if h is not None and h <= deadline)
        found = size(
            graph(),
            catalog_from_json(json.dumps(catalogue(max_nodes=cap))),
            tokens=tokens,
            global_batch=BATCH,
            hours=deadline,
            every_node_count=every,
        )
        assert {p.shape.nodes for p in found.points} <= set(counts)
        cheapest = min(found.front, key=lambda p: p.cost_usd)
        meeting = [p.shape.nodes for p in found.points if p.fits and p.hours <= deadline]
        assert min(meeting) == expected, (deadline, hours)
        assert cheapest.hours <= deadline
        assert cheapest.cost_usd == pytest.approx(cheapest.hours * cheapest.shape.devices * 3.0)


def test_a_deadline_no_shape_can_meet_is_said_with_the_largest_shape():
    found = size(
        graph(),
        catalog_from_json(json.dumps(catalogue(max_nodes=4))),
        tokens=10**13,
        global_batch=BATCH,
        hours=1e-3,
    )
    assert found.front == []
    assert [p.shape.nodes for p in found.points] == [4]  # not even at peak: only the cap is planned
    assert found.points[0].why_not.startswith("too slow:") and "cap of 4 nodes" in found.points[0].why_not


def test_a_model_without_token_sequences_is_refused_by_name():
    with pytest.raises(PlannerError, match="model 'mlp': its samples are not token sequences"):
        size(coarsen(trace("mlp", {})), default_catalog(), tokens=10**9, global_batch=8, hours=10)


def test_the_front_keeps_only_what_nothing_beats(tmp_path):
    two = catalogue(max_nodes=4)
    two["offers"].append(dict(OFFER, kind="a100-80gb", usd_per_device_hour=1.0))
    found = size(
        graph(), catalog_from_json(json.dumps(two)), tokens=10**11, global_batch=BATCH, budget_usd=1e9
    )
    assert found.front
    for p in found.front:
        assert not any(q.hours <= p.hours and q.cost_usd < p.cost_usd for q in found.points if q.fits)
    times = [p.hours for p in found.front]
    assert times == sorted(times)
    assert all(p.why_not for p in found.points if p not in found.front)


def test_size_writes_the_chosen_plan_and_cluster(tmp_path, capsys):
    path = tmp_path / "cat.json"
    path.write_text(json.dumps(catalogue(max_nodes=4)))
    out = tmp_path / "plan.json"
    argv = ["size", "--model", "gpt", "--set", "size=1m", "--tokens", "1e11", "--hours", "5000"]
    code = main([*argv, "--catalog", str(path), "--global-batch", str(BATCH), "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Pareto front" in printed and "h100-80gb:1x1" in printed
    plan = load_plan(out)
    assert load_cluster(tmp_path / "plan.cluster.json") == plan.cluster
    assert plan.training.global_batch == BATCH and str(plan.training.precision) == "bf16-mixed"
    assert plan.training.steps == math.ceil(10**11 / (BATCH * 128))  # the job's steps, 128 tokens a sample


def test_every_node_count_and_mixed_are_passed_from_the_command_line(monkeypatch, capsys):
    import planner.sizing.size as sizing

    seen = {}

    def recorded(*args, **kwargs):
        seen.update(kwargs)
        return sizing.Sizing([], [], 1, 1, 0.0)

    monkeypatch.setattr(sizing, "size", recorded)
    argv = ["size", "--model", "gpt", "--set", "size=1m", "--tokens", "1e9", "--hours", "5"]
    main(argv)
    assert seen["every_node_count"] is False and seen["mixed"] is False
    main([*argv, "--every-node-count", "--mixed"])
    assert seen["every_node_count"] is True and seen["mixed"] is True


def test_a_model_that_fits_no_shape_is_named_with_its_memory(tmp_path, capsys):
    path = tmp_path / "cat.json"
    path.write_text(json.dumps(catalogue(max_nodes=2, kind="rtx4090", node_sizes=[1])))
    argv = ["size", "--model", "gpt", "--set", "size=70b", "--tokens", "1T", "--hours", "1000"]
    code = main([*argv, "--catalog", str(path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the largest planned, rtx4090:1x2: memory:" in err and "GiB on a device of 24.0 GiB" in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tokens", "-3", "--hours", "10"], "argument --tokens: '-3' is not a token count"),
        (["--tokens", "1T", "--hours", "0"], "argument --hours: 0 is not above 0"),
        (["--tokens", "1T", "--hours", "nan"], "argument --hours: nan is not above 0"),
        (["--tokens", "1T", "--budget", "1e99"], "argument --budget: 1e99 is not above 0 and at most"),
        (["--tokens", "1T"], "one of the arguments --hours --budget is required"),
        (["--tokens", "1T", "--hours", "5", "--budget", "9"], "not allowed with argument"),
        (["--tokens", "1T", "--hours", "5", "--kinds", "h900"], "h900"),
        (["--tokens", "1T", "--hours", "5", "--catalog", "/nonexistent.json"], "cannot read price catalogue"),
    ],
)
def test_bad_size_input_is_one_line_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        code = main(["size", "--model", "gpt", *args])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_the_shapes_off_the_front_name_the_closest_by_the_limit_they_miss():
    small, large = Shape("h100-80gb", 8, 1), Shape("h100-80gb", 8, 2)
    over = [
        Point(small, 1.0, None, 10.0, 300.0, "over budget: $300 against $10"),
        Point(large, 1.0, None, 5.0, 400.0, "over budget: $400 against $10"),
    ]
    assert off_the_front(over) == [
        "h100-80gb: 2 shapes over budget (h100-80gb:8x1 .. 8x2); closest, h100-80gb:8x1: $300 against $10"
    ]
    slow = [
        Point(small, 1.0, None, 10.0, 300.0, "too slow: 10 h against the 2 h deadline"),
        Point(large, 1.0, None, 5.0, 400.0, "too slow: 5 h against the 2 h deadline"),
    ]
    assert off_the_front(slow)[0].endswith("closest, h100-80gb:8x2: 5 h against the 2 h deadline")


def test_mixed_shapes_are_planned_priced_and_bounded_like_the_others():
    prices = {"h100-80gb": 3.0, "a100-80gb": 1.0}
    two = {
        "schema_version": 1,
        "name": "two kinds",
        "max_nodes": 8,
        "offers": [{**OFFER, "kind": k, "usd_per_device_hour": usd} for k, usd in prices.items()],
    }
    tokens, deadline = 10**11, 2.0
    found = size(
        graph(),
        catalog_from_json(json.dumps(two)),
        tokens=tokens,
        global_batch=BATCH,
        hours=deadline,
        mixed=True,
    )
    mixes = [p for p in found.points if p.shape.also]
    assert mixes and any(p.shape.also for p in found.front)  # here a mix is faster than either kind alone
    steps = math.ceil(tokens / (BATCH * graph().graph["config"]["seq_len"]))
    bounds = {k: step_bound(graph(), k, BATCH, "bf16-mixed") for k in prices}
    for p in mixes:
        # The cluster planned is the shape: its first kind's nodes, then the other's.
        expected = [part.kind for part in p.shape.parts for _ in range(part.devices)]
        assert [d.kind for d in parse_short_form(p.shape.short_form).devices] == expected
        assert p.shape.label == ",".join(part.kind for part in p.shape.parts)
        if p.fits:
            assert p.hours == pytest.approx(brute_force_hours(p.shape.short_form, tokens))
            usd = sum(prices[part.kind] * part.devices for part in p.shape.parts)
            assert p.cost_usd == pytest.approx(p.hours * usd)
            assert mixed_bound_hours(bounds, p.shape, steps) <= p.hours
    times = [p.hours for p in found.front]
    assert times == sorted(times) and all(p.hours <= deadline for p in found.front)
    alone = size(
        graph(), catalog_from_json(json.dumps(two)), tokens=tokens, global_batch=BATCH, hours=deadline
    )
    assert not any(p.shape.also for p in alone.points)
