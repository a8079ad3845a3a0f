"""The Size page in a real browser: set a deadline, size the current model, see the front
drawn (each point's plan in its hover), choose a point, use it, and find the Plan page
showing it. A screenshot of the Size page goes to ``test-artifacts/screenshots/size.png``.
"""

from __future__ import annotations

import pytest

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.sizing.catalog import default_catalog
from planner.sizing.report import chosen_point, dollars, duration
from planner.sizing.size import size
from tests.browser import shoot
from tests.test_browser_plan import PLAN, choose, chosen, nav, settle

pytestmark = [pytest.mark.browser, pytest.mark.slow]
POINT = "Point to use"


def front_markers(page) -> int:
    """Markers of the front in the chart (the large ones), counted in plotly's calcdata."""
    return page.evaluate(
        """() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];
                   const p = plots.find(p => ((p.layout || {}).title || {}).text?.includes('Cost against'));
                   if (!p || !p.calcdata) return 0;
                   return p.data.map((t, i) => t.mode === 'markers' && t.marker.size === 13
                       ? p.calcdata[i].length : 0).reduce((a, b) => a + b, 0); }"""
    )


def test_set_a_deadline_see_the_front_choose_a_point_and_plan_with_it(dashboard, page):
    url, _, _ = dashboard
    page.goto(url)
    page.get_by_text("Parameters").wait_for(timeout=120_000)
    settle(page)
    nav(page, "Size")
    page.get_by_role("textbox", name="Tokens to train on", exact=True).wait_for(timeout=60_000)

    # The job: 2B tokens of the default GPT within three minutes.
    tokens = page.get_by_role("textbox", name="Tokens to train on", exact=True)
    assert page.get_by_text("and press Size", exact=False).count() == 1  # nothing is sized before it is asked
    tokens.fill("2B")
    tokens.press("Enter")
    settle(page)
    deadline = page.get_by_role("textbox", name="A deadline (hours)", exact=True)
    deadline.fill("0.05")
    deadline.press("Enter")
    settle(page)
    page.get_by_role("button", name="Size", exact=True).click()
    page.get_by_role("heading", name="Pareto front").wait_for(timeout=120_000)
    settle(page)

    expected = size(coarsen(trace("gpt")), default_catalog(), tokens=2 * 10**9, global_batch=512, hours=0.05)
    names = [f"{p.shape.short_form} · {duration(p.hours)} · {dollars(p.cost_usd)}" for p in expected.front]
    page.wait_for_function(
        "n => [...document.querySelectorAll('.js-plotly-plot')].some(p => p.calcdata)", arg=None
    )
    assert front_markers(page) == len(expected.front)
    cheapest = chosen_point(expected, 0.05)
    assert chosen(page, POINT) == names[expected.front.index(cheapest)]

    # A point's hover names its plan.
    point = page.locator(".js-plotly-plot .scatterlayer .trace .points path").first
    point.hover(force=True)
    hover = page.locator(".js-plotly-plot .hoverlayer")
    hover.get_by_text("plan:", exact=False).first.wait_for(timeout=10_000)
    shoot(page, "size.png")

    # Choose the fastest point (not the one preselected) and use it.
    fastest = expected.front[0]
    choose(page, POINT, names[0])
    assert chosen(page, POINT) == names[0]
    page.get_by_role("button", name="Use this: make it the current devices and plan").click()
    page.get_by_text("are now the current devices and plan").wait_for(timeout=60_000)

    # The Plan page shows it: its devices, and the sized plan as the plan to inspect.
    nav(page, "Plan")
    page.get_by_text(PLAN, exact=True).wait_for(timeout=120_000)
    settle(page)
    assert chosen(page, PLAN).startswith(f"sized plan ({names[0]}")
    assert fastest.shape.short_form in page.get_by_test_id("stSidebar").inner_text()
    body = page.inner_text("body")
    assert f"on {fastest.shape.short_form}" in body
