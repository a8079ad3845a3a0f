"""Across machines: the printed per-node commands train one plan; rank 0's node has it all."""

from __future__ import annotations

import shlex
import socket
import subprocess

import pytest

from planner.cluster import parse_short_form
from planner.errors import PlanError
from planner.plan import save_plan
from planner.search.build import make_plan
from runtime.supervise import multinode, store
from tests.runs import ROOT, graph_of
from tests.supervision import ENV, runtime_cli

pytestmark = pytest.mark.slow


def two_node_plan():
    return make_plan(
        graph_of("gpt", '{"size": "toy"}'),
        parse_short_form("cpu:1x2"),
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule="gpipe",
        micro_batches=2,
        training={"steps": 6},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_run_the_printed_commands(tmp_path):
    plan = two_node_plan()
    assert {r.node for r in plan.ranks} == {0, 1}
    save_plan(plan, tmp_path / "plan.json")
    printed = runtime_cli(
        "command", tmp_path / "plan.json", "--nodes", 2, "--endpoint", f"127.0.0.1:{free_port()}"
    )
    assert printed.returncode == 0, printed.stderr
    commands = [shlex.split(line) for line in printed.stdout.splitlines() if line.startswith("torchrun ")]
    assert len(commands) == 2 and "#SBATCH --nodes=2" in printed.stdout
    procs = []
    for node, cmd in enumerate(commands):
        folder = tmp_path / f"node{node}"  # each "machine" has its own folder and runs dir
        folder.mkdir()
        env = {**ENV, "PYTHONPATH": str(ROOT)}
        procs.append(
            subprocess.Popen(
                cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert not (tmp_path / "node1" / "runs" / store.DB_NAME).exists()  # node 1 never touched a database
    conn = store.connect(tmp_path / "node0" / "runs")
    (run,) = store.runs(conn)
    assert run["state"] == "finished" and run["world_size"] == 2
    rows, _ = store.read_metrics(conn, run["run_id"])
    assert sorted({m.step for m in rows if m.rank == store.STEP_RANK and m.name == "loss"}) == list(
        range(1, 7)
    )
    assert {m.step for m in rows if m.rank == 1 and m.name == "compute_s"} == set(
        range(1, 7)
    )  # node 1's rank


def test_command_checks_the_node_count_and_endpoint():
    plan = two_node_plan()
    with pytest.raises(PlanError, match="2 nodes"):
        multinode.commands(plan, nodes=3, plan_path="plan.json", run_id="r", endpoint="h:29500")
    with pytest.raises(PlanError, match="HOST:PORT"):
        multinode.commands(plan, nodes=2, plan_path="plan.json", run_id="r", endpoint="nohost")
    with pytest.raises(PlanError, match="Slurm"):
        multinode.slurm_script(plan, plan_path="my plan.json", run_id="r")


def test_slurm_script_takes_each_node_rank_from_the_plan():
    script = multinode.slurm_script(two_node_plan(), plan_path="plan.json", run_id="r1", port=29600)
    assert 'STAGECRAFT_RANKS_PER_NODE="1 1"' in script
    assert "--plan-node $SLURM_NODEID" in script and "$STAGECRAFT_HEAD:29600" in script
    assert script.count("srun") == 1 and "gpus-per-node" not in script
