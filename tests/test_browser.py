"""The dashboard in a real browser: Playwright driving Debian's Chromium against `streamlit run`.

Plan a GPT on cpu:2, download the plan and validate it; launch it from the Runs page and
watch its row move on by itself; open its Monitor view from the row, watch the loss chart
gain points without a reload, stop the run there (after one confirmation), reload and find it
stopped.
Screenshots of the Runs and Monitor pages go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re
import time

import pytest

from planner.plan import load_plan, plan_from_json
from runtime.supervise import store
from tests.browser import SHOTS, shoot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def loss_points(page) -> int:
    """Points in the Monitor page's loss chart (plotly 7: count them in calcdata)."""
    return page.evaluate(
        """() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];
                   const loss = plots.find(p => ((p.layout || {}).title || {}).text?.includes('Loss'));
                   return loss && loss.calcdata ? loss.calcdata[0].length : 0; }"""
    )


def wait_text(page, text: str, timeout_ms: int) -> None:
    """Wait for ``text``; when it does not come, say what the page shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text).first.wait_for(timeout=timeout_ms)
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / "failure.png"))
        raise AssertionError(
            f"{text!r} not shown; the page shows:\n{page.inner_text('body')[-2000:]}"
        ) from None


def nav(page, name: str):
    """A page's link in the sidebar (pages link to each other too)."""
    return page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True)


def test_plan_download_launch_watch_stop_and_find_again(dashboard, page, tmp_path):
    url, runs, _ = dashboard
    elsewhere: list[str] = []  # fully offline: every request goes to the dashboard itself
    page.on(
        "request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else elsewhere.append(r.url)
    )
    # Every page opens by its own URL (the screenshots of the planning pages are taken by
    # test_browser_plan.py and test_browser_devices.py, once each page has drawn).
    for name in ("", "devices", "plan", "export"):
        page.goto(f"{url}/{name}")
        page.get_by_text("Stagecraft: plan and run parallel training").wait_for(timeout=60_000)

    # Plan a GPT on cpu:2 and download the plan.
    page.goto(f"{url}/devices")
    spec = page.get_by_role("textbox", name="Cluster", exact=True)
    spec.fill("cpu:2")
    spec.press("Enter")
    page.get_by_text("Devices", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    nav(page, "Plan").click()
    page.get_by_text("Step time").wait_for(timeout=120_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download plan JSON").click()
    saved = tmp_path / "plan.json"
    download.value.save_as(saved)
    plan = load_plan(saved)  # strict validation
    assert plan.model.source == "gpt" and len(plan.ranks) == 2

    # Launch a long run from the Runs page (a client-side page switch keeps the session):
    # the page names the plan it will launch, with its predicted figures.
    nav(page, "Runs").click()
    page.get_by_text("Plan to launch:").wait_for(timeout=60_000)
    page.get_by_text("Step time (predicted)").wait_for(timeout=60_000)  # drawn after the plan's name
    steps = page.get_by_role("spinbutton", name="Steps", exact=True)
    steps.fill("100000")
    steps.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Launch this plan").click()
    page.get_by_text("Started run").wait_for(timeout=120_000)
    conn = store.connect(runs)
    (run,) = store.runs(conn)
    run_id = run["run_id"]
    assert plan_from_json(run["plan_json"]) == plan  # the plan shown and downloaded is the one launched

    # The list redraws itself: the run's row moves on (its state, then its step) with no
    # click and no reload (a marker set in the window would not survive a reload).
    page.evaluate("() => { window.__not_reloaded = true; }")
    row = page.locator(f".st-key-run-{run_id}")
    row.wait_for(timeout=30_000)

    def step_shown() -> int:
        found = re.search(r"([\d,]+) / 100,000", row.inner_text())
        return int(found.group(1).replace(",", "")) if found else -1

    def state_shown() -> str | None:
        text = row.inner_text()
        return next((s for s in (*store.ACTIVE, *store.TERMINAL) if s in text), None)

    states, steps_seen = {state_shown()}, {step_shown()}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len({s for s in steps_seen if s > 0}) < 2:
        page.wait_for_timeout(500)
        states.add(state_shown())
        steps_seen.add(step_shown())
    assert "running" in states and len({s for s in steps_seen if s > 0}) >= 2, (states, steps_seen)
    assert page.evaluate("() => window.__not_reloaded === true")
    shoot(page, "runs.png")

    # Its Monitor view, from the link in its row: the loss chart gains points on its own.
    row.get_by_role("link", name="Monitor").click()
    page.get_by_text("Predicted vs measured").wait_for(timeout=60_000)
    assert f"run={run_id}" in page.url
    deadline = time.monotonic() + 120
    first = 0
    while time.monotonic() < deadline and first == 0:
        page.wait_for_timeout(500)
        first = loss_points(page)
    assert first > 0, "the loss chart never drew"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and loss_points(page) <= first:
        page.wait_for_timeout(500)
    assert loss_points(page) > first, "the loss chart did not refresh on its own"
    # Past the warm-up the comparison is live (the page names its steps).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "measured live" not in page.inner_text("body"):
        page.wait_for_timeout(500)
    page.wait_for_timeout(2500)  # a whole refresh: the charts drawn again with the figures
    shoot(page, "monitor.png")

    # Stop it from the Monitor: one confirmation, then it stops; a reload still finds it.
    page.get_by_role("button", name="Stop run").click()
    wait_text(page, f"Stop run {run_id}?", 30_000)
    assert store.run_row(conn, run_id)["stop_requested"] is None
    page.get_by_role("button", name="Stop now").click()
    wait_text(page, f"Asked run {run_id} to stop", 30_000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.run_row(conn, run_id)["state"] != "stopped":
        time.sleep(0.5)
    assert store.run_row(conn, run_id)["state"] == "stopped"
    wait_text(page, "stopped: step", 30_000)  # the Monitor's own refresh
    nav(page, "Runs").click()
    page.locator(".st-key-runs-header").wait_for(timeout=60_000)
    page.reload()
    row = page.locator(f".st-key-run-{run_id}")
    row.wait_for(timeout=60_000)
    # The row's container is drawn before its lines (Streamlit sends elements one by one):
    # wait for the state line rather than read the row the moment it appears.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "stopped" not in row.inner_text():
        page.wait_for_timeout(250)
    assert "stopped" in row.inner_text(), row.inner_text()
    shoot(page, "runs-stopped.png")
    assert elsewhere == [], f"requests left the machine: {elsewhere[:5]}"
