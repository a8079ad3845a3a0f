"""Two memory levers of a plan: how its data-parallel groups hold the model, and which
blocks recompute their activations in backward.

Data-parallel mode (`DpMode`), one per plan, for every stage's group of replicas:
- ``replicate``: every replica holds all of its stage's parameters, gradients and optimizer
  state; gradients are all-reduced (DDP, or the explicit all-reduce of hybrid plans).
- ``shard_grad_op`` (ZeRO-2): parameters, gradients and optimizer state are sharded over the
  group; a block's parameters are all-gathered before its first forward of the step and
  kept until its last backward; gradients are reduce-scattered.
- ``full_shard`` (ZeRO-3): the same, but a block's parameters are freed after its forward
  and gathered again for its backward.
- ``hybrid_shard`` (HSDP): ``full_shard`` among the group's ranks on one node, and the
  shards all-reduced across nodes (a 2-D mesh: replicate x shard).
The sharding unit is the coarsened block (FSDP2's ``fully_shard`` per block). Per rank, a
sharded mode holds 1/S of the weights, gradients and optimizer state (S the shard group):
with AdamW in bf16-mixed 4 + 4 + 8 = 16 bytes per parameter over S, the same total as the
ZeRO paper's (2 + 2 + 12) / N (Rajbhandari et al. 2020), held as FSDP2's mixed precision
holds it (fp32 shards, bf16 all-gathered copies, fp32 reduce-scatter).

Recomputation (activation checkpointing), one per stage: ``none``; ``full``, every block
keeps only its inputs and runs its forward again in backward; ``every-K``, the blocks whose
position in the model is a multiple of K do. Losses and gradients do not change; only time
(one more forward of each recomputed block) and memory move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

NONE, FULL, EVERY = "none", "full", "every-"


class DpMode(StrEnum):
    REPLICATE = "replicate"
    SHARD_GRAD_OP = "shard_grad_op"
    FULL_SHARD = "full_shard"
    HYBRID_SHARD = "hybrid_shard"

    @property
    def sharded(self) -> bool:
        return self != DpMode.REPLICATE

    @property
    def reshards_after_forward(self) -> bool:
        """Whether a block's gathered parameters are freed after its forward (and gathered
        again for its backward)."""
        return self in (DpMode.FULL_SHARD, DpMode.HYBRID_SHARD)


def recompute_every(text: str) -> int:
    """K of a recomputation setting: 0 for ``none``, 1 for ``full``, K for ``every-K``.

    >>> [recompute_every(t) for t in ("none", "full", "every-3")]
    [0, 1, 3]
    """
    if text == NONE:
        return 0
    if text == FULL:
        return 1
    digits = text.removeprefix(EVERY)
    # At most 6 digits: no model has a million blocks, and int() of thousands of digits raises.
    plain = 0 < len(digits) <= 6 and digits.isascii() and digits.isdigit() and digits[0] != "0"
    if text.startswith(EVERY) and plain and int(digits) >= 2:
        return int(digits)
    raise ValueError(f"recompute {text[:40]!r} is not none, full or every-K with K >= 2")


def recompute_text(every: int) -> str:
    """The setting's name for K (0: none, 1: full).

    >>> recompute_text(0), recompute_text(1), recompute_text(4)
    ('none', 'full', 'every-4')
    """
    return NONE if every == 0 else FULL if every == 1 else f"{EVERY}{every}"


def recomputed(every: int, position: int) -> bool:
    """Whether the block at ``position`` in the model's block order recomputes."""
    return every > 0 and position % every == 0


def shard_group_size(mode: DpMode, nodes: Iterable[int]) -> int:
    """Ranks a stage's state is sharded over, given the nodes of its data-parallel group:
    the whole group, its ranks on one node under ``hybrid_shard``, 1 when replicated.

    >>> shard_group_size(DpMode.HYBRID_SHARD, [0, 0, 1, 1]), shard_group_size(DpMode.FULL_SHARD, [0, 0, 1, 1])
    (2, 4)
    """
    nodes = list(nodes)
    if not mode.sharded:
        return 1
    if mode == DpMode.HYBRID_SHARD:
        return max(Counter(nodes).values())
    return len(nodes)


def hybrid_shard_error(groups: Iterable[Iterable[int]]) -> str | None:
    """Why data-parallel groups on these nodes (one list of nodes per pipeline rank) cannot
    shard in nodes and replicate across them (None: they can). All groups must have one shape
    (nodes x ranks per node): the runtime lays them out as one mesh.

    >>> hybrid_shard_error([[0, 0, 1, 1], [2, 2, 3, 3]]) is None
    True
    >>> hybrid_shard_error([[0, 0, 1, 1], [2, 2, 2, 2]])
    'its data-parallel group lies on one node (full_shard shards it)'
    >>> hybrid_shard_error([[0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 3, 3, 4, 4, 5, 5]])
    "its stages' data-parallel groups differ in (nodes, ranks per node): [(2, 4), (4, 2)]"
    """
    shapes = set()
    for nodes in groups:
        per_node = Counter(nodes)
        if len(per_node) < 2:
            return "its data-parallel group lies on one node (full_shard shards it)"
        if len(set(per_node.values())) > 1:
            return f"its data-parallel group has unequal ranks per node ({dict(sorted(per_node.items()))})"
        if max(per_node.values()) < 2:
            return "its data-parallel group has one rank per node (nothing to shard in a node: replicate)"
        shapes.add((len(per_node), max(per_node.values())))
    if len(shapes) > 1:
        return f"its stages' data-parallel groups differ in (nodes, ranks per node): {sorted(shapes)}"
    return None
