"""Which layer-graph node owns each parameter, and which parameters are tied.

Both tracers record parameters the same way, so a tied model prices the same whichever
captured it:
- a parameter is *owned* (counted in ``params``, ``param_count``, ``param_bytes``) by the
  first node that uses it, under its canonical name: the first of its names in
  ``named_parameters`` order (a tied weight has several);
- a tied parameter (one with several names, or used by several nodes) is listed in
  ``shared_params`` of every node that uses it: a stage holding a user but not the owner
  keeps a copy, and the copies' gradients are summed (see planner.cost.price);
- ``graph.graph['param_bytes']`` maps each canonical name to its bytes;
- parameters no node used (a branch not taken) go to the closest module's node
  (`planner.capture.graph.attach_params`).
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from planner.capture.graph import attach_params
from planner.capture.tensors import nbytes


class ParamOwners:
    """Records, node by node, the parameters each node uses; see the module docstring."""

    def __init__(self, model: Any) -> None:
        self.named = dict(model.named_parameters(remove_duplicate=False))
        # Every name a tensor has, canonical first (tied weights have several).
        self.aliases: dict[int, list[str]] = {}
        for name, p in self.named.items():
            self.aliases.setdefault(id(p), []).append(name)
        self.owner: dict[str, str] = {}  # canonical name -> node that counts it
        self.users: dict[str, set[str]] = {}  # canonical name -> nodes that use it

    def canonical(self, name: str) -> str:
        return self.aliases.get(id(self.named[name]), [name])[0]

    def use(self, graph: nx.DiGraph, node: str, name: str) -> None:
        """Node ``node`` uses the parameter called ``name``; the first user owns it."""
        fqn = self.canonical(name)
        self.users.setdefault(fqn, set()).add(node)
        if fqn in self.owner:
            return
        self.owner[fqn] = node
        p = self.named[name]
        attrs = graph.nodes[node]
        attrs["params"].append(fqn)
        attrs["param_count"] += p.numel()
        attrs["param_bytes"] += nbytes(p)

    def mark_shared(self, graph: nx.DiGraph) -> None:
        """List each tied parameter in ``shared_params`` of every node that uses it."""
        for fqn, users in self.users.items():
            names = self.aliases.get(id(self.named.get(fqn)), [fqn])
            if len(users) > 1 or len(names) > 1:
                for user in users:
                    graph.nodes[user]["shared_params"].append(fqn)

    def param_bytes(self) -> dict[str, int]:
        """``{canonical name: bytes}`` of every parameter, tied ones once."""
        return {names[0]: nbytes(self.named[names[0]]) for names in self.aliases.values()}

    def attach_unused(self, graph: nx.DiGraph) -> None:
        """Give the parameters no node used to the closest module's node."""
        unused = [names[0] for names in self.aliases.values() if names[0] not in self.owner]
        if unused:
            attach_params(graph, [(n, self.named[n].numel(), nbytes(self.named[n])) for n in unused])
