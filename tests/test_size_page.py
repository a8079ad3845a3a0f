"""The Size page through Streamlit's AppTest: it sizes the current model as `planner.sizing`
does, draws the front, and "Use this" makes a point's cluster and plan the current ones on
every page; bad inputs and catalogues are one line and size nothing."""

from __future__ import annotations

import json

import pytest

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.plan import plan_from_json
from planner.sizing.catalog import default_catalog
from planner.sizing.size import size
from tests.test_pages import chart, downloaded, kept, offered, open_page, plain, runs_dir, sidebar_text  # noqa: F401

PICK = "size_pick_"


def sized(at):
    """The page's front: (shape, hours, cost) of each point, fastest first."""
    return [
        (r["shape"], r["hours"], r["cost_usd"]) for r in at.session_state["sizing"]["rows"] if r["on_front"]
    ]


def pick_box(at):
    return next(w for w in at.selectbox if w.key.startswith(PICK))


def run_size(at, **inputs):
    """Set the page's inputs (by widget key suffix) and press Size."""
    for key, value in inputs.items():
        widget = next(w for w in at.get(KINDS[key]) if w.key == f"size_{key}")
        widget.set_value(value)
    at.run()
    at.button(key="size_run").click().run()
    assert not at.exception
    return at


KINDS = {"tokens": "text_input", "hours": "text_input", "budget": "text_input", "batch": "number_input"}


def test_the_page_sizes_the_current_model_as_the_planner_does():
    at = run_size(open_page("views/size.py"), tokens="2B", hours="0.05")
    expected = size(coarsen(trace("gpt")), default_catalog(), tokens=2 * 10**9, global_batch=512, hours=0.05)
    assert sized(at) == [(p.shape.short_form, p.hours, p.cost_usd) for p in expected.front]
    assert not at.error
    # The chart: one marker per point that fits, the front's large, with its plan in the hover.
    spec = chart(at, "Cost against time to train")
    front_markers = [t for t in spec["data"] if t.get("mode") == "markers" and t["marker"]["size"] == 13]
    assert sum(len(t["hovertext"]) for t in front_markers) == len(expected.front)
    assert any("plan: " in h for t in front_markers for h in t["hovertext"])
    # The preselected point: the cheapest that meets the deadline.
    cheapest = min(expected.front, key=lambda p: p.cost_usd)
    assert pick_box(at).value == cheapest.shape.short_form
    # Shapes off the front are said, grouped by kind and reason.
    off = next(e for e in at.expander if e.label.startswith("Off the front"))
    assert "dominated" in plain(off.markdown[0].value) or "too slow" in plain(off.markdown[0].value)


def test_use_this_makes_the_point_the_current_devices_and_plan_everywhere(offered):  # noqa: F811
    at = run_size(open_page("views/size.py"), tokens="2B", hours="0.05")
    rows = {r["shape"]: r for r in at.session_state["sizing"]["rows"] if r["on_front"]}
    fastest = next(iter(rows))  # not the preselected cheapest: the choice is the user's
    pick_box(at).set_value(fastest).run()
    at.button(key="size_use").click().run()
    assert not at.exception and at.success
    chosen = plan_from_json(rows[fastest]["plan_json"])
    assert json.loads(kept(at, "cluster_json")) == json.loads(chosen.cluster.to_json())
    assert kept(at, "model") == ("gpt", "")
    assert fastest in sidebar_text(at) and "sized plan" in sidebar_text(at)
    at.switch_page("views/export.py").run()
    exported = plan_from_json(downloaded(at, "export_download", offered))
    assert (
        exported.model_copy(update={"predicted": None}).to_json()
        == chosen.model_copy(update={"predicted": None}).to_json()
    )
    # Last: AppTest cannot leave the Plan page (it formats the choice outside the session).
    at.switch_page("views/plan.py").run()
    assert not at.exception
    assert at.selectbox(key="plan_choice").value == "imported plan"
    shown = plain(at.selectbox(key="plan_choice").options[0])  # how the choice reads
    assert shown.startswith(f"sized plan ({fastest} · ")


def test_a_budget_keeps_the_points_within_it():
    at = open_page("views/size.py")
    at.radio(key="size_limit").set_value("budget").run()
    run_size(at, tokens="2B", budget="0.2")
    points = sized(at)
    assert points and all(cost <= 0.2 for _, _, cost in points)
    assert pick_box(at).value == points[0][0]  # within a budget: the fastest


def test_a_model_that_fits_no_shape_names_the_largest_and_its_memory():
    at = open_page("views/model.py")
    at.text_input(key="model_overrides").set_value("size=70b").run()
    at.switch_page("views/size.py").run()
    at.multiselect(key=next(w.key for w in at.multiselect if w.key.startswith("size_kinds_"))).set_value(
        ["rtx4090"]
    )
    next(w for w in at.number_input if w.key.startswith("size_max_nodes_")).set_value(1)
    run_size(at, tokens="1B", hours="1000")
    assert len(at.error) == 1
    message = plain(at.error[0].value)
    assert "no shape meets" in message and "rtx4090:8x1" in message and "GiB on a device of 24" in message
    assert not at.get("plotly_chart")


@pytest.mark.parametrize(
    "inputs, words",
    [
        (dict(tokens="-3"), "'-3' is not a token count"),
        (dict(tokens="1٣B"), "is not a token count"),
        (dict(hours="nan"), "nan is not above 0"),
        (dict(hours="0"), "0 is not above 0"),
        (dict(hours="1e99"), "is not above 0 and at most"),
    ],
)
def test_bad_inputs_are_one_line_and_size_nothing(inputs, words):
    at = open_page("views/size.py")
    for key, value in inputs.items():
        at.text_input(key=f"size_{key}").set_value(value)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and words in plain(at.error[0].value)
    assert not any(b.key == "size_run" for b in at.button)  # nothing to press
    assert kept(at, "sizing") is None


@pytest.mark.parametrize(
    "offer, words",
    [
        (dict(usd_per_device_hour=-1.0), "usd_per_device_hour"),
        (dict(kind="h900"), "h900"),
        (dict(node_sizes=[3]), "does not divide"),
    ],
)
def test_a_bad_catalogue_upload_is_one_line_naming_the_field(offer, words):
    good = {
        "kind": "h100-80gb",
        "usd_per_device_hour": 3.0,
        "server_devices": 8,
        "node_sizes": [8],
        "source": "a contract",
        "date": "2026-11",
    }
    doc = {"schema_version": 1, "name": "ours", "max_nodes": 4, "offers": [{**good, **offer}]}
    at = open_page("views/size.py")
    at.get("file_uploader")[0].set_value(("ours.json", json.dumps(doc).encode(), "application/json"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and words in plain(at.error[0].value) and "\n" not in at.error[0].value


def test_an_uploaded_catalogue_is_what_is_sized():
    doc = {
        "schema_version": 1,
        "name": "ours",
        "max_nodes": 2,
        "offers": [
            {
                "kind": "a100-80gb",
                "usd_per_device_hour": 1.0,
                "server_devices": 8,
                "node_sizes": [4, 8],
                "source": "a contract",
                "date": "2026-11",
            }
        ],
    }
    at = open_page("views/size.py")
    at.get("file_uploader")[0].set_value(("ours.json", json.dumps(doc).encode(), "application/json"))
    run_size(at, tokens="2B", hours="0.05")
    rows = at.session_state["sizing"]["rows"]
    assert rows and {r["kind"] for r in rows} == {"a100-80gb"}
    assert all(r["usd_per_device_hour"] == 1.0 for r in rows)


def test_mixed_kinds_are_sized_and_drawn_as_their_own_group():
    offer = {"server_devices": 8, "node_sizes": [1], "source": "a contract", "date": "2026-11"}
    doc = {
        "schema_version": 1,
        "name": "two kinds",
        "max_nodes": 8,
        "offers": [
            {**offer, "kind": "h100-80gb", "usd_per_device_hour": 3.0},
            {**offer, "kind": "a100-80gb", "usd_per_device_hour": 1.0},
        ],
    }
    at = open_page("views/model.py")
    at.text_input(key="model_overrides").set_value("size=1m").run()
    at.switch_page("views/size.py").run()
    at.get("file_uploader")[0].set_value(("two.json", json.dumps(doc).encode(), "application/json"))
    at.checkbox(key="size_mixed").check()
    run_size(at, tokens="1e11", hours="2", batch=64)
    mixed = [r for r in at.session_state["sizing"]["rows"] if r["kind"] == "a100-80gb,h100-80gb"]
    assert any(r["on_front"] for r in mixed)
    assert all(r["usd_per_device_hour"] < 3.0 for r in mixed if r["hours"] is not None)  # a weighted price
    names = [t["name"] for t in chart(at, "Cost against time to train")["data"]]
    assert "a100-80gb,h100-80gb" in names
