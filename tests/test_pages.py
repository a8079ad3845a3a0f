"""The Devices, Plan and Export pages, opened fresh by URL, through Streamlit's AppTest.

The Plan page's sequences: every candidate chosen in turn is exactly what Export offers;
a change of global batch or strategy starts the edits again; an edit is marked and reset;
only valid edits are offered; a failed edit keeps the last valid plan; uploads that are not
plans give one line and change nothing; a reload returns to the same choices.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

import dashboard.shared
from dashboard import format as fmt
from dashboard import session_store
from dashboard.naming import strategy_name
from planner.capture.coarsen import assign_blocks, coarsen
from planner.capture.trace import trace
from planner.cluster import detect_local, parse_short_form
from planner.cost.price import price
from planner.errors import PlanError
from planner.plan import plan_from_json
from planner.schedules import schedule_error
from planner.search.build import make_plan, model_blocks
from runtime.supervise import store

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch) -> Path:
    """Each test keeps its sessions (and runs) in its own folder."""
    path = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(path))
    return path


@pytest.fixture
def offered(monkeypatch) -> dict[str, bytes]:
    """Every file a download button offers, by the id in its URL."""
    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = path_or_data if isinstance(path_or_data, bytes) else path_or_data.encode()
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return files


@pytest.fixture
def candidates(monkeypatch) -> dict[tuple[int, str], list[dict]]:
    """The candidates the Plan page was given, per (global batch, strategy), and per (global
    batch, strategy, precision) for a precision other than fp32; a pinned tensor-parallel
    degree t adds "tp<t>" to the key, sequence parallelism "sp"."""
    seen: dict[tuple, list[dict]] = {}
    original = dashboard.shared.searched

    def recorded(graph_data, cluster_json, global_batch, strategy, precision="fp32", tp="auto", sp=False):
        rows, notes = original(graph_data, cluster_json, global_batch, strategy, precision, tp, sp)
        key = (global_batch, strategy) if precision == "fp32" else (global_batch, strategy, precision)
        key = key if tp == "auto" else (*key, f"tp{tp}")
        seen[(*key, "sp") if sp else key] = rows
        return rows, notes

    monkeypatch.setattr(dashboard.shared, "searched", recorded)
    return seen


def open_page(page: str, session: str | None = None) -> AppTest:
    """A browser opening the app (at ``?s=session``), then going to ``page``.

    AppTest runs app.py (session id, sidebar) only from the first run on, and the first run
    is the landing page's.
    """
    at = AppTest.from_file(APP, default_timeout=300)
    if session is not None:
        at.query_params[session_store.QUERY_KEY] = session
    at.run()
    return at if page == "views/model.py" else at.switch_page(page).run()


def downloaded(at: AppTest, key: str, files: dict[str, bytes]) -> str:
    url = at.download_button(key=key).proto.url
    return files[url.rsplit("/", 1)[-1].split(".")[0]].decode()


def kept(at: AppTest, key: str):
    """A plain session value, or None when the session never set it."""
    return at.session_state[key] if key in at.session_state else None  # noqa: SIM401 (no .get)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def sidebar_text(at: AppTest) -> str:
    return plain(" ".join(m.value for m in at.sidebar.get("markdown")))


def plain(text: str) -> str:
    """Markdown text as the browser shows it (the pages escape user text)."""
    return text.replace("\\", "")


def feasible(rows: list[dict]) -> dict[str, str]:
    return {r["label"]: r["plan_json"] for r in rows if r["feasible"] and r["plan_json"]}


def title(plan_json: str) -> str:
    """How every page names a candidate's plan (dashboard.naming)."""
    return strategy_name(plan_from_json(plan_json))


def values(array) -> list[float]:
    """A figure array from the spec: plotly 7 sends numbers as base64 typed arrays."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def chart(at: AppTest, key_text: str) -> dict:
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if key_text in c.proto.spec)


def edit_widgets(at: AppTest) -> tuple[list[int], int, str]:
    cuts = [at.selectbox(key=f"plan_cut_{i}").value for i in range(10) if _has(at, f"plan_cut_{i}")]
    return cuts, at.selectbox(key="plan_micro_batches").value, at.selectbox(key="plan_schedule").value


def _has(at: AppTest, key: str) -> bool:
    return any(w.key == key for w in at.selectbox)


def candidate_edits(plan_json: str) -> tuple[list[int], int, str]:
    plan = plan_from_json(plan_json)
    position = {b: i for i, b in enumerate(plan.model.blocks)}
    return [position[s.first] for s in plan.stages[1:]], plan.training.micro_batches, plan.schedule


# -- the Devices page -----------------------------------------------------------------------------
def test_devices_page_shows_this_machine_and_presets():
    at = open_page("views/devices.py")
    assert not at.exception
    assert metrics(at)["Devices"] == str(len(detect_local().devices))
    at.text_input(key="devices_spec").set_value("a100-80gb:4+v100-32gb:4").run()
    assert metrics(at)["Devices"] == "8" and metrics(at)["Device kinds"] == "2"


def test_devices_page_refuses_paths_and_names_bad_specs():
    at = open_page("views/devices.py")
    at.text_input(key="devices_spec").set_value("/etc/cluster.json").run()
    assert "uploader" in at.error[0].value
    at.text_input(key="devices_spec").set_value("tpu:4").run()
    assert at.error and "tpu" in at.error[0].value


# -- the Plan page ---------------------------------------------------------------------------------
def test_plan_page_opens_with_a_worked_example():
    at = open_page("views/plan.py")
    assert not at.exception
    assert {"Step time", "Samples per second", "Bubble", "Peak memory", "Sent per step"} <= set(metrics(at))
    assert len(at.get("plotly_chart")) == 4  # placement, rank grid, memory, schedule
    assert at.dataframe and len(at.download_button) == 1
    sidebar = sidebar_text(at)  # drawn before the page ran, filled as the page chose
    choice = at.selectbox(key="plan_choice")
    shown = choice.options[choice.index].split(" · ")[0]  # 'data parallel × 2 · 6.1 ms per step'
    assert "gpt" in sidebar and shown in sidebar


def test_each_candidate_in_turn_is_what_export_downloads(offered, candidates):
    at = open_page("views/plan.py")
    plans = feasible(candidates[(8, "auto")])
    assert len(plans) >= 3  # dp, and pipelines with several schedules, on this machine's 2 CPUs
    for label, plan_json in plans.items():
        at.switch_page("views/plan.py").run()
        at.selectbox(key="plan_choice").set_value(label).run()
        assert not at.exception and not at.error
        # The page shows the candidate, not an edit left over from the previous one.
        assert edit_widgets(at) == candidate_edits(plan_json) if _has(at, "plan_schedule") else True
        assert metrics(at)["Step time"] == fmt.duration(plan_from_json(plan_json).predicted.step_time_s)
        assert downloaded(at, "plan_download", offered) == plan_json
        at.switch_page("views/export.py").run()
        assert not at.exception and not at.error
        assert downloaded(at, "export_download", offered) == plan_json
        assert title(plan_json) in plain(at.subheader[0].value)
        assert metrics(at)["Step time"] == fmt.duration(plan_from_json(plan_json).predicted.step_time_s)


def test_a_precision_is_searched_priced_and_exported(offered, candidates):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    at.selectbox(key="plan_micro_batches").set_value(2).run()
    assert at.info  # edited
    at.selectbox(key="plan_precision").set_value("bf16-mixed").run()
    assert not at.exception and not at.info  # a new search: the edits start again
    chosen = feasible(candidates[(8, "pp", "bf16-mixed")])[at.selectbox(key="plan_choice").value]
    plan = plan_from_json(downloaded(at, "plan_download", offered))
    assert downloaded(at, "plan_download", offered) == chosen and plan.training.precision == "bf16-mixed"
    at.switch_page("views/export.py").run()
    assert downloaded(at, "export_download", offered) == chosen


def test_a_tensor_parallel_degree_is_searched_priced_drawn_and_exported(offered, candidates):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_tp").set_value(2).run()
    assert not at.exception and not at.error
    rows = candidates[(8, "auto", "tp2")]
    assert rows and all(r["tp"] == 2 for r in rows)
    plan = plan_from_json(downloaded(at, "plan_download", offered))
    assert plan.tp_degree == 2 and metrics(at)["Step time"] == fmt.duration(plan.predicted.step_time_s)
    grid = chart(at, "The rank grid")  # each rank's cell at its (dp, pp, tp) place
    cells = sorted(zip(values(grid["data"][0]["x"]), values(grid["data"][0]["y"]), strict=True))
    assert len(cells) == len(plan.ranks) and len(set(cells)) == len(cells)
    gantt = chart(at, "One training step")
    assert any(trace["name"] == "tensor collective" for trace in gantt["data"])
    # The model's blocks without a layout are named once, above the candidates.
    assert any("without a tensor-parallel layout" in c.value for c in at.caption)
    at.switch_page("views/export.py").run()
    assert plan_from_json(downloaded(at, "export_download", offered)).tp_degree == 2
    # Sequence parallelism: searched again, the chosen plan carries it, kept in the session.
    at.switch_page("views/plan.py").run()
    at.toggle(key="plan_sp").set_value(True).run()
    assert not at.exception and not at.error
    assert candidates[(8, "auto", "tp2", "sp")]
    assert plan_from_json(downloaded(at, "plan_download", offered)).sequence_parallel
    at.selectbox(key="plan_tp").set_value(1).run()  # nothing to split along the sequence
    assert at.toggle(key="plan_sp").disabled and not at.exception and not at.error
    assert not plan_from_json(downloaded(at, "plan_download", offered)).sequence_parallel


def test_a_change_of_batch_or_strategy_starts_the_edits_again(offered, candidates):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    pipelines = feasible(candidates[(8, "pp")])
    label = next(lab for lab in pipelines if "1f1b" in lab and "interleaved" not in lab)
    at.selectbox(key="plan_choice").set_value(label).run()
    at.selectbox(key="plan_schedule").set_value("gpipe").run()
    at.selectbox(key="plan_micro_batches").set_value(2).run()
    assert "Edited from" in plain(at.info[0].value)
    assert plan_from_json(downloaded(at, "plan_download", offered)).schedule == "gpipe"

    at.number_input(key="plan_global_batch").set_value(16).run()
    assert not at.exception and not at.info
    chosen = feasible(candidates[(16, "pp")])[at.selectbox(key="plan_choice").value]
    assert edit_widgets(at) == candidate_edits(chosen)
    assert downloaded(at, "plan_download", offered) == chosen

    counts = at.selectbox(key="plan_micro_batches")
    counts.set_value(next(int(m) for m in counts.options if int(m) != counts.value)).run()
    assert at.info  # edited again
    at.selectbox(key="plan_strategy").set_value("auto").run()
    assert not at.info
    chosen = feasible(candidates[(16, "auto")])[at.selectbox(key="plan_choice").value]
    assert downloaded(at, "plan_download", offered) == chosen
    at.switch_page("views/export.py").run()
    assert downloaded(at, "export_download", offered) == chosen


def test_an_edit_is_marked_and_reset_returns_to_the_candidate(offered, candidates):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    label = at.selectbox(key="plan_choice").value
    candidate = feasible(candidates[(8, "pp")])[label]
    blocks = model_blocks(coarsen(trace("gpt")))
    moved = next(i for i in range(1, len(blocks)) if i != at.selectbox(key="plan_cut_0").value)
    at.selectbox(key="plan_cut_0").set_value(moved).run()
    assert not at.exception
    note = plain(at.info[0].value)
    assert f"Edited from {title(candidate)}" in note and f"stage 2 starts at {blocks[moved]}" in note
    edited = plan_from_json(downloaded(at, "plan_download", offered))
    assert edited.stages[1].first == blocks[moved]
    # What the page shows is what price() says of that plan.
    graph, cluster = coarsen(trace("gpt")), detect_local()
    assert metrics(at)["Step time"] == fmt.duration(price(graph, cluster, edited).step_time_s)
    at.switch_page("views/export.py").run()
    assert downloaded(at, "export_download", offered) == edited.to_json()
    assert "edited" in plain(at.info[0].value).lower()

    at.switch_page("views/plan.py").run()
    assert at.selectbox(key="plan_cut_0").value == moved  # kept across pages
    at.button(key="plan_reset").click().run()
    assert not at.exception and not at.info
    assert edit_widgets(at) == candidate_edits(candidate)
    assert downloaded(at, "plan_download", offered) == candidate


def test_sharding_and_recomputation_are_switched_and_priced_at_once(offered, candidates):
    at = open_page("views/plan.py")
    plans = feasible(candidates[(8, "auto")])
    label = next(lab for lab in plans if lab.startswith("dp dp2"))  # two replicas to shard over
    at.selectbox(key="plan_choice").set_value(label).run()
    assert [o.split(" (")[-1] for o in at.selectbox(key="plan_dp_mode").options] == [
        "DDP)",
        "ZeRO-2)",
        "ZeRO-3)",
    ]
    at.selectbox(key="plan_dp_mode").set_value("full_shard").run()
    at.selectbox(key="plan_recompute").set_value("full").run()
    assert not at.exception and not at.error
    note = plain(at.info[0].value)
    assert "data parallel full_shard (was replicate)" in note and "recompute full (was none)" in note
    edited = plan_from_json(downloaded(at, "plan_download", offered))
    assert edited.dp_mode == "full_shard" and {s.recompute for s in edited.stages} == {"full"}
    graph, cluster = coarsen(trace("gpt")), detect_local()
    prediction = price(graph, cluster, edited)
    assert metrics(at)["Step time"] == fmt.duration(prediction.step_time_s)
    memory = chart(at, "gathered parameters (sharded)")
    assert any(t["name"] == "gathered parameters (sharded)" for t in memory["data"])
    gantt = chart(at, "One training step")
    assert {"all-gather", "reduce-scatter"} <= {t["name"] for t in gantt["data"]}
    # A pipeline without replicas has nothing to shard.
    at.selectbox(key="plan_strategy").set_value("pp").run()
    assert at.selectbox(key="plan_dp_mode").options == ["replicated (DDP)"]


def test_stage_boundaries_name_their_blocks():
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    blocks = model_blocks(coarsen(trace("gpt")))
    cut = at.selectbox(key="plan_cut_0")
    assert cut.label == "Stage 2 starts at"
    assert cut.options == [f"{blocks[i]} (block {i + 1} of {len(blocks)})" for i in range(1, len(blocks))]


def test_only_valid_micro_batch_counts_and_schedules_are_offered(candidates):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    for label, plan_json in feasible(candidates[(8, "pp")]).items():
        at.selectbox(key="plan_choice").set_value(label).run()
        plan = plan_from_json(plan_json)
        share = plan.replicas[0].batch_share
        schedules = at.selectbox(key="plan_schedule").options
        interleaved = plan.virtual_stages > 1
        assert schedules == (["interleaved 1F1B"] if interleaved else ["GPipe", "1F1B"])
        for schedule in ["interleaved_1f1b"] if interleaved else ["gpipe", "1f1b"]:
            at.selectbox(key="plan_schedule").set_value(schedule).run()
            assert not at.exception and not at.error
            offered_counts = [int(m) for m in at.selectbox(key="plan_micro_batches").options]
            valid = [
                m
                for m in range(1, share + 1)
                if share % m == 0 and schedule_error(schedule, plan.pp_degree, m, plan.virtual_stages) is None
            ]
            assert offered_counts == valid
        if not interleaved:  # 1F1B refuses fewer micro-batches than stages: 1 is not offered
            assert 1 not in [int(m) for m in at.selectbox(key="plan_micro_batches").options]


def test_a_schedule_that_refuses_the_count_moves_it_and_says_so(candidates):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    label = next(lab for lab in feasible(candidates[(8, "pp")]) if lab.endswith("gpipe"))
    at.selectbox(key="plan_choice").set_value(label).run()
    at.selectbox(key="plan_micro_batches").set_value(1).run()
    at.selectbox(key="plan_schedule").set_value("1f1b").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="plan_micro_batches").value == 2
    assert any("Micro-batches set to 2" in c.value for c in at.caption)


def test_an_edit_that_fails_keeps_the_last_valid_plan_and_says_why(monkeypatch, offered):
    at = open_page("views/plan.py")
    at.selectbox(key="plan_strategy").set_value("pp").run()
    before = downloaded(at, "plan_download", offered)
    shown = metrics(at)

    import dashboard.plan_edit

    def refuse(graph, base, edits):
        raise PlanError("the simulator refused this plan")

    monkeypatch.setattr(dashboard.plan_edit, "apply", refuse)
    at.selectbox(key="plan_micro_batches").set_value(2).run()
    assert not at.exception
    assert len(at.error) == 1 and "the simulator refused this plan" in plain(at.error[0].value)
    assert "last valid plan" in plain(at.error[0].value)
    assert len(at.get("plotly_chart")) == 4 and metrics(at) == shown  # the charts did not blank
    assert downloaded(at, "plan_download", offered) == before
    assert at.session_state["current_plan"]["json"] == before


def test_memory_bars_stack_each_devices_terms_as_a_share_of_its_capacity():
    at = open_page("views/plan.py")
    memory = chart(at, "Memory per device")
    bars = [values(t["y"]) for t in memory["data"] if t["type"] == "bar"]
    shares = [sum(column) for column in zip(*bars, strict=True)]
    graph, cluster = coarsen(trace("gpt")), detect_local()
    chosen = plan_from_json(at.session_state["current_plan"]["json"])
    expected = [100 * m.total / m.capacity for m in price(graph, cluster, chosen).memory]
    assert shares == pytest.approx(expected, rel=1e-9)
    assert memory["layout"]["yaxis"]["ticksuffix"] == "%"
    assert all(t["name"] for t in memory["data"] if t["type"] == "bar")


def test_expanding_a_block_raises_the_graphs_node_count():
    def points(at) -> int:
        placement = chart(at, "Where each block runs")
        return sum(len(values(t["x"])) for t in placement["data"] if t.get("mode", "").startswith("markers"))

    at = open_page("views/plan.py")
    before = points(at)
    at.multiselect(key="plan_expand").set_value(["blocks.0"]).run()
    assert not at.exception
    fine = trace("gpt")
    owner = assign_blocks(fine)
    ops_in_block = sum(1 for n in fine if owner[n] == "blocks.0" and fine.nodes[n].get("kind") != "input")
    assert points(at) == before - 1 + ops_in_block > before


def test_an_unexpected_failure_is_one_line_without_paths(monkeypatch):
    def broken(*args):
        raise KeyError("/srv/stagecraft/planner/search.py: no such entry")

    monkeypatch.setattr(dashboard.shared, "searched", broken)
    at = open_page("views/plan.py")
    assert not at.exception
    message = plain(at.error[0].value)
    assert message.startswith("Searching for plans failed: KeyError")
    assert "\n" not in message and "/srv" not in message and "search.py" in message


# -- the Export page --------------------------------------------------------------------------------
def test_export_page_offers_the_worked_example_and_its_commands():
    at = open_page("views/export.py")
    assert not at.exception
    code = "\n".join(c.value for c in at.code)
    assert "python -m runtime run plan.json" in code
    assert "torchrun" in code and "#SBATCH" in code
    assert len(at.download_button) == 1


def zoo_plan_json() -> str:
    graph, cluster = coarsen(trace("gpt")), parse_short_form("cpu:2")
    return make_plan(
        graph, cluster, strategy="pp", global_batch=8, pp_degree=2, schedule="gpipe", micro_batches=2
    ).to_json()


def _bad_plan() -> bytes:
    bad = json.loads(zoo_plan_json())
    bad["replicas"][0]["batch_share"] += 1
    return json.dumps(bad).encode()


BAD_UPLOADS = {
    "nested.json": (b"[" * 5000 + b"]" * 5000, "nested 5000 deep"),
    "latin1.json": ('{"name": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
    "bad.json": (_bad_plan(), "replicas"),
    "list.json": (b"[1, 2, 3]", "should be an object"),
    "empty.json": (b"", "not valid JSON"),
    "nan.json": (b'{"schema_version": NaN}', "NaN"),
}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_a_bad_upload_is_one_line_and_changes_nothing(offered, name):
    data, problem = BAD_UPLOADS[name]
    at = open_page("views/export.py")
    before = (
        metrics(at),
        downloaded(at, "export_download", offered),
        kept(at, "model"),
        kept(at, "cluster_json"),
    )
    at.get("file_uploader")[0].set_value((name, data, "application/json"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    message = plain(at.error[0].value)
    assert message.startswith(f"{name} was not imported: ") and problem in message
    assert "\n" not in message and "Traceback" not in message and "/work" not in message
    after = (
        metrics(at),
        downloaded(at, "export_download", offered),
        kept(at, "model"),
        kept(at, "cluster_json"),
    )
    assert after == before


def test_a_good_plan_upload_becomes_the_current_plan(offered):
    at = open_page("views/export.py")
    at.get("file_uploader")[0].set_value(("pp.json", zoo_plan_json().encode(), "application/json"))
    at.run()
    assert not at.exception and at.success
    assert "imported plan (pp.json)" in plain(at.subheader[0].value)
    assert "gpt, pipeline × 2, GPipe, 2 micro-batches, on 2 devices" in plain(at.caption[0].value)
    exported = plan_from_json(downloaded(at, "export_download", offered))
    assert exported.model_copy(update={"predicted": None}).to_json() == zoo_plan_json()
    assert exported.predicted is not None  # priced here, for its own model
    assert at.session_state["model"] == ("gpt", "")
    assert json.loads(at.session_state["cluster_json"])["name"] == "cpu:2"


def test_an_imported_plan_opens_in_the_plan_page():
    text = zoo_plan_json()
    at = open_page("views/export.py")
    at.get("file_uploader")[0].set_value(("pp.json", text.encode(), "application/json"))
    at.run()
    at.switch_page("views/plan.py").run()
    assert not at.exception
    assert at.selectbox(key="plan_choice").value == "imported plan"
    graph, cluster = coarsen(trace("gpt")), parse_short_form("cpu:2")
    expected = price(graph, cluster, plan_from_json(text)).step_time_s
    assert metrics(at)["Step time"] == fmt.duration(expected)
    assert "cpu:2" in sidebar_text(at) and "imported plan (pp.json)" in sidebar_text(at)


# -- state that outlives a reload ----------------------------------------------------------------------
def test_a_reload_returns_to_the_model_devices_and_plan(runs_dir, offered):
    at = open_page("views/model.py")
    session = at.session_state["session_id"]
    assert session_store.valid_id(session)
    at.text_input(key="model_overrides").set_value("n_layer=3").run()
    at.switch_page("views/devices.py").run()
    at.text_input(key="devices_spec").set_value("cpu:4").run()
    at.switch_page("views/plan.py").run()
    at.selectbox(key="plan_strategy").set_value("pp").run()
    at.selectbox(key="plan_schedule").set_value("gpipe").run()
    edited = edit_widgets(at)
    exported = downloaded(at, "plan_download", offered)
    assert (runs_dir / session_store.SESSIONS / f"{session}.json").exists()

    again = open_page("views/plan.py", session=session)  # a new browser connection, same URL
    assert not again.exception
    assert again.session_state["model"] == ("gpt", "n_layer=3")
    assert json.loads(again.session_state["cluster_json"])["name"] == "cpu:4"
    assert again.selectbox(key="plan_strategy").value == "pp"
    assert edit_widgets(again) == edited
    assert downloaded(again, "plan_download", offered) == exported
    sidebar = sidebar_text(again)
    assert "n_layer=3" in sidebar and "cpu:4" in sidebar
    shown = again.selectbox(key="plan_choice")
    assert f"{shown.options[shown.index].split(' · ')[0]} (edited)" in sidebar
    again.switch_page("views/model.py").run()
    assert again.text_input(key="model_overrides").value == "n_layer=3"
    assert not again.info  # the first-visit line is for new sessions only


def test_a_session_id_that_is_not_an_id_is_replaced(runs_dir):
    at = open_page("views/model.py", session="../../etc/passwd")
    assert not at.exception
    session = at.session_state["session_id"]
    assert session_store.valid_id(session) and session != "../../etc/passwd"
    at.text_input(key="model_source").set_value("mlp").run()
    assert [p.name for p in (runs_dir / session_store.SESSIONS).iterdir()] == [f"{session}.json"]


def test_a_damaged_session_file_is_a_fresh_start(runs_dir):
    session = session_store.new_id()
    path = session_store.session_path(runs_dir, session)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"[" * 5000)
    at = open_page("views/plan.py", session=session)
    assert not at.exception and not at.error
    assert kept(at, "model") in (None, ("gpt", ""))
    path.write_text(json.dumps({"schema": 1, "model": ["gpt", "n_layer=" + "9" * 5000], "plan_inputs": 3}))
    at = open_page("views/plan.py", session=session)
    assert not at.exception and not at.error
    assert at.selectbox(key="plan_strategy").value == "auto"
    inputs = {"global_batch": 8, "strategy": "pp", "choice": None, "tp": 2, "sp": "yes"}
    path.write_text(json.dumps({"schema": 1, "plan_inputs": inputs}))
    at = open_page("views/plan.py", session=session)
    assert not at.exception and not at.error
    assert at.selectbox(key="plan_strategy").value == "auto" and not at.toggle(key="plan_sp").value


def test_monitor_page_without_runs_shows_the_plans_prediction(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGECRAFT_RUNS_DIR", str(tmp_path / "no-runs"))
    at = open_page("views/monitor.py")
    assert not at.exception
    assert "No runs yet" in at.info[0].value
    assert len(at.get("plotly_chart")) == 1


@pytest.mark.parametrize("source", ["py:os:system", "py:subprocess:run"])
def test_an_uploaded_plan_with_a_py_payload_runs_nothing(tmp_path, monkeypatch, source):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "")
    marker = tmp_path / "payload-ran"
    doc = json.loads(zoo_plan_json())
    doc["model"].update(source=source, overrides={"args": ["touch", str(marker)]})  # no whitespace
    at = open_page("views/export.py")
    at.get("file_uploader")[0].set_value(("payload.json", json.dumps(doc).encode(), "application/json"))
    at.run()
    assert not at.exception
    module = source.split(":")[1]
    assert any(f"would import '{module}'" in plain(e.value) for e in at.error), [e.value for e in at.error]
    for page in ("views/plan.py", "views/monitor.py", "views/runs.py", "views/model.py"):
        at.switch_page(page).run()
        assert not at.exception, page
    assert not marker.exists()


def test_an_uploaded_plan_whose_overrides_hold_whitespace_is_refused_in_one_line():
    doc = json.loads(zoo_plan_json())
    doc["model"]["overrides"] = {"act": "gelu n_layer=1000"}
    at = open_page("views/export.py")
    at.get("file_uploader")[0].set_value(("spaces.json", json.dumps(doc).encode(), "application/json"))
    at.run()
    assert not at.exception
    assert [plain(e.value) for e in at.error] == [
        "spaces.json was not imported: override 'act' holds whitespace; size overrides never do"
    ]
