"""Activation recomputation: every block the plan recomputes wrapped in `checkpoint_wrapper`.

The plan says it per stage (`planner.sharding`: ``full``, or ``every-K``, the blocks whose
position in the model is a multiple of K). A wrapped block keeps its inputs for backward and
runs its forward again there, under the RNG state of the first run (non-reentrant
checkpointing), so losses and gradients are those of the block unwrapped. Applied before
data parallel wraps the model (torchtitan's order): FSDP then shards the block's parameters
inside the wrapper. The wrapper puts ``_checkpoint_wrapped_module.`` into the FQNs under it;
torch's distributed state dict takes it out for checkpoints (runtime.parallel.checkpoint),
and `plain_fqn` everywhere else.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from planner.plan import Plan
from planner.sharding import recomputed

WRAPPED = "_checkpoint_wrapped_module."


def recomputing_blocks(plan: Plan) -> list[str]:
    """The blocks (module FQNs) the plan recomputes, in model order."""
    position = {b: i for i, b in enumerate(plan.model.blocks)}
    return [
        block
        for stage, blocks in zip(plan.stages, plan.stage_blocks(), strict=True)
        for block in blocks
        if recomputed(stage.recompute_every, position[block])
    ]


def apply_recompute(module: nn.Module, blocks: list[str]) -> None:
    """Wrap each of ``blocks`` (FQNs in ``module``) in place."""
    for fqn in blocks:
        parent_name, _, name = fqn.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, name, checkpoint_wrapper(parent.get_submodule(name)))


def plain_fqn(fqn: str) -> str:
    """An FQN as the unwrapped model names it.

    >>> plain_fqn("blocks.0._checkpoint_wrapped_module.attn.weight")
    'blocks.0.attn.weight'
    """
    return fqn.replace(WRAPPED, "")
