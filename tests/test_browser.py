"""The dashboard in a real browser: Playwright driving Debian's Chromium against `streamlit run`.

Plan a GPT on cpu:2, download the plan and validate it, launch a short run, watch the loss
chart gain points without a reload, stop the run and see it stopped, reload and find it.
Screenshots of every page go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import time

import pytest

from planner.plan import load_plan
from runtime import store
from tests.browser import SHOTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def loss_points(page) -> int:
    """Points in the Monitor page's loss chart (plotly 7: count them in calcdata)."""
    return page.evaluate(
        """() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];
                   const loss = plots.find(p => ((p.layout || {}).title || {}).text?.includes('Loss'));
                   return loss && loss.calcdata ? loss.calcdata[0].length : 0; }"""
    )


def test_plan_download_launch_watch_stop_and_find_again(dashboard, page, tmp_path):
    url, runs, _ = dashboard
    elsewhere: list[str] = []  # fully offline: every request goes to the dashboard itself
    page.on(
        "request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else elsewhere.append(r.url)
    )
    for name in ("", "devices", "plan", "export"):
        page.goto(f"{url}/{name}")
        page.get_by_text("Stagecraft: plan and run parallel training").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(SHOTS / f"{name or 'model'}.png"), full_page=True)

    # Plan a GPT on cpu:2 and download the plan.
    page.goto(f"{url}/devices")
    spec = page.get_by_role("textbox", name="Cluster", exact=True)
    spec.fill("cpu:2")
    spec.press("Enter")
    page.get_by_text("Devices", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    page.get_by_role("link", name="Plan").click()
    page.get_by_text("Step time").wait_for(timeout=120_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download plan JSON").click()
    saved = tmp_path / "plan.json"
    download.value.save_as(saved)
    plan = load_plan(saved)  # strict validation
    assert plan.model.source == "gpt" and len(plan.ranks) == 2

    # Launch a long run from the Runs page (a client-side page switch keeps the session).
    page.get_by_role("link", name="Runs").click()
    steps = page.get_by_role("spinbutton", name="Steps", exact=True)
    steps.fill("100000")
    steps.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Launch the current plan").click()
    page.get_by_text("Started run").wait_for(timeout=120_000)
    page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)
    conn = store.connect(runs)
    (run,) = store.runs(conn)

    # The loss chart gains points on its own, without a reload.
    page.get_by_role("link", name="Monitor").click()
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
    page.screenshot(path=str(SHOTS / "monitor.png"), full_page=True)

    # Stop it from the Runs page and see it stopped; a reload still finds it.
    page.get_by_role("link", name="Runs").click()
    page.get_by_text(f"Run {run['run_id']} is running").wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # let the page settle: a click during a rerun can be lost
    page.get_by_role("button", name="Stop").click()
    page.get_by_text(f"Asked run {run['run_id']} to stop").wait_for(timeout=30_000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.run_row(conn, run["run_id"])["state"] != "stopped":
        time.sleep(0.5)
    page.reload()
    page.get_by_text(f"Run {run['run_id']} is stopped").wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "runs-stopped.png"), full_page=True)
    assert elsewhere == [], f"requests left the machine: {elsewhere[:5]}"
