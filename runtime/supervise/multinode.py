"""Commands for a run across machines: one torchrun per node, and a Slurm script.

Every node runs the same worker under

    torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT
             --rdzv-id RUN -m runtime.rank.worker --plan plan.json --run-id RUN --plan-node K

with its own node index K (``--plan-node``: torchrun would take ``--node`` as an abbreviation
of its own ``--node-rank``): torchrun numbers nodes in the order they join, so the worker
takes its rank from the plan (the plan says which ranks live on which node). Rank 0
gathers every rank's metrics over the process group and writes them to its own runs
database, so the other machines need no access to it. Checkpoints are written by every
rank into its own runs dir: to resume a multi-machine run, the runs dir must be shared.

Security: while the run lasts, the rendezvous store on HOST:PORT and the collectives'
sockets listen on the machines' network interfaces, without authentication.
"""

from __future__ import annotations

import re
from collections import Counter

from planner.errors import PlanError
from planner.plan import Plan


def nodes_of(plan: Plan) -> Counter:
    """Ranks per node index."""
    return Counter(r.node for r in plan.ranks)


def check_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PlanError(f"--endpoint {endpoint!r}: expected HOST:PORT, e.g. node0.example:29500")
    return host, int(port)


def node_command(
    plan: Plan,
    node: int,
    *,
    plan_path: str,
    run_id: str,
    endpoint: str,
    runs_dir: str = "runs",
    threads: int = 1,
) -> list[str]:
    """The argument list node ``node`` runs (no shell needed; `shlex.join` prints it)."""
    counts = nodes_of(plan)
    if node not in counts:
        raise PlanError(f"ranks: the plan has no rank on node {node}")
    return [
        "torchrun", f"--nnodes={len(counts)}", f"--nproc-per-node={counts[node]}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}",
        "-m", "runtime.rank.worker", "--plan", plan_path, "--run-id", run_id, "--plan-node", str(node),
        "--runs-dir", runs_dir, "--threads", str(threads),
    ]  # fmt: skip


def commands(plan: Plan, *, nodes: int, plan_path: str, run_id: str, endpoint: str, runs_dir: str = "runs"):
    """One command per node, checked against the plan's own layout."""
    check_endpoint(endpoint)
    counts = nodes_of(plan)
    if nodes != len(counts):
        raise PlanError(f"--nodes {nodes}: the plan places its ranks on {len(counts)} nodes")
    if sorted(counts) != list(range(nodes)):
        raise PlanError(f"ranks: node indices {sorted(counts)} are not 0..{nodes - 1}")
    return [
        node_command(plan, k, plan_path=plan_path, run_id=run_id, endpoint=endpoint, runs_dir=runs_dir)
        for k in range(nodes)
    ]


_SAFE = re.compile(r"^[A-Za-z0-9_./:=+-]+$")


def slurm_script(
    plan: Plan, *, plan_path: str, run_id: str, port: int = 29500, runs_dir: str = "runs"
) -> str:
    """An sbatch script: one task per node, the first node hosts the rendezvous.

    The per-node part runs in ``bash -c '...'`` so that ``$SLURM_NODEID`` is each task's
    own; paths are refused unless they need no quoting inside it.
    """
    for what, value in (("plan path", plan_path), ("runs dir", runs_dir), ("run id", run_id)):
        if not _SAFE.match(value):
            raise PlanError(f"{what} {value!r}: use letters, digits and ./_-:=+ in a Slurm script")
    counts = nodes_of(plan)
    gpus = max(counts.values()) if any(plan.cluster.device(r.device).kind != "cpu" for r in plan.ranks) else 0
    per_node = " ".join(str(counts[k]) for k in sorted(counts))
    task = (
        "ranks=($STAGECRAFT_RANKS_PER_NODE); exec torchrun --nnodes=$SLURM_NNODES "
        "--nproc-per-node=${ranks[$SLURM_NODEID]} --rdzv-backend=c10d "
        f"--rdzv-endpoint=$STAGECRAFT_HEAD:{port} --rdzv-id={run_id} -m runtime.rank.worker "
        f"--plan {plan_path} --run-id {run_id} --runs-dir {runs_dir} --plan-node $SLURM_NODEID"
    )
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=stagecraft-{run_id}",
        f"#SBATCH --nodes={len(counts)}",
        "#SBATCH --ntasks-per-node=1",
        *([f"#SBATCH --gpus-per-node={gpus}"] if gpus else []),
        "set -euo pipefail",
        'export STAGECRAFT_HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'export STAGECRAFT_RANKS_PER_NODE="{per_node}"  # from the plan, node by node',
        f"srun bash -c '{task}'",
    ]
    return "\n".join(lines) + "\n"
