"""The planner's pure parts import without torch (STYLE.md: torch only inside the tracer)."""

import subprocess
import sys


def test_graph_cluster_and_cli_do_not_import_torch_or_plotly():
    code = (
        "import sys; import planner, planner.cluster, planner.capture.coarsen, planner.capture.graph, planner.cli, "
        "planner.devices, planner.capture.overrides, planner.capture.source, planner.search.search, planner.model_check; "
        "print('torch' in sys.modules, 'transformers' in sys.modules, 'plotly' in sys.modules, "
        "any(m.startswith('dashboard') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "False"]  # the planner draws nothing
