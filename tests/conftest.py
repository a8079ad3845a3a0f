"""Fixtures shared by the browser tests: Debian's Chromium driving `streamlit run` on loopback.

Each browser test module gets its own dashboard (module scope) with its own runs dir; the
dashboard fixture yields (url, runs dir, server process).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.supervise import store
from tests.browser import CHROMIUM_ARGS, ROOT, SHOTS, ensure_chromium, start_dashboard


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    try:
        proc, url = start_dashboard(runs)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url, runs, proc
    proc.terminate()
    proc.wait(timeout=20)
    for run in store.runs(store.connect(runs)):  # runs outlive the dashboard by design: end them
        if run["state"] in store.ACTIVE:
            subprocess.run(
                [sys.executable, "-m", "runtime", "stop", run["run_id"], "--runs-dir", str(runs)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                timeout=120,
            )


@pytest.fixture(scope="module")
def page(dashboard):
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        browser.close()


@pytest.fixture
def allow_fixture_models(monkeypatch):
    """Consent to importing the test fixtures' `py:` models (nothing else), as --allow-py gives."""
    from planner.capture.source import PY_ALLOW_ENV

    monkeypatch.setenv(PY_ALLOW_ENV, "tests.fixtures.models")
