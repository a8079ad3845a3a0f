"""The planner's pure parts import without torch (STYLE.md: torch only inside the tracer)."""

import subprocess
import sys


def test_graph_cluster_and_cli_do_not_import_torch():
    code = (
        "import sys; import planner, planner.cluster, planner.coarsen, planner.graph, planner.cli, "
        "planner.devices, planner.overrides, planner.source, planner.figures; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
