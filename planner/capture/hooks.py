"""The fallback capture: a coarser layer graph from module forward hooks.

Used when `torch.export` cannot capture a model (typically data-dependent control flow).
One node per call of a leaf module; FLOPs and saved bytes are read between a module's
pre- and post-hook; ops that run outside any leaf module are added to the next leaf call
(or the last one), so totals stay complete. Edges follow the tensors a module returns;
an input that no module produced is linked from the previous call. The model is run on
meta first; data-dependent branches cannot run there, so a model small enough to hold
(`CPU_FALLBACK_BYTES`) is run once more on the CPU, and the graph then describes the path
that this input took. Parameters, tied ones included, are recorded as the export capture
records them (`planner.capture.params`), so a tied model prices the same either way.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from planner.capture.graph import node_attrs
from planner.capture.modules import module_info
from planner.capture.params import ParamOwners
from planner.capture.source import BuiltModel, ModelSource, build_model
from planner.capture.tensors import SavedTensors, nbytes, storage_key, tensors
from planner.errors import TraceError

CPU_FALLBACK_BYTES = 2 * 1024**3  # materialise at most 2 GiB of weights for the CPU run


def trace_with_hooks(
    source: ModelSource, built: BuiltModel, reason: str, *, batch_size: int, dtype: str
) -> nx.DiGraph:
    """Trace ``built`` with module hooks; raise `TraceError` naming the module if that fails."""
    try:
        graph = _run(built)
        where = "meta"
    except Exception as meta_exc:
        param_bytes = sum(nbytes(p) for p in built.module.parameters())
        failing = getattr(meta_exc, "module_fqn", "")
        if param_bytes > CPU_FALLBACK_BYTES:
            raise TraceError(
                f"{source}: {reason}; module hooks on meta failed in {failing or '<root>'!r} "
                f"too, and {param_bytes / 2**30:.1f} GiB of weights is too large to run on the CPU"
            ) from None
        cpu = build_model(source, device="cpu", batch_size=batch_size, dtype=dtype)
        try:
            graph = _run(cpu)
        except Exception as exc:
            failing = getattr(exc, "module_fqn", "") or failing
            raise TraceError(
                f"{source}: {reason}; running it with module hooks failed in module "
                f"{failing or '<root>'!r} ({type(exc).__name__}: {exc})"
            ) from None
        where = "cpu"
    graph.graph["capture"] = f"module-hooks ({where})"
    graph.graph["warning"] = f"{reason}. Traced with module hooks instead: one node per module call, " + (
        "measured on meta."
        if where == "meta"
        else "measured on the CPU for the branch this input took (CPU attention counts 0 FLOPs)."
    )
    return graph


def _run(built: BuiltModel) -> nx.DiGraph:
    """Run ``built`` once with a hook on every module; one node per call of a leaf module."""
    from torch.utils.flop_counter import FlopCounterMode

    model = built.module
    model.train()
    calls = _LeafCalls(model, FlopCounterMode(display=False))
    calls.add_inputs(built.args, built.kwargs)
    out = calls.run(built.args, built.kwargs)
    return calls.finish(out)


class _LeafCalls:
    """The graph built while the model runs: one node per leaf-module call, in call order.

    A leaf call is named by its module's FQN, and ``fqn#2``, ``fqn#3``... when the module
    runs again. FLOPs and saved bytes are read as running totals, so whatever ran since
    the previous leaf call (ops in a parent's own forward) is that call's.
    """

    def __init__(self, model: Any, counter: Any) -> None:
        self.model = model
        self.counter = counter  # FlopCounterMode, entered by `run`
        self.params = ParamOwners(model)
        # Parameters and buffers are counted as parameters, never as saved activations.
        self.saved = SavedTensors({storage_key(t) for t in [*model.parameters(), *model.buffers()]})
        self.graph = nx.DiGraph()
        self.stack: list[str] = []  # FQNs of the modules whose forward is running
        self.producer: dict[tuple, str] = {}  # storage -> node that returned it last
        self.times_called: dict[str, int] = {}
        self.inputs: list[Any] = []  # tensors the running leaf module was called with
        self.flops_mark = 0  # running totals at the end of the previous leaf call
        self.saved_mark = 0
        self.last: str | None = None  # the previous leaf call's node

    def add_inputs(self, args: tuple, kwargs: dict) -> None:
        """One input node per tensor the model is called with: ``input_0``, ``input_1``..."""
        for i, t in enumerate(tensors((args, kwargs))):
            name = f"input_{i}"
            self.graph.add_node(name, **node_attrs("input", "", "input", list(t.shape), nbytes(t)))
            self.producer[storage_key(t)] = name

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Call the model under the hooks; an exception carries the failing module's FQN."""
        handles = []
        for fqn, module in self.model.named_modules():
            leaf = not any(True for _ in module.children())
            handles.append(module.register_forward_pre_hook(self._pre(fqn, leaf)))
            handles.append(module.register_forward_hook(self._post(fqn, leaf)))
        try:
            with self.counter, self.saved.hooks():
                try:
                    return self.model(*args, **kwargs)
                except Exception as exc:
                    exc.module_fqn = self.stack[-1] if self.stack else ""  # type: ignore[attr-defined]
                    raise
        finally:
            for h in handles:
                h.remove()

    def _pre(self, fqn: str, leaf: bool) -> Any:
        def hook(module: Any, args: Any) -> None:
            self.stack.append(fqn)
            if leaf:
                self.inputs = tensors(args)

        return hook

    def _post(self, fqn: str, leaf: bool) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            self.stack.pop()
            if leaf:
                self._record(fqn, module, output)

        return hook

    def _record(self, fqn: str, module: Any, output: Any) -> None:
        """Add the node of a leaf call that just returned, with everything measured since the last."""
        import torch

        n = self.times_called[fqn] = self.times_called.get(fqn, 0) + 1
        name = fqn if n == 1 else f"{fqn}#{n}"
        outs = tensors(output)
        first = outs[0] if outs else torch.empty(0)
        out_bytes = sum(nbytes(t) for t in outs)
        weights = sum(nbytes(t) for t in module.parameters(recurse=False))
        attrs = node_attrs(
            "op",
            fqn,
            type(module).__name__,
            list(first.shape),
            out_bytes,
            module_stack=[*self.stack, fqn],
            fwd_flops=int(self.counter.get_total_flops() - self.flops_mark),
            saved_bytes=int(self.saved.total - self.saved_mark),
            read_bytes=sum(nbytes(t) for t in self.inputs) + weights,
            weight_read_bytes=weights,
            write_bytes=out_bytes,
        )
        self.graph.add_node(name, **attrs)
        for param, _ in module.named_parameters(recurse=False):
            self.params.use(self.graph, name, f"{fqn}.{param}" if fqn else param)
        self._link_inputs(name)
        for t in outs:
            self.producer[storage_key(t)] = name
        # Kept until the trace ends: a freed output's address, reused by a later tensor,
        # would make this call the producer of a tensor it never returned.
        self.saved.keep_alive.extend(outs)
        self.flops_mark = self.counter.get_total_flops()
        self.saved_mark = self.saved.total
        self.last = name

    def _link_inputs(self, name: str) -> None:
        """An edge from each input's producer; an input no module returned comes from the last call."""
        for t in self.inputs:
            src = self.producer.get(storage_key(t), self.last)
            if src is None or src == name:
                continue
            sent = nbytes(t)
            grad = sent if t.requires_grad else 0
            if self.graph.has_edge(src, name):
                self.graph.edges[src, name]["bytes"] += sent
                self.graph.edges[src, name]["grad_bytes"] += grad
            else:
                self.graph.add_edge(src, name, bytes=sent, grad_bytes=grad)

    def finish(self, out: Any) -> nx.DiGraph:
        """Give trailing ops to the last call; mark tied parameters; name outputs and order."""
        last, graph = self.last, self.graph
        if last is None:
            raise TraceError("the model ran no module with parameters or ops")
        # Ops after the last leaf call (a final reshape at the root) belong to that call.
        graph.nodes[last]["fwd_flops"] += self.counter.get_total_flops() - self.flops_mark
        graph.nodes[last]["saved_bytes"] += self.saved.total - self.saved_mark
        self.params.attach_unused(graph)
        self.params.mark_shared(graph)
        graph.graph["param_bytes"] = self.params.param_bytes()
        graph.graph["outputs"] = sorted({self.producer.get(storage_key(t), last) for t in tensors(out)})
        graph.graph["order"] = list(graph.nodes)
        graph.graph["modules"] = module_info(self.model)
        return graph
