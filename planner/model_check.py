"""Check a plan against the model it names, not only against itself.

A plan is strict about its own consistency (`planner.plan`), but a stage cut at a block the
model does not have, blocks listed out of order, or a digest of another graph all pass those
checks, and the workers would start and die. `check_against_model` traces the plan's model
again (on the meta device: no memory) and refuses, naming the field, a plan that was not
made for it, or whose stages' weights alone cannot fit their devices.
"""

from __future__ import annotations

import networkx as nx

from planner.errors import PlanError, SourceError
from planner.plan import Plan
from planner.precision import model_state_bytes

SKIPPED = (
    "the model was not traced: its source, overrides, block list and graph digest are unchecked, "
    "and a stage too large for its device fails only when the workers build it"
)


def check_against_model(plan: Plan) -> nx.DiGraph:
    """Trace ``plan``'s model again; return its coarsened graph, or raise `PlanError`.

    Checked: the source builds (a ``py:`` module only with consent, `planner.capture.source`), the
    overrides are keys the model knows, the blocks are the model's blocks in its order, the
    graph digest is the model's, and each rank's parameters x 4 (weights, gradients, two
    optimizer moments) fit its device's memory.
    """
    from planner.capture.coarsen import coarsen
    from planner.capture.graph import graph_digest
    from planner.capture.trace import trace
    from planner.search.build import model_blocks

    model = plan.model
    try:
        graph = coarsen(trace(model.source, model.overrides, batch_size=model.trace_batch_size))
    except SourceError as exc:
        raise PlanError(f"model.source: {exc}") from None
    blocks = model_blocks(graph)
    if blocks != model.blocks:
        raise PlanError(f"model.blocks: {_first_difference(model.blocks, blocks)}")
    digest = graph_digest(graph)
    if digest != model.graph_digest:
        raise PlanError(
            f"model.graph_digest: the plan was made for graph {model.graph_digest[:12]}, but "
            f"{model.source} with these overrides traces to {digest[:12]} (same blocks, other costs: "
            "another torch or transformers version, or an edited plan); plan it again"
        )
    _check_weights_fit(plan, graph)
    return graph


def _first_difference(planned: list[str], traced: list[str]) -> str:
    """Where the plan's block list leaves the model's, in words.

    >>> _first_difference(["a", "c", "b"], ["a", "b", "c"])
    "block 1 is 'c', but the model's block 1 is 'b' (the model has 3 blocks: a ... c)"
    >>> _first_difference(["a", "x"], ["a", "b"])
    "'x' is not a block of the model (the model has 2 blocks: a ... b)"
    """
    has = f"the model has {len(traced)} blocks: {traced[0]} ... {traced[-1]}"
    known = set(traced)
    for i, name in enumerate(planned):
        if name not in known:
            return f"{name!r} is not a block of the model ({has})"
        if i >= len(traced) or traced[i] != name:
            return f"block {i} is {name!r}, but the model's block {i} is {traced[i]!r} ({has})"
    return f"the plan lists {len(planned)} blocks and leaves out {traced[len(planned)]!r} ({has})"


def _check_weights_fit(plan: Plan, graph: nx.DiGraph) -> None:
    blocks_of = plan.stage_blocks()
    for rank in plan.ranks:
        stages = [s for s in plan.stages if s.pp_rank == rank.pp_index]
        params = sum(graph.nodes[b]["param_count"] for s in stages for b in blocks_of[s.index])
        # Weights, gradients and optimizer state: the least any step holds, whatever the
        # activations.
        opt = plan.training.optimizer
        need = params * model_state_bytes(opt.name, opt.momentum, plan.training.precision)
        device = plan.cluster.device(rank.device)
        if need > device.memory_bytes:
            have = device.memory_bytes / 2**30
            raise PlanError(
                f"ranks[{rank.rank}]: its stages' weights, gradients and optimizer state alone need "
                f"{need / 2**30:,.1f} GiB, more than device {device.id}'s {have:,.1f} GiB"
            )
