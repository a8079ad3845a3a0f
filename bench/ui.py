"""How long the dashboard takes to draw each page, and how much memory its server holds.

    python bench/ui.py [--configs gpt@cpu:2 gpt:size=7b@h100:8x8]

For each configuration (a model, its overrides and a cluster), a fresh `streamlit run
app.py` on loopback with an empty runs folder, driven by Debian's Chromium through
Playwright as a user would: the landing (Model) page opened at a new session's address and
the model typed in (a trace); the Devices page opened and the cluster typed in; the Plan
page opened (the search) and new global batches typed in (a search each); the Export, Runs
and Monitor pages opened by their addresses. Every page is opened again ``--repeats`` times
(a reload: a new connection that restores the session, its trace and search cached).

Each figure is the time from the request (or the key press) to the page drawn with its
script finished: the first time, and the median of the repeats. Then the server's peak
resident memory (VmHWM of the Streamlit process, /proc/<pid>/status).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashboard import format as fmt  # noqa: E402
from dashboard import session_store  # noqa: E402
from tests.browser import CHROMIUM_ARGS, ensure_chromium, rss_bytes, start_dashboard  # noqa: E402

CONFIGS = ("gpt@cpu:2", "gpt:size=7b@h100:8x8")
LIMIT_MS = 600_000  # the 7B model's first search on 64 devices may take minutes


def parse_config(text: str) -> tuple[str, str, str]:
    """'gpt:size=7b@h100:8x8' -> ('gpt', 'size=7b', 'h100:8x8'); overrides joined by ','."""
    model, _, cluster = text.partition("@")
    source, _, overrides = model.partition(":") if not model.startswith(("hf:", "py:")) else (model, "", "")
    return source, overrides.replace(",", " "), cluster


def finished(page, marker) -> None:
    """Wait for ``marker``, then for the script run to end (the app's root says so)."""
    marker.wait_for(timeout=LIMIT_MS)
    page.wait_for_function(_SETTLED, timeout=LIMIT_MS, polling=20)


def timed(action, page, marker) -> float:
    started = time.perf_counter()
    action()
    finished(page, marker)
    return time.perf_counter() - started


_WATCH_RUNS = """() => {
    const app = document.querySelector('[data-testid=stApp]');
    window.__stagecraftRan = false;
    if (window.__stagecraftWatch) window.__stagecraftWatch.disconnect();
    window.__stagecraftWatch = new MutationObserver(() => {
        if (app.getAttribute('data-test-script-state') === 'running') window.__stagecraftRan = true;
    });
    window.__stagecraftWatch.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
_SETTLED = """() => document.querySelector('[data-testid=stApp]')
    .getAttribute('data-test-script-state') === 'notRunning'"""
_RUN_OVER = """() => window.__stagecraftRan && document.querySelector('[data-testid=stApp]')
    .getAttribute('data-test-script-state') === 'notRunning'"""


def timed_rerun(action, page) -> float:
    """An action on a drawn page: the time until the script run it starts has ended.

    The app's root element says whether a script runs (``data-test-script-state``); an
    observer installed before the action sees it turn to running however short the run
    (Streamlit's running indicator shows only once a run has lasted a while).
    """
    # A run still going when the observer is installed (a reload's second run) would never
    # turn to running again, and the wait below would never end: wait for it first.
    page.wait_for_function(_SETTLED, timeout=LIMIT_MS, polling=20)
    page.evaluate(_WATCH_RUNS)
    started = time.perf_counter()
    action()
    page.wait_for_function(_RUN_OVER, timeout=LIMIT_MS, polling=20)
    return time.perf_counter() - started


def title(page, text: str, level: int = 1):
    return page.get_by_role("heading", name=text, exact=True, level=level)


def metric(page, label: str):
    return page.get_by_test_id("stMetric").filter(has_text=label).first


def type_into(page, label: str, text: str, role: str = "textbox") -> None:
    field = page.get_by_role(role, name=label, exact=True)
    field.fill(text)
    field.press("Enter")


def measure(browser, config: str, repeats: int) -> tuple[list[tuple[str, float, float | None]], int]:
    """[(what, first time, median of ``repeats`` more)] and the server's peak memory."""
    source, overrides, cluster = parse_config(config)
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_dashboard(Path(folder))
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            session = session_store.new_id()

            def opened(name: str, marker) -> tuple[float, float]:
                """The page opened by its address (a new connection that restores the session)."""
                address = f"{url}/{name}?{session_store.QUERY_KEY}={session}"
                first = timed(lambda: page.goto(address), page, marker)
                again = [timed(lambda: page.goto(address), page, marker) for _ in range(repeats)]
                return first, statistics.median(again)

            def typed(label: str, texts: list[str], role: str = "textbox") -> tuple[float, float | None]:
                times = [timed_rerun(lambda t=t: type_into(page, label, t, role), page) for t in texts]
                return times[0], statistics.median(times[1:]) if len(times) > 1 else None

            figures = [("Model (a trace, the first time)", *opened("", metric(page, "Parameters")))]
            if overrides:
                size = "Size overrides (key=value, space separated)"
                figures.append(("Model, its size typed (a trace)", *typed(size, [overrides])))
            if source != "gpt":
                figures.append(("Model, its source typed (a trace)", *typed("Model source", [source])))
            figures.append(("Devices", *opened("devices", title(page, "Devices"))))
            figures.append(("Devices, the cluster typed", *typed("Cluster", [cluster])))
            figures.append(("Plan (a search, the first time)", *opened("plan", metric(page, "Step time"))))
            batches = [str(16 + 8 * i) for i in range(repeats + 1)]
            label = "Global batch (samples per step)"
            figures.append(("Plan, a new global batch (a search)", *typed(label, batches, "spinbutton")))
            figures.append(("Export", *opened("export", title(page, "Run it", level=3))))
            figures.append(("Runs", *opened("runs", title(page, "Runs"))))
            figures.append(("Monitor", *opened("monitor", title(page, "Monitor"))))
            page.context.close()
            return figures, rss_bytes(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="MODEL[:k=v,...]@CLUSTER")
    parser.add_argument("--repeats", type=int, default=3, help="times each page is opened again")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_chromium(), args=CHROMIUM_ARGS)
        for config in args.configs:
            figures, rss = measure(browser, config, args.repeats)
            print(f"\n{config}: time to the page drawn, the first time and again (median of {args.repeats})")
            for name, first, again in figures:
                print(f"  {name:<40} {fmt.duration(first):>10} {fmt.duration(again):>10}")
            print(f"  {'server peak memory (VmHWM)':<40} {fmt.size(rss):>10}")
        browser.close()


if __name__ == "__main__":
    main()
