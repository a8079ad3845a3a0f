"""The planner's contracts, cost model and search import without torch, plotly or streamlit.

STYLE.md: torch only inside the tracer, and the dashboard draws, the planner does not. Each
check imports in a fresh interpreter and reads ``sys.modules``. The modules are found with
pkgutil, so a module added to the contracts, to planner.cost or to planner.search is checked
from the day it is added. tests/test_layers.py checks the same rules on the source.
"""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

PLANNER = Path(__file__).resolve().parents[1] / "planner"

CONTRACTS = ("plan", "cluster", "devices", "profile", "schedules", "topology", "networks", "limits")
"""The documents and rules the planner, the runtime and the dashboard share."""

PURE_CAPTURE = ("coarsen", "graph", "overrides", "source")
"""Capture modules the command line and the pure parts read: torch only inside their functions."""

HEAVY = ("torch", "transformers", "plotly", "streamlit")


def _modules(package: str, folder: Path) -> list[str]:
    # planner/__main__.py is left out: importing it runs the command line.
    found = pkgutil.iter_modules([str(folder)])
    return [f"{package}.{m.name}" for m in found if not m.ispkg and m.name != "__main__"]


def _imported_by(modules: list[str]) -> dict:
    """Import ``modules`` in order in a fresh interpreter: which one first brought in each heavy
    package, and which modules of the runtime, dashboard or pages came in."""
    code = f"""
import importlib, json, sys
first = {{}}
for name in {modules!r}:
    importlib.import_module(name)
    for heavy in {HEAVY!r}:
        if heavy in sys.modules:
            first.setdefault(heavy, name)
print(json.dumps({{"first": first, "others": sorted(
    m for m in sys.modules if m.split(".")[0] in ("runtime", "dashboard", "views"))}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_every_contract_is_found():
    found = _modules("planner", PLANNER)
    assert {f"planner.{name}" for name in CONTRACTS} <= set(found)
    assert len(_modules("planner.cost", PLANNER / "cost")) >= 4  # price, timing, simulate, memory
    assert len(_modules("planner.search", PLANNER / "search")) >= 5  # search, partition, build, ...


def test_the_contracts_import_without_torch_plotly_or_streamlit():
    # Every top-level planner module: the contracts, and the command line that reads them.
    result = _imported_by(["planner", *_modules("planner", PLANNER)])
    assert result == {"first": {}, "others": []}


def test_cost_and_search_import_without_torch_plotly_or_streamlit():
    modules = [*_modules("planner.cost", PLANNER / "cost"), *_modules("planner.search", PLANNER / "search")]
    result = _imported_by(["planner.cost", "planner.search", *modules])
    assert result == {"first": {}, "others": []}  # the planner draws nothing and trains nothing


def test_the_pure_capture_modules_import_without_torch_plotly_or_streamlit():
    result = _imported_by([f"planner.capture.{name}" for name in PURE_CAPTURE])
    assert result == {"first": {}, "others": []}
