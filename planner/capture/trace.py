"""Trace a model into a costed layer graph on the meta device.

Capture is `torch.export.export` (plain `torch.fx.symbolic_trace` fails on current Hugging
Face models); the exported ATen graph is then run once more, op by op, on meta tensors that
require grad, to read torch's own numbers for each op:
- forward FLOPs from `torch.utils.flop_counter.FlopCounterMode`;
- bytes saved for backward from `torch.autograd.graph.saved_tensors_hooks`, de-duplicated
  by storage and excluding parameters (they are counted as parameters);
- output shapes and bytes, and the bytes each op reads and writes (for a roofline).
Nothing is allocated for weights, so a 70B-parameter model traces on a laptop.

If export cannot capture the model (data-dependent control flow), `planner.capture.hooks`
builds a coarser graph from module forward hooks and the graph says why in
``graph.graph['warning']``.

One trace runs at a time in a process. `torch.export` keeps the module hierarchy of the
export under way in a module global and clears it when any export ends, so an export that
finished in another thread made the first fail ("_EXPORT_MODULE_HIERARCHY must not be
None") and fall back to module hooks; transformers' lazy imports and pytree registrations
race the same way. The command line traces in one thread; the dashboard runs each browser
session's script in a thread of its own, which is where the two differed.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
import time
from collections.abc import Callable
from typing import Any

import networkx as nx

from planner.capture.graph import attach_params, node_attrs
from planner.capture.source import ModelSource, build_model, parse_source
from planner.errors import SourceError, TraceError

Progress = Callable[[int, int], None]
_TRACING = threading.Lock()


def _one_at_a_time(fn: Callable[..., nx.DiGraph]) -> Callable[..., nx.DiGraph]:
    @functools.wraps(fn)
    def serialised(*args: Any, **kwargs: Any) -> nx.DiGraph:
        with _TRACING:
            return fn(*args, **kwargs)

    return serialised


@_one_at_a_time
def trace(
    source: ModelSource | str,
    overrides: dict[str, Any] | None = None,
    *,
    batch_size: int = 1,
    dtype: str = "float32",
    progress: Progress | None = None,
) -> nx.DiGraph:
    """Trace ``source`` into a fine-grained layer graph (one node per ATen op).

    Parameters
    ----------
    source
        A `ModelSource` or a source string (then ``overrides`` apply).
    batch_size
        Samples in the example input; activation figures are for this many samples.
    progress
        Called as ``progress(done, total)`` while ops are measured.

    Raises
    ------
    SourceError
        The source cannot be built.
    TraceError
        Neither export nor module hooks could capture the model; names the module.
    """
    import torch

    if isinstance(source, str):
        source = parse_source(source, overrides)
    started = time.perf_counter()
    built = build_model(source, device="meta", batch_size=batch_size, dtype=dtype)
    model = built.module
    model.train()
    info = module_info(model)
    try:
        with _module_stack(model) as stack, _quiet_torch_logs():
            exported = torch.export.export(model, built.args, built.kwargs)
    except Exception as exc:  # export raises many types; all mean "not capturable"
        failing = stack[-1] if stack else ""
        from planner.capture.hooks import trace_with_hooks

        reason = (
            f"torch.export could not capture module {failing or '<root>'!r} "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
        graph = trace_with_hooks(source, built, reason, batch_size=batch_size, dtype=dtype)
    else:
        graph = _measure(exported, model, built.args, progress)
        graph.graph["capture"] = "torch.export"
    graph.graph.update(
        source=str(source),
        overrides=dict(source.overrides),
        batch_size=batch_size,
        dtype=dtype,
        input_shapes=[list(a.shape) for a in built.args],
        config=_jsonable(built.config),
        dataset=built.dataset,
        modules=info,
        trace_seconds=round(time.perf_counter() - started, 3),
    )
    return graph


def module_info(model: Any) -> dict[str, dict[str, Any]]:
    """``{fqn: {"type": class name, "children": [child fqns]}}`` for every module."""
    info: dict[str, dict[str, Any]] = {}
    for fqn, module in model.named_modules():
        children = [f"{fqn}.{n}" if fqn else n for n, _ in module.named_children()]
        info[fqn] = {"type": type(module).__name__, "children": children}
    return info


class _quiet_torch_logs:
    """Silence torch's own warnings and graph dumps while exporting.

    A failed export prints the partial graph and logs guard warnings; the failure is
    reported by us, once, naming the module.
    """

    names = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo")

    def __enter__(self) -> None:
        import contextlib
        import io
        import logging

        self.saved = {n: logging.getLogger(n).level for n in self.names}
        for n in self.names:
            logging.getLogger(n).setLevel(logging.CRITICAL)
        self.redirects = contextlib.ExitStack()
        self.redirects.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self.redirects.enter_context(contextlib.redirect_stderr(io.StringIO()))

    def __exit__(self, *exc: Any) -> None:
        import logging

        self.redirects.close()
        for n, level in self.saved.items():
            logging.getLogger(n).setLevel(level)


class _module_stack:
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


def _measure(exported: Any, model: Any, args: tuple, progress: Progress | None) -> nx.DiGraph:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    gm = exported.graph_module
    sig = exported.graph_signature
    named_params = dict(model.named_parameters(remove_duplicate=False))
    named_buffers = dict(model.named_buffers(remove_duplicate=False))
    # Every name a tensor has (tied weights have several), and storages not to count as saved.
    aliases: dict[int, list[str]] = {}
    for name, p in named_params.items():
        aliases.setdefault(id(p), []).append(name)
    param_storages = {_storage_key(t) for t in [*named_params.values(), *named_buffers.values()]}

    # Placeholders, in order: parameters, buffers, constants, then the user's inputs.
    feeds: dict[str, Any] = {}
    placeholder_kind: dict[str, tuple[str, str]] = {}
    user_args = iter(args)
    for spec in sig.input_specs:
        name = spec.arg.name
        kind = spec.kind.name
        if kind == "PARAMETER":
            p = named_params[spec.target]
            feeds[name] = p.detach().requires_grad_(p.requires_grad)
            placeholder_kind[name] = ("param", spec.target)
        elif kind == "BUFFER":
            feeds[name] = named_buffers[spec.target]
            placeholder_kind[name] = ("buffer", spec.target)
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            feeds[name] = exported.constants[spec.target]
            placeholder_kind[name] = ("constant", spec.target)
        elif hasattr(spec.arg, "value"):  # a constant user input, such as use_cache=False
            feeds[name] = spec.arg.value
        else:
            t = next(user_args)
            feeds[name] = t
            placeholder_kind[name] = ("input", name)
    # A feed tensor keeps its identity so parameters can be recognised by storage.
    feed_params = {name: feeds[name] for name, k in placeholder_kind.items() if k[0] == "param"}
    param_storages |= {_storage_key(t) for t in feed_params.values()}

    graph = nx.DiGraph()
    values: dict[str, Any] = {}
    first_saver: dict[tuple, tuple[int, str]] = {}  # storage -> (id, node that counted it)
    producer_of: dict[tuple, str] = {}  # storage -> node whose output it is
    keep_alive: list[Any] = []
    owner_of_param: dict[str, str] = {}
    param_users: dict[str, set[str]] = {}
    current: dict[str, Any] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key in param_storages:
            return t
        nbytes = t.untyped_storage().nbytes()
        if key not in first_saver:
            first_saver[key] = (len(first_saver), current["node"])
            keep_alive.append(t)  # a freed storage's address could be reused by a later one
            current["saved"] += nbytes
        elif first_saver[key][1] != current["node"]:
            # Kept again by a later op: one copy here, but a second one on a stage that
            # receives the tensor over a cut (see planner.capture.coarsen, resaved_from).
            storage_id, first = first_saver[key]
            current["resaved"].append([storage_id, producer_of.get(key, first), first, nbytes])
        return t

    nodes = list(gm.graph.nodes)
    total = len(nodes)
    output_node = None
    for i, node in enumerate(nodes):
        if progress and i % 64 == 0:
            progress(i, total)
        if node.op == "placeholder":
            values[node.name] = feeds[node.name]
            kind = placeholder_kind.get(node.name, ("constant", ""))
            if kind[0] == "input":
                t = feeds[node.name]
                graph.add_node(node.name, **node_attrs("input", "", "input", list(t.shape), _nbytes(t)))
                producer_of.setdefault(_storage_key(t), node.name)
            continue
        if node.op == "output":
            output_node = node
            continue
        if node.op == "get_attr":  # a sub-graph of a higher-order op (autocast, set_grad)
            values[node.name] = _fetch_attr(gm, node.target)
            continue
        if node.op != "call_function":
            raise TraceError(f"unexpected {node.op} node {node.name} in the exported graph")
        fn_args = torch.fx.node.map_arg(node.args, lambda n: values[n.name])
        fn_kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n.name])
        current.update(saved=0, resaved=[], node=node.name)
        with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
            if _is_sdpa(node.target):
                out, flops = _run_attention(fn_args, fn_kwargs)
            else:
                with FlopCounterMode(display=False) as counter:
                    out = node.target(*fn_args, **fn_kwargs)
                flops = counter.get_total_flops()
        values[node.name] = out
        if out is None:
            continue  # assertions and other ops without a value
        stack = [entry[0] for entry in node.meta.get("nn_module_stack", {}).values()]
        in_tensors = _tensors([fn_args, fn_kwargs])
        out_tensors = _tensors(out)
        is_view = node.target is operator.getitem or _aliases(out_tensors, in_tensors)
        first = out_tensors[0] if out_tensors else None
        attrs = node_attrs(
            "op",
            stack[-1] if stack else "",
            _op_name(node.target),
            list(first.shape) if first is not None else [],
            sum(_nbytes(t) for t in out_tensors),
            module_stack=stack,
            fwd_flops=int(flops),
            saved_bytes=int(current["saved"]),
            resaved=current["resaved"],
            read_bytes=0 if is_view else sum(_nbytes(t) for t in in_tensors),
            weight_read_bytes=0 if is_view else _weight_bytes(node, placeholder_kind, values),
            write_bytes=0 if is_view else sum(_nbytes(t) for t in out_tensors),
        )
        graph.add_node(node.name, **attrs)
        for t in out_tensors:
            producer_of.setdefault(_storage_key(t), node.name)
        for inp in node.all_input_nodes:
            kind = placeholder_kind.get(inp.name)
            if kind and kind[0] == "param":
                fqn = _canonical(aliases, named_params[kind[1]], kind[1])
                param_users.setdefault(fqn, set()).add(node.name)
                if fqn not in owner_of_param:
                    owner_of_param[fqn] = node.name
                    p = named_params[kind[1]]
                    graph.nodes[node.name]["params"].append(fqn)
                    graph.nodes[node.name]["param_count"] += p.numel()
                    graph.nodes[node.name]["param_bytes"] += _nbytes(p)
            elif kind and kind[0] in ("buffer", "constant"):
                if kind[1] not in owner_of_param:
                    owner_of_param[kind[1]] = node.name
                    graph.nodes[node.name]["buffer_bytes"] += sum(
                        _nbytes(t) for t in _tensors(values[inp.name])
                    )
            elif inp.name in graph:
                sent = _tensors(values[inp.name])
                graph.add_edge(
                    inp.name,
                    node.name,
                    bytes=sum(_nbytes(t) for t in sent),
                    # What flows back in backward: only float tensors that require grad.
                    grad_bytes=sum(_nbytes(t) for t in sent if t.requires_grad),
                )
    # Tied parameters: used by several nodes; owned (counted) once, marked on every user.
    for fqn, users in param_users.items():
        names = aliases.get(id(named_params.get(fqn)), [fqn])
        if len(users) > 1 or len(names) > 1:
            for user in users:
                graph.nodes[user]["shared_params"].append(fqn)
    graph.graph["param_bytes"] = {names[0]: _nbytes(named_params[names[0]]) for names in aliases.values()}
    outputs = [n.name for n in (output_node.all_input_nodes if output_node else []) if n.name in graph]
    graph.graph["outputs"] = outputs
    graph.graph["order"] = list(graph.nodes)  # insertion order = execution order
    missing = _unused_params(named_params, aliases, owner_of_param)
    if missing:
        attach_params(graph, [(n, named_params[n].numel(), _nbytes(named_params[n])) for n in missing])
    if progress:
        progress(total, total)
    return graph


def _run_attention(args: tuple, kwargs: dict) -> tuple[Any, int]:
    """Run scaled-dot-product attention as the fused kernel does; count the math path's FLOPs.

    On meta, SDPA falls back to the math path, which saves the (T x T) attention matrix for
    backward; the fused kernels that really run (flash on CPU and CUDA) save only q, k, v,
    the output and the log-sum-exp. So the output and saved tensors come from the CPU flash
    op's meta kernel, and FLOPs from the math path without grad (the flop counter sees 0 in
    the fused CPU op).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    q, k, v = bound["query"], bound["key"], bound["value"]
    mask = bound.get("attn_mask")
    dropout_p = bound.get("dropout_p", 0.0)
    causal = bool(bound.get("is_causal", False))
    scale = bound.get("scale")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=causal,
            scale=scale,
            enable_gqa=bool(bound.get("enable_gqa", False)),
        )
    flops = counter.get_total_flops()
    if dropout_p:  # the flash op has no dropout: keep the math path's saved tensors
        return F.scaled_dot_product_attention(*args, **kwargs), flops
    if bound.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        reps = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(reps, dim=-3), v.repeat_interleave(reps, dim=-3)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -math.inf)
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale
    )
    return out[0], flops


def _weight_bytes(node: Any, placeholder_kind: dict, values: dict) -> int:
    """Bytes of parameters, buffers and constants an op reads: fixed, whatever the batch."""
    return sum(
        _nbytes(t)
        for inp in node.all_input_nodes
        if placeholder_kind.get(inp.name, ("",))[0] in ("param", "buffer", "constant")
        for t in _tensors(values[inp.name])
    )


def _fetch_attr(gm: Any, target: str) -> Any:
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _is_sdpa(target: Any) -> bool:
    return "scaled_dot_product_attention" in str(target)


def _unpack(t: Any) -> Any:
    return t


def _storage_key(t: Any) -> tuple:
    return (t.device.type, t.untyped_storage()._cdata)


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


def _tensors(value: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [x for x in tree_leaves(value) if isinstance(x, torch.Tensor)]


def _aliases(outs: list[Any], ins: list[Any]) -> bool:
    """True when an output shares storage with an input: a view, which moves no bytes."""
    keys = {_storage_key(t) for t in ins}
    return bool(outs) and all(_storage_key(t) in keys for t in outs)


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


def _canonical(aliases: dict[int, list[str]], param: Any, name: str) -> str:
    return aliases.get(id(param), [name])[0]


def _unused_params(named: dict, aliases: dict[int, list[str]], owners: dict) -> list[str]:
    seen: set[int] = set()
    missing = []
    for name, p in named.items():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if aliases[id(p)][0] not in owners:
            missing.append(name)
    return missing


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    return str(value)


__all__ = ["SourceError", "TraceError", "module_info", "trace"]
