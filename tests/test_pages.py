"""The Devices and Plan pages, opened fresh by URL, through Streamlit's AppTest."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.shared import step_time_text
from planner.build import make_plan, model_blocks
from planner.cluster import detect_local, parse_short_form
from planner.coarsen import assign_blocks, coarsen
from planner.cost import price
from planner.plan import plan_from_json
from planner.search import search
from planner.trace import trace

APP = str(Path(__file__).resolve().parents[1] / "app.py")
MiB = 2**20


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page(page)
    return at.run()


def values(array) -> list[float]:
    """A figure array from the spec: plotly 7 sends numbers as base64 typed arrays."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def test_devices_page_shows_this_machine_and_presets():
    at = open_page("pages/devices.py")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Devices"] == str(len(detect_local().devices))
    at.text_input(key="devices_spec").set_value("a100-80gb:4+v100-32gb:4").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Devices"] == "8" and metrics["Device kinds"] == "2"


def test_devices_page_refuses_paths_and_names_bad_specs():
    at = open_page("pages/devices.py")
    at.text_input(key="devices_spec").set_value("/etc/cluster.json").run()
    assert "uploader" in at.error[0].value
    at.text_input(key="devices_spec").set_value("tpu:4").run()
    assert at.error and "tpu" in at.error[0].value


def test_plan_page_opens_with_a_worked_example():
    at = open_page("pages/plan.py")
    assert not at.exception
    labels = {m.label for m in at.metric}
    assert {"Step time", "Samples/s", "Bubble", "Peak memory"} <= labels
    assert len(at.get("plotly_chart")) == 3  # placement, memory, schedule
    assert at.dataframe and len(at.get("download_button")) == 1


def test_moving_a_stage_boundary_shows_what_price_returns():
    at = open_page("pages/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    assert not at.exception
    cut = at.number_input(key="plan_cut_0")
    at = cut.set_value(cut.value + 1).run()
    assert not at.exception
    # The same plan, built and priced outside the page.
    graph = coarsen(trace("gpt"))
    cluster = detect_local()
    result = search(graph, cluster, global_batch=8, strategy="pp")
    chosen = next(c for c in result.candidates if c.label == at.selectbox(key="plan_choice").value)
    base = chosen.plan
    moved = make_plan(
        graph, cluster, strategy="pp", global_batch=8, pp_degree=base.pp_degree, schedule=base.schedule,
        micro_batches=base.training.micro_batches, virtual_stages=base.virtual_stages,
        cuts=[at.number_input(key=f"plan_cut_{i}").value for i in range(len(base.stages) - 1)],
        devices=[r.device for r in base.ranks], coords=[(r.dp_index, r.pp_index) for r in base.ranks],
        shares=[r.batch_share for r in base.replicas],
    )  # fmt: skip
    assert moved.stages[1].first == model_blocks(graph)[at.number_input(key="plan_cut_0").value]
    shown = {m.label: m.value for m in at.metric}["Step time"]
    assert shown == step_time_text(price(graph, cluster, moved).step_time_s)


def test_memory_bars_add_up_to_the_plans_breakdown():
    at = open_page("pages/plan.py")
    memory = next(
        json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Memory per device" in c.proto.spec
    )
    bars = [values(t["y"]) for t in memory["data"] if t["type"] == "bar"]
    totals = [sum(column) for column in zip(*bars, strict=True)]
    graph, cluster = coarsen(trace("gpt")), detect_local()
    best = search(graph, cluster, global_batch=8).best
    assert best.label == at.selectbox(key="plan_choice").value
    expected = [m.total / MiB for m in price(graph, cluster, best.plan).memory]
    assert totals == pytest.approx(expected, rel=1e-12)


def test_export_page_offers_the_worked_example_and_its_commands():
    at = open_page("pages/export.py")
    assert not at.exception
    code = "\n".join(c.value for c in at.code)
    assert "python -m runtime run plan.json" in code
    assert "torchrun" in code and "#SBATCH" in code
    assert len(at.get("download_button")) == 1


def test_a_bad_plan_upload_is_named_and_changes_nothing(tmp_path):
    at = open_page("pages/export.py")
    before = {m.label: m.value for m in at.metric}
    good = zoo_plan_json()
    bad = json.loads(good)
    bad["replicas"][0]["batch_share"] += 1
    at.get("file_uploader")[0].set_value(("bad.json", json.dumps(bad).encode(), "application/json"))
    at.run()
    assert not at.exception
    assert "bad.json was not imported" in at.error[0].value and "replicas" in at.error[0].value
    assert {m.label: m.value for m in at.metric} == before


def test_a_good_plan_upload_becomes_the_current_plan():
    at = open_page("pages/export.py")
    at.get("file_uploader")[0].set_value(("pp.json", zoo_plan_json().encode(), "application/json"))
    at.run()
    assert not at.exception and at.success
    assert {m.label: m.value for m in at.metric}["Strategy"] == "pp dp1×pp2"


def zoo_plan_json() -> str:
    graph, cluster = coarsen(trace("gpt")), parse_short_form("cpu:2")
    return make_plan(graph, cluster, strategy="pp", global_batch=8, pp_degree=2, schedule="gpipe",
                     micro_batches=2).to_json()  # fmt: skip


def test_expanding_a_block_raises_the_graphs_node_count():
    def points(at) -> int:
        placement = next(
            json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Placement" in c.proto.spec
        )
        return sum(len(values(t["x"])) for t in placement["data"] if t.get("mode", "").startswith("markers"))

    at = open_page("pages/plan.py")
    before = points(at)
    at.multiselect(key="plan_expand").set_value(["blocks.0"]).run()
    assert not at.exception
    fine = trace("gpt")
    owner = assign_blocks(fine)
    ops_in_block = sum(1 for n in fine if owner[n] == "blocks.0" and fine.nodes[n].get("kind") != "input")
    assert points(at) == before - 1 + ops_in_block > before


def test_an_imported_plan_opens_in_the_plan_page():
    text = zoo_plan_json()
    at = open_page("pages/export.py")
    at.get("file_uploader")[0].set_value(("pp.json", text.encode(), "application/json"))
    at.run()
    at.switch_page("pages/plan.py").run()
    assert not at.exception
    assert at.selectbox(key="plan_choice").value == "imported plan"
    graph, cluster = coarsen(trace("gpt")), parse_short_form("cpu:2")
    expected = price(graph, cluster, plan_from_json(text)).step_time_s
    assert {m.label: m.value for m in at.metric}["Step time"] == step_time_text(expected)


def test_monitor_page_without_runs_shows_the_plans_prediction(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGECRAFT_RUNS_DIR", str(tmp_path / "no-runs"))
    at = open_page("pages/monitor.py")
    assert not at.exception
    assert "No runs yet" in at.info[0].value
    assert {m.label for m in at.metric} == {"Step time (predicted)", "Bubble (predicted)"}
    assert len(at.get("plotly_chart")) == 1
