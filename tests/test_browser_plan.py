"""The planning side of the dashboard in a real browser: Debian's Chromium against `streamlit run`.

Pick each candidate in turn and download it (the file is the candidate, byte for byte, on
the Plan and the Export page); edit, then change the global batch and the strategy (the
edits start again from the new candidate); reload in the middle of an edit (it is still
there); upload each bad file (one line, nothing changed). Screenshots of the Model, Plan
and Export pages go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from dashboard import format as fmt
from dashboard import session_store
from dashboard.naming import candidate_name
from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import cluster_from_json
from planner.search.search import search
from tests.browser import shoot

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PLAN = "Plan to inspect and edit"


def settle(page, timeout_ms: int = 120_000) -> None:
    """Wait for the script run that the last action started to finish.

    Streamlit shows its running indicator only once a run has lasted a moment, so a short
    run may finish without it: wait a little for it to appear, then for it to go.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    status = page.get_by_test_id("stStatusWidget")
    try:
        status.wait_for(state="visible", timeout=1500)
    except PlaywrightTimeout:
        return
    status.wait_for(state="hidden", timeout=timeout_ms)
    page.wait_for_timeout(300)


def nav(page, name: str) -> None:
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True).click()
    settle(page)


def select_box(page, label: str):
    return page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))


def open_list(page, label: str, typed: str = "") -> None:
    """Open the select box's list, filtered by ``typed`` (its search field; empty: every option)."""
    field = select_box(page, label).get_by_role("combobox")
    field.click()
    field.fill(typed)
    page.get_by_role("option").first.wait_for(timeout=30_000)


def choose(page, label: str, option: str) -> None:
    """Pick the option that contains ``option`` in the select box labelled ``label``."""
    open_list(page, label, option.strip(" ·"))
    page.get_by_role("option").filter(has_text=option).first.click()
    settle(page)


def chosen(page, label: str) -> str:
    return select_box(page, label).get_by_role("combobox").input_value()


def options(page, label: str) -> list[str]:
    open_list(page, label)
    texts = [o.inner_text().strip() for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    return texts


def download(page, tmp_path: Path, name: str = "Download plan JSON") -> str:
    with page.expect_download() as caught:
        page.get_by_role("button", name=name).click()
    target = tmp_path / "download.json"
    caught.value.save_as(target)
    return target.read_text()


def type_number(page, label: str, value: int) -> None:
    field = page.get_by_role("spinbutton", name=label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    settle(page)


def expected_candidates(runs: Path, session: str, batch: int, strategy: str) -> dict[str, str]:
    """The candidates' plans by the name the page gives them, as the planner makes them for the
    session's model and devices."""
    saved = json.loads(session_store.session_path(runs, session).read_text())
    cluster = cluster_from_json(saved["cluster_json"]) if "cluster_json" in saved else None
    if cluster is None:
        from planner.cluster import detect_local

        cluster = detect_local()
    result = search(coarsen(trace("gpt")), cluster, global_batch=batch, strategy=strategy)
    return {candidate_name(c): c.plan.to_json() for c in result.candidates if c.feasible}


def step_metric(page):
    return page.get_by_test_id("stMetric").filter(has_text="Step time")


def edited(page) -> bool:
    return page.get_by_text("Edited from").count() > 0


def test_the_chosen_plan_is_the_one_shown_exported_and_kept(dashboard, page, tmp_path):
    url, runs, _ = dashboard
    page.goto(url)
    page.get_by_text("Parameters").wait_for(timeout=120_000)
    settle(page)
    session = parse_qs(urlparse(page.url).query)[session_store.QUERY_KEY][0]
    assert session_store.valid_id(session)
    first_visit = page.get_by_test_id("stAlert").first.inner_text()
    assert [first_visit.index(s) for s in ("Model", "Devices", "Plan", "Run")] == sorted(
        first_visit.index(s) for s in ("Model", "Devices", "Plan", "Run")
    )
    shoot(page, "model.png")

    # Each candidate in turn: the Plan page's file and the Export page's file are the candidate.
    nav(page, "Plan")
    step_metric(page).wait_for(timeout=120_000)
    assert parse_qs(urlparse(page.url).query)[session_store.QUERY_KEY] == [session]
    expected = expected_candidates(runs, session, 8, "auto")
    assert [o.split(" · ")[0] for o in options(page, PLAN)] == list(expected)
    for label, plan_json in expected.items():
        choose(page, PLAN, f"{label} · ")
        assert not edited(page)
        assert download(page, tmp_path) == plan_json, label
        step = fmt.duration(json.loads(plan_json)["predicted"]["step_time_s"])
        assert step_metric(page).inner_text().endswith(step)
        nav(page, "Export / import")
        assert label in page.get_by_role("heading", name="The current plan").inner_text()
        assert download(page, tmp_path) == plan_json, label
        nav(page, "Plan")

    # An edit, then a new global batch: the edits start again from the new search's candidate.
    pipeline = next(label for label in expected if label.startswith("pipeline ×") and "GPipe" in label)
    assert [o.split(" · ")[0] for o in options(page, PLAN)] == list(expected)
    choose(page, PLAN, f"{pipeline} · ")
    choose(page, "Micro-batches per replica", "2")
    assert edited(page) and json.loads(download(page, tmp_path))["training"]["micro_batches"] == 2
    type_number(page, "Global batch (samples per step)", 16)
    assert not edited(page)
    now = chosen(page, PLAN).split(" · ")[0]
    expected = expected_candidates(runs, session, 16, "auto")
    assert download(page, tmp_path) == expected[now]

    # An edit, then another strategy: the same.
    pipeline = next(label for label in expected if label.startswith("pipeline ×") and "GPipe" in label)
    assert [o.split(" · ")[0] for o in options(page, PLAN)] == list(expected)
    choose(page, PLAN, f"{pipeline} · ")
    choose(page, "Schedule", "1F1B")
    assert edited(page)
    choose(page, "Strategy", "pipeline parallel")
    assert not edited(page)
    now = chosen(page, PLAN).split(" · ")[0]
    assert download(page, tmp_path) == expected_candidates(runs, session, 16, "pp")[now]

    # A reload in the middle of an edit returns to it: same model, devices, plan and edits.
    before_cut = chosen(page, "Stage 2 starts at")
    cut = next(o for o in options(page, "Stage 2 starts at") if o != before_cut)
    choose(page, "Stage 2 starts at", cut)
    assert edited(page) and chosen(page, "Stage 2 starts at") == cut
    kept = download(page, tmp_path)
    shoot(page, "plan.png")
    page.reload()
    step_metric(page).wait_for(timeout=120_000)
    settle(page)
    assert parse_qs(urlparse(page.url).query)[session_store.QUERY_KEY] == [session]
    assert edited(page) and chosen(page, "Stage 2 starts at") == cut
    assert download(page, tmp_path) == kept
    assert "pipeline parallel" in chosen(page, "Strategy")

    # Bad uploads: one line each, and the current plan stays as it was.
    nav(page, "Export / import")
    heading = page.get_by_role("heading", name="The current plan").inner_text()
    shoot(page, "export.png")
    bad = {
        "nested.json": b"[" * 5000 + b"]" * 5000,
        "latin1.json": '{"name": "caf\xe9"}'.encode("latin-1"),
        "list.json": b"[1, 2, 3]",
        "half.json": kept.encode()[: len(kept) // 2],
    }
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
        page.get_by_text(f"{name} was not imported").wait_for(timeout=60_000)
        settle(page)
        message = page.get_by_test_id("stAlert").filter(has_text=f"{name} was not imported").inner_text()
        assert "\n" not in message.strip() and "Traceback" not in message and "/work" not in message
        assert page.get_by_role("heading", name="The current plan").inner_text() == heading
        assert download(page, tmp_path) == kept
    nav(page, "Plan")
    assert edited(page) and download(page, tmp_path) == kept
