"""The import graph of the project's own modules: no circle, and each layer imports what it may.

Read from the source with ``ast``, every import: at module level, inside a function (a deferred
import is still a dependency), and under ``TYPE_CHECKING``. The layers and what each may import
are the ones the packages' docstrings state and docs/architecture.md draws:

    planner            the documents (plan, cluster, topology, devices, profile, schedules, ...)
    planner commands   the command line over them (cli, cli_args, model_check, __main__)
    planner.capture    builds and traces models (torch inside its functions)
    planner.cost       pure Python: prices a plan
    planner.search     pure Python: finds plans, prices them with planner.cost
    planner.sizing     pure Python: plans a catalogue's cluster shapes with planner.search
    planner.zoo        the built-in torch models
    runtime            trains plans with torch.distributed; may import the planner
    dashboard          what the pages share, and the plotly figures
    views              the pages (app.py routes them)
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("planner", "runtime", "dashboard", "views")
COMMANDS = {"planner.cli", "planner.cli_args", "planner.cli_size", "planner.model_check", "planner.__main__"}

PLANNER = {
    "planner",
    "planner commands",
    "planner.capture",
    "planner.cost",
    "planner.search",
    "planner.sizing",
    "planner.zoo",
}
MAY_IMPORT: dict[str, set[str]] = {
    "planner": {"planner"},
    "planner commands": {
        "planner",
        "planner commands",
        "planner.capture",
        "planner.cost",
        "planner.search",
        "planner.sizing",
    },
    "planner.capture": {"planner", "planner.capture", "planner.zoo"},
    "planner.cost": {"planner", "planner.cost"},
    "planner.search": {"planner", "planner.cost", "planner.search"},
    "planner.sizing": {"planner", "planner.cost", "planner.search", "planner.sizing"},
    "planner.zoo": {"planner", "planner.zoo"},
    "runtime": PLANNER | {"runtime"},
    "dashboard": PLANNER | {"runtime", "dashboard"},
    "views": PLANNER | {"runtime", "dashboard", "views"},
}
"""Layer -> the layers its modules may import (at any level)."""

ALSO_MAY_IMPORT: dict[str, set[str]] = {
    # A plan records its model's overrides in the syntax the capture parses.
    "planner": {"planner.capture.overrides"},
    # The layer graph is the document cost and search read; the rest of capture needs torch.
    "planner.cost": {"planner.capture.graph"},
    "planner.search": {"planner.capture.graph"},
    "planner.sizing": {"planner.capture.graph"},
}
"""Layer -> single modules of another layer it may import as well."""

NEVER_IMPORT: dict[str, set[str]] = {
    "planner": {"plotly", "streamlit"},
    "planner commands": {"plotly", "streamlit"},
    "planner.capture": {"plotly", "streamlit"},
    "planner.cost": {"torch", "transformers", "plotly", "streamlit"},
    "planner.search": {"torch", "transformers", "plotly", "streamlit"},
    "planner.sizing": {"torch", "transformers", "plotly", "streamlit"},
    "planner.zoo": {"plotly", "streamlit"},
    "runtime": {"plotly", "streamlit"},
}
"""Layer -> third-party packages none of its modules imports, at any level."""

LIGHT = ("planner", "planner commands", "planner.cost", "planner.search", "planner.sizing")
"""Layers whose module-level imports, followed through the project, never reach HEAVY."""
HEAVY = {"torch", "transformers", "plotly", "streamlit"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    """The module as named in the statement, made absolute; ``from x import y`` names x.y when
    that is a module of the project, else x."""
    when: str
    """When it runs: at "import" of the importer; at a "call" of the function it is in; or, under
    ``TYPE_CHECKING``, never ("typing": a dependency all the same)."""
    line: int

    @property
    def module_level(self) -> bool:
        return self.when == "import"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def _project(name: str) -> str | None:
    """The project module an import reaches: the name itself, else its nearest package."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports_of(module: str, path: Path) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, when: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, when, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: up (level - 1) packages from this one
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    name = name if name in _modules() else base
                    found.append(Import(module, name, when, child.lineno))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, "typing" if when == "typing" else "call")
            elif _is_type_checking(child):
                visit(child, "typing")
            else:
                visit(child, when)

    visit(ast.parse(path.read_text(), str(path)), "import")
    return found


@cache
def _all_imports() -> tuple[Import, ...]:
    return tuple(i for module, path in _modules().items() for i in _imports_of(module, path))


def layer(module: str) -> str:
    parts = module.split(".")
    if module in COMMANDS:
        return "planner commands"
    if parts[0] == "planner":
        # Each sub-package is a layer of its own: a new one needs its rules before it passes.
        return (
            f"planner.{parts[1]}" if len(parts) > 1 and (ROOT / "planner" / parts[1]).is_dir() else "planner"
        )
    return parts[0]


def _where(i: Import) -> str:
    return f"{_modules()[i.importer].relative_to(ROOT)}:{i.line} imports {i.imported}"


def test_the_graph_is_read_from_every_folder():
    layers = {layer(m) for m in _modules()}
    assert layers == set(MAY_IMPORT), layers
    assert len(_all_imports()) > 500  # the project's own imports are found, not silently none


def _circles(when: set[str]) -> list[list[str]]:
    """Every group of modules that import one another (a strongly connected component of more
    than one module), with the imports that close it."""
    graph = nx.DiGraph()
    lines: dict[tuple[str, str], list[str]] = {}
    for i in _all_imports():
        target = _project(i.imported)
        if target and target != i.importer and i.when in when:
            graph.add_edge(i.importer, target)
            lines.setdefault((i.importer, target), []).append(_where(i))
    circles = []
    for group in nx.strongly_connected_components(graph):
        if len(group) > 1:
            inside = graph.subgraph(group).edges
            circles.append(sorted({line for edge in inside for line in lines[edge]}))
    return sorted(circles)


def test_no_import_circle_at_module_level():
    assert _circles({"import"}) == []


def test_no_import_circle_even_through_deferred_imports():
    # An import inside a function breaks the circle at import time, not the circle between the
    # two files' jobs: each still needs the other to be understood or changed. Imports under
    # TYPE_CHECKING never run, and are left out.
    assert _circles({"import", "call"}) == []


def test_each_layer_imports_only_the_layers_it_may():
    wrong = []
    for i in _all_imports():
        target = _project(i.imported)
        if target is None:
            continue
        source = layer(i.importer)
        if layer(target) not in MAY_IMPORT[source] and target not in ALSO_MAY_IMPORT.get(source, set()):
            wrong.append(_where(i))
    assert wrong == []


def test_the_planner_never_imports_runtime_dashboard_or_views():
    above = {"runtime", "dashboard", "views", "app"}
    wrong = [
        _where(i)
        for i in _all_imports()
        if layer(i.importer) in PLANNER and i.imported.split(".")[0] in above
    ]
    assert wrong == []


def test_no_layer_imports_the_packages_it_must_not():
    wrong = [
        _where(i)
        for i in _all_imports()
        if i.imported.split(".")[0] in NEVER_IMPORT.get(layer(i.importer), set())
    ]
    assert wrong == []


def test_the_figures_draw_without_streamlit():
    wrong = [
        _where(i)
        for i in _all_imports()
        if i.importer.startswith("dashboard.figures") and i.imported.split(".")[0] == "streamlit"
    ]
    assert wrong == []


def _module_level_imports() -> dict[str, list[Import]]:
    by_module: dict[str, list[Import]] = {m: [] for m in _modules()}
    for i in _all_imports():
        if i.module_level:
            by_module[i.importer].append(i)
    return by_module


def _parents(module: str) -> list[str]:
    """The packages Python imports before ``module``: planner.cost.price needs planner.cost."""
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts)) if ".".join(parts[:n]) in _modules()]


def test_the_documents_commands_cost_and_search_reach_no_torch_at_import():
    """Followed through the project's own module-level imports (and the packages they sit in),
    the planner's documents and commands, cost and search never reach torch, transformers,
    plotly or streamlit. tests/test_imports.py checks the same by importing them."""
    by_module = _module_level_imports()
    wrong = set()
    for start in (m for m in _modules() if layer(m) in LIGHT):
        chain = {start: [start]}  # module reached -> the imports that reached it
        queue = deque([start])
        while queue:
            module = queue.popleft()
            reached = _parents(module)
            for i in by_module[module]:
                if i.imported.split(".")[0] in HEAVY:
                    wrong.add(" -> ".join([*chain[module], i.imported]))
                target = _project(i.imported)
                if target:
                    reached += [*_parents(target), target]
            for target in reached:
                if target not in chain:
                    chain[target] = [*chain[module], target]
                    queue.append(target)
    assert sorted(wrong) == []


def test_every_package_docstring_names_its_modules():
    """Each folder's __init__ says what it holds: every module in it is named there."""
    missing = []
    for module, path in _modules().items():
        if path.name != "__init__.py":
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        for child in sorted(path.parent.glob("*.py")):
            if child.name != "__init__.py" and f"`{child.stem}`" not in docstring:
                missing.append(f"{module}: {child.stem}")
        for child in sorted(p.parent for p in path.parent.glob("*/__init__.py")):
            if f"`{child.name}`" not in docstring:
                missing.append(f"{module}: {child.name}/")
    assert missing == []
