"""The fallback capture: a coarser layer graph from module forward hooks.

Used when `torch.export` cannot capture a model (typically data-dependent control flow).
One node per call of a leaf module; FLOPs and saved bytes are read between a module's
pre- and post-hook; ops that run outside any leaf module are added to the next leaf call
(or the last one), so totals stay complete. Edges follow the tensors a module returns;
an input that no module produced is linked from the previous call. The model is run on
meta first; data-dependent branches cannot run there, so a model small enough to hold
(`CPU_FALLBACK_BYTES`) is run once more on the CPU, and the graph then describes the path
that this input took.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from planner.capture.graph import attach_params, node_attrs
from planner.capture.source import BuiltModel, ModelSource, build_model
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
        param_bytes = sum(p.numel() * p.element_size() for p in built.module.parameters())
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
    import torch
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode

    from planner.capture.trace import module_info

    model = built.module
    model.train()
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    param_storages |= {b.untyped_storage()._cdata for b in model.buffers()}
    graph = nx.DiGraph()
    stack: list[str] = []
    producer: dict[int, str] = {}  # storage -> node that returned it
    counted: set[int] = set()
    keep: list[Any] = []
    state: dict[str, Any] = {"flops": 0, "saved": 0, "last": None, "calls": {}}
    owned_params: set[int] = set()

    def tensors(value: Any) -> list[Any]:
        return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]

    for i, t in enumerate(tensors((built.args, built.kwargs))):
        name = f"input_{i}"
        graph.add_node(name, **node_attrs("input", "", "input", list(t.shape), t.numel() * t.element_size()))
        producer[t.untyped_storage()._cdata] = name

    counter = FlopCounterMode(display=False)

    def pack(t: Any) -> Any:
        key = t.untyped_storage()._cdata
        if key not in param_storages and key not in counted:
            counted.add(key)
            keep.append(t)
            state["saved"] += t.untyped_storage().nbytes()
        return t

    def pre(fqn: str, leaf: bool):
        def hook(module: Any, args: Any) -> None:
            stack.append(fqn)
            if leaf:
                state["start"] = (counter.get_total_flops(), state["saved"])
                state["inputs"] = tensors(args)

        return hook

    def post(fqn: str, leaf: bool):
        def hook(module: Any, args: Any, output: Any) -> None:
            stack.pop()
            if not leaf:
                return
            calls = state["calls"]
            calls[fqn] = calls.get(fqn, 0) + 1
            name = fqn if calls[fqn] == 1 else f"{fqn}#{calls[fqn]}"
            outs = tensors(output)
            first = outs[0] if outs else torch.empty(0)
            # Everything measured since the previous leaf call belongs to this one.
            flops = counter.get_total_flops() - state["flops"]
            saved = state["saved"] - state.get("saved_mark", 0)
            attrs = node_attrs(
                "op", fqn, type(module).__name__, list(first.shape), 0, module_stack=[*list(stack), fqn]
            )
            attrs["output_bytes"] = sum(t.numel() * t.element_size() for t in outs)
            attrs.update(fwd_flops=int(flops), saved_bytes=int(saved))
            params = [p for p in module.parameters(recurse=False) if id(p) not in owned_params]
            owned_params.update(id(p) for p in params)
            attrs["param_count"] = sum(p.numel() for p in params)
            attrs["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
            weights = sum(t.numel() * t.element_size() for t in module.parameters(recurse=False))
            inputs = sum(t.numel() * t.element_size() for t in state["inputs"])
            attrs.update(
                read_bytes=inputs + weights, weight_read_bytes=weights, write_bytes=attrs["output_bytes"]
            )
            attrs["params"] = [
                f"{fqn}.{n}" for n, p in module.named_parameters(recurse=False) if any(p is q for q in params)
            ]
            graph.add_node(name, **attrs)
            for t in state["inputs"]:
                src = producer.get(t.untyped_storage()._cdata, state["last"])
                if src is not None and src != name:
                    nbytes = t.numel() * t.element_size()
                    grad = nbytes if t.requires_grad else 0
                    if graph.has_edge(src, name):
                        graph.edges[src, name]["bytes"] += nbytes
                        graph.edges[src, name]["grad_bytes"] += grad
                    else:
                        graph.add_edge(src, name, bytes=nbytes, grad_bytes=grad)
            for t in outs:
                producer[t.untyped_storage()._cdata] = name
            state["flops"] = counter.get_total_flops()
            state["saved_mark"] = state["saved"]
            state["last"] = name

        return hook

    handles = []
    for fqn, module in model.named_modules():
        leaf = not any(True for _ in module.children())
        handles.append(module.register_forward_pre_hook(pre(fqn, leaf)))
        handles.append(module.register_forward_hook(post(fqn, leaf)))
    try:
        with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            try:
                out = model(*built.args, **built.kwargs)
            except Exception as exc:
                exc.module_fqn = stack[-1] if stack else ""  # type: ignore[attr-defined]
                raise
    finally:
        for h in handles:
            h.remove()
    last = state["last"]
    if last is None:
        raise TraceError("the model ran no module with parameters or ops")
    # Ops after the last leaf call (a final reshape at the root) belong to that call.
    graph.nodes[last]["fwd_flops"] += counter.get_total_flops() - state["flops"]
    graph.nodes[last]["saved_bytes"] += state["saved"] - state.get("saved_mark", 0)
    named = dict(model.named_parameters())
    unused = [n for n, p in named.items() if id(p) not in owned_params]
    if unused:
        attach_params(
            graph, [(n, named[n].numel(), named[n].numel() * named[n].element_size()) for n in unused]
        )
    graph.graph["param_bytes"] = {n: p.numel() * p.element_size() for n, p in named.items()}
    graph.graph["outputs"] = sorted({producer.get(t.untyped_storage()._cdata, last) for t in tensors(out)})
    graph.graph["order"] = list(graph.nodes)
    graph.graph["modules"] = module_info(model)
    return graph
