"""Models made of named sub-networks trained against each other: recognised here only.

The zoo's GAN is such a model. Coarsening keeps its two networks whole, so its blocks are
``generator`` and ``discriminator`` (planner.capture.coarsen), and a plan records them once,
as its model's blocks (``plan.model.blocks``), whatever the source: the zoo's, or a user's
``py:`` factory with the same two children. Everything that treats such a model apart asks
`is_adversarial`: the search (which offers ``mp``, each network on its own ranks), the
pricer (which prices the GAN's own step, planner.cost.gan) and the runtime (which trains it
with its own engine, runtime.parallel.gan).
"""

from __future__ import annotations

from collections.abc import Iterable

GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
ADVERSARIAL = (GENERATOR, DISCRIMINATOR)
"""A GAN's networks, in the order a step first runs them."""


def is_adversarial(blocks: Iterable[str]) -> bool:
    """True when ``blocks`` (a graph's, a plan's or a stage's) hold both of a GAN's networks.

    >>> is_adversarial(["generator", "discriminator"]), is_adversarial(["embed", "head"])
    (True, False)
    """
    return set(ADVERSARIAL) <= set(blocks)
