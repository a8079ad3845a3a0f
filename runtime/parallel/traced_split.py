"""What a pipeline stage, as `pipeline()` traced it, needs before its blocks can be split
across a tensor group.

The trace records every shape an op was called with as a number. Where the model passed a
shape it computed from the heads or widths it saw, the number is the whole model's, and a
rank holding its share of the heads computes the wrong shape (or none: a Llama pp 2 x tp 2
stage failed with "size of tensor a (2) must match ... (4)"). Three places, each mended
here where it arises:

- Hugging Face's ``repeat_kv`` (grouped-query attention) expands the key/value heads by
  the count it reads off its input: traced with a copy that leaves the head count to the
  tensor (`heads_left_to_the_tensor`), so the trace records ``-1`` in its place.
- A traced ``Conv1D`` (GPT-2) views its output to the whole layer's width: the split
  layers are put back as the ``Conv1D`` they were (`eager_conv1d`), whose forward reads
  its width off its weight, before the stage is made real (their FQNs unchanged).
- A fused layer's output is cut by the width of one part (GPT-2's ``split(split_size)``):
  the cut is divided by the degree in the traced graph (`divide_fused_cuts`), as
  `runtime.parallel.tensor_parallel` divides ``split_size`` on a module as built.

A traced norm's dtype checks are erased before it runs on DTensors (`drop_metadata_checks`).
And a traced module takes its inputs in the trace's order, not the model's (GPT-2's traced
attention takes its mask first): `hidden_state_index` finds the hidden state by what it
feeds, for the sequence-parallel hooks.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator

import torch
from torch import nn

from planner.tensor_parallel import TpLayout
from runtime.parallel.conv1d_parallel import is_conv1d


def _repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Hugging Face's ``repeat_kv`` ((batch, kv heads, seq, head dim) -> (batch, kv heads x
    n_rep, seq, head dim)) with the key/value head count left as ``-1``."""
    if n_rep == 1:
        return hidden_states
    batch, _, seq, head_dim = hidden_states.shape
    expanded = hidden_states[:, :, None, :, :].expand(-1, -1, n_rep, -1, -1)
    return expanded.reshape(batch, -1, seq, head_dim)


@contextlib.contextmanager
def heads_left_to_the_tensor() -> Iterator[None]:
    """Every loaded Hugging Face module's ``repeat_kv`` replaced by `_repeat_kv` inside the
    ``with``, then restored (each modeling file and the attention integrations hold a copy
    of their own)."""
    replaced = []
    for name, module in list(sys.modules.items()):
        if name.startswith("transformers.") and callable(getattr(module, "repeat_kv", None)):
            replaced.append((module, module.repeat_kv))
            module.repeat_kv = _repeat_kv
    try:
        yield
    finally:
        for module, original in replaced:
            module.repeat_kv = original


def eager_conv1d(stage: nn.Module, built: nn.Module, block: str, layout: TpLayout) -> None:
    """Put the block's split layers that the model built as ``Conv1D`` back into the traced
    ``stage`` (a copy of each, on ``built``'s device: meta until the stage is made real)."""
    for path in (*layout.colwise, *layout.rowwise):
        fqn = f"{block}.{path}"
        original = built.get_submodule(fqn)
        if is_conv1d(original) and not is_conv1d(stage.get_submodule(fqn)):
            owner, _, name = fqn.rpartition(".")
            setattr(stage.get_submodule(owner), name, copy.deepcopy(original))


def divide_fused_cuts(block: nn.Module, layout: TpLayout, degree: int) -> None:
    """In a traced block, divide by ``degree`` every ``split`` of a fused layer's output (its
    cut into q, k and v, one part's width each): the rank's output holds its share of each."""
    for path, _parts in layout.fused:
        owner, _, name = path.rpartition(".")
        module = block.get_submodule(owner) if owner else block
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue  # as built: its split_size is divided as a width
        for node in graph.nodes:
            fed = node.args[0] if node.args else None
            if (
                node.target is torch.ops.aten.split.Tensor
                and isinstance(fed, torch.fx.Node)
                and fed.op == "call_module"
                and fed.target == name
            ):
                node.args = (fed, node.args[1] // degree, *node.args[2:])
        if isinstance(module, torch.fx.GraphModule):  # an InterpreterModule runs its graph as is
            module.recompile()


def drop_metadata_checks(module: nn.Module) -> None:
    """Erase the dtype and device checks the trace wrote into a traced module's graph
    (``aten._assert_tensor_metadata``, from Llama's RMSNorm casting its input to float32):
    DTensor has no rule for them, so a norm run on DTensors (sequence parallel) failed on
    its first one. They check the trace's own tensors; the run's are the same by then."""
    graph = getattr(module, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            graph.erase_node(node)
    if isinstance(module, torch.fx.GraphModule):
        module.recompile()


def hidden_state_index(module: nn.Module, fed: set[str]) -> int | None:
    """The position, among a traced module's inputs, of the one that its children named in
    ``fed`` take directly (the hidden state: its split layers', or its norms', input); None
    for a module as built (its first argument is the hidden state) or when none does."""
    graph = getattr(module, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return None
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    for i, node in enumerate(inputs):
        if any(user.op == "call_module" and user.target in fed for user in node.users):
            return i
    return None
