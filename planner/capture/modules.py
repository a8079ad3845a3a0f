"""The model's module tree, as the layer graph records it and as it runs.

`module_info` is what ``graph.graph['modules']`` holds and what planner.capture.coarsen
expands into blocks; `running_modules` names the module a failing forward was in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def module_info(model: Any) -> dict[str, dict[str, Any]]:
    """``{fqn: {"type": class name, "children": [child fqns]}}`` for every module."""
    info: dict[str, dict[str, Any]] = {}
    for fqn, module in model.named_modules():
        children = [f"{fqn}.{n}" if fqn else n for n, _ in module.named_children()]
        info[fqn] = {"type": type(module).__name__, "children": children}
    return info


class running_modules:
    """Context manager: the FQNs of the modules whose forward is running, outermost first.

    Non-strict export runs the model's Python code, so when it raises, the stack names the
    module it was in.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.stack: list[str] = []
        self.handles: list[Any] = []

    def __enter__(self) -> list[str]:
        for fqn, module in self.model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._push(fqn)))
            self.handles.append(module.register_forward_hook(self._pop))
        return self.stack

    def _push(self, fqn: str) -> Callable[..., None]:
        def hook(module: Any, args: Any) -> None:
            self.stack.append(fqn)

        return hook

    def _pop(self, module: Any, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
