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

from planner.capture.attention import is_sdpa, run_attention
from planner.capture.coarsen import block_fqns
from planner.capture.graph import node_attrs
from planner.capture.hooks import trace_with_hooks
from planner.capture.modules import module_info, running_modules
from planner.capture.params import ParamOwners
from planner.capture.source import BuiltModel, ModelSource, build_model, parse_source
from planner.capture.tensors import SavedTensors, is_view_of, nbytes, storage_key, tensors
from planner.capture.tp_roles import annotate_tp_roles
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
    if isinstance(source, str):
        source = parse_source(source, overrides)
    started = time.perf_counter()
    built = build_model(source, device="meta", batch_size=batch_size, dtype=dtype)
    built.module.train()
    info = module_info(built.module)
    graph = _capture(source, built, batch_size=batch_size, dtype=dtype, progress=progress)
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
    annotate_tp_roles(graph, built.module, block_fqns(info))
    return graph


def _capture(
    source: ModelSource, built: BuiltModel, *, batch_size: int, dtype: str, progress: Progress | None
) -> nx.DiGraph:
    """Export and measure ``built``; where export cannot capture it, fall back to module hooks."""
    import torch

    try:
        with running_modules(built.module) as stack, _quiet_torch_logs():
            exported = torch.export.export(built.module, built.args, built.kwargs)
    except Exception as exc:  # export raises many types; all mean "not capturable"
        failing = stack[-1] if stack else ""
        reason = (
            f"torch.export could not capture module {failing or '<root>'!r} "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
        return trace_with_hooks(source, built, reason, batch_size=batch_size, dtype=dtype)
    graph = _measure(exported, built.module, built.args, progress)
    graph.graph["capture"] = "torch.export"
    return graph


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


def _measure(exported: Any, model: Any, args: tuple, progress: Progress | None) -> nx.DiGraph:
    """Run the exported ATen graph op by op on meta tensors; one layer-graph node per op."""
    run = _OpByOp(exported, model, args)
    nodes = list(exported.graph_module.graph.nodes)
    for i, node in enumerate(nodes):
        if progress and i % 64 == 0:
            progress(i, len(nodes))
        run.visit(node)
    graph = run.finish()
    if progress:
        progress(len(nodes), len(nodes))
    return graph


def _bind_placeholders(
    exported: Any, named_params: dict[str, Any], named_buffers: dict[str, Any], args: tuple
) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """What each placeholder of the exported graph is fed, and what it is.

    Returns ``(feeds, kinds)``: ``feeds[name]`` is the value, ``kinds[name]`` is
    ``("param" | "buffer" | "constant", target)`` or ``("input", name)``; a constant user
    input (such as ``use_cache=False``) has a feed but no kind.
    """
    feeds: dict[str, Any] = {}
    kinds: dict[str, tuple[str, str]] = {}
    user_args = iter(args)
    # Placeholders, in order: parameters, buffers, constants, then the user's inputs.
    for spec in exported.graph_signature.input_specs:
        name = spec.arg.name
        kind = spec.kind.name
        if kind == "PARAMETER":
            p = named_params[spec.target]
            feeds[name] = p.detach().requires_grad_(p.requires_grad)
            kinds[name] = ("param", spec.target)
        elif kind == "BUFFER":
            feeds[name] = named_buffers[spec.target]
            kinds[name] = ("buffer", spec.target)
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            feeds[name] = exported.constants[spec.target]
            kinds[name] = ("constant", spec.target)
        elif hasattr(spec.arg, "value"):  # a constant user input, such as use_cache=False
            feeds[name] = spec.arg.value
        else:
            t = next(user_args)
            feeds[name] = t
            kinds[name] = ("input", name)
    return feeds, kinds


class _OpByOp:
    """One run of an exported graph, node by node: the values so far and the graph built."""

    def __init__(self, exported: Any, model: Any, args: tuple) -> None:
        self.gm = exported.graph_module
        self.params = ParamOwners(model)
        buffers = dict(model.named_buffers(remove_duplicate=False))
        self.feeds, self.kinds = _bind_placeholders(exported, self.params.named, buffers, args)
        # Parameters and buffers are counted as parameters, never as saved activations; a
        # parameter's feed is a detached alias, recognised by its storage.
        exclude = {storage_key(t) for t in [*self.params.named.values(), *buffers.values()]}
        exclude |= {storage_key(self.feeds[n]) for n, k in self.kinds.items() if k[0] == "param"}
        self.saved = SavedTensors(exclude)
        self.graph = nx.DiGraph()
        self.values: dict[str, Any] = {}
        self.counted_buffers: set[str] = set()  # buffers and constants, counted at their first user
        self.param_views: dict[str, str] = {}  # node -> the parameter it is a view of (a transpose)
        self.cast_params: set[str] = set()  # read by an op autocast runs in 16 bits
        self.output_node: Any = None

    def visit(self, node: Any) -> None:
        if node.op == "placeholder":
            self._placeholder(node)
        elif node.op == "output":
            self.output_node = node
        elif node.op == "get_attr":  # a sub-graph of a higher-order op (autocast, set_grad)
            self.values[node.name] = _fetch_attr(self.gm, node.target)
        elif node.op == "call_function":
            self._call(node)
        else:
            raise TraceError(f"unexpected {node.op} node {node.name} in the exported graph")

    def _placeholder(self, node: Any) -> None:
        """Feed the placeholder; only a user input becomes a node (weights are node attributes)."""
        t = self.values[node.name] = self.feeds[node.name]
        if self.kinds.get(node.name, ("constant", ""))[0] == "input":
            self.graph.add_node(node.name, **node_attrs("input", "", "input", list(t.shape), nbytes(t)))
            self.saved.producer_of.setdefault(storage_key(t), node.name)

    def _call(self, node: Any) -> None:
        """Run one op, record it as a node and link it to what it read."""
        import torch

        fn_args = torch.fx.node.map_arg(node.args, lambda n: self.values[n.name])
        fn_kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self.values[n.name])
        out, flops, saved, resaved = self._run_op(node, fn_args, fn_kwargs)
        self.values[node.name] = out
        if out is None:
            return  # assertions and other ops without a value
        in_tensors = tensors([fn_args, fn_kwargs])
        out_tensors = tensors(out)
        attrs = self._op_attrs(node, in_tensors, out_tensors, flops, saved, resaved)
        self.graph.add_node(node.name, **attrs)
        for t in out_tensors:
            self.saved.producer_of.setdefault(storage_key(t), node.name)
        self._note_casts(node, is_view=attrs["read_bytes"] == 0 and attrs["write_bytes"] == 0)
        self._link_inputs(node)

    def _note_casts(self, node: Any, *, is_view: bool) -> None:
        """Which parameters autocast would copy to 16 bits: those an op on its lower-precision
        list reads, directly or through a view (the transpose before a matrix product)."""
        params = {
            self.kinds[inp.name][1] if inp.name in self.kinds else self.param_views[inp.name]
            for inp in node.all_input_nodes
            if self.kinds.get(inp.name, ("",))[0] == "param" or inp.name in self.param_views
        }
        if not params:
            return
        if _op_name(node.target) in AUTOCAST_OPS:
            self.cast_params.update(self.params.canonical(p) for p in params)
        elif is_view and len(params) == 1:
            self.param_views[node.name] = params.pop()

    def _run_op(self, node: Any, fn_args: Any, fn_kwargs: Any) -> tuple[Any, int, int, list]:
        """``(output, FLOPs, bytes newly saved for backward, tensors saved again)`` of one op."""
        from torch.utils.flop_counter import FlopCounterMode

        self.saved.node, self.saved.resaved = node.name, []
        before = self.saved.total
        with self.saved.hooks():
            if is_sdpa(node.target):
                out, flops = run_attention(fn_args, fn_kwargs)
            else:
                with FlopCounterMode(display=False) as counter:
                    out = node.target(*fn_args, **fn_kwargs)
                flops = counter.get_total_flops()
        return out, flops, self.saved.total - before, self.saved.resaved

    def _op_attrs(
        self, node: Any, ins: list[Any], outs: list[Any], flops: int, saved: int, resaved: list
    ) -> dict[str, Any]:
        """The op's node attributes; a view reads and writes nothing."""
        stack = [entry[0] for entry in node.meta.get("nn_module_stack", {}).values()]
        is_view = node.target is operator.getitem or is_view_of(outs, ins)
        first = outs[0] if outs else None
        return node_attrs(
            "op",
            stack[-1] if stack else "",
            _op_name(node.target),
            list(first.shape) if first is not None else [],
            sum(nbytes(t) for t in outs),
            module_stack=stack,
            fwd_flops=int(flops),
            saved_bytes=int(saved),
            resaved=resaved,
            read_bytes=0 if is_view else sum(nbytes(t) for t in ins),
            weight_read_bytes=0 if is_view else self._weight_bytes(node),
            write_bytes=0 if is_view else sum(nbytes(t) for t in outs),
        )

    def _weight_bytes(self, node: Any) -> int:
        """Bytes of parameters, buffers and constants an op reads: fixed, whatever the batch."""
        return sum(
            nbytes(t)
            for inp in node.all_input_nodes
            if self.kinds.get(inp.name, ("",))[0] in ("param", "buffer", "constant")
            for t in tensors(self.values[inp.name])
        )

    def _link_inputs(self, node: Any) -> None:
        """Weights become the op's (first user owns them); activations become edges."""
        for inp in node.all_input_nodes:
            kind = self.kinds.get(inp.name)
            if kind and kind[0] == "param":
                self.params.use(self.graph, node.name, kind[1])
            elif kind and kind[0] in ("buffer", "constant"):
                if kind[1] not in self.counted_buffers:
                    self.counted_buffers.add(kind[1])
                    self.graph.nodes[node.name]["buffer_bytes"] += sum(
                        nbytes(t) for t in tensors(self.values[inp.name])
                    )
            elif inp.name in self.graph:
                sent = tensors(self.values[inp.name])
                self.graph.add_edge(
                    inp.name,
                    node.name,
                    bytes=sum(nbytes(t) for t in sent),
                    # What flows back in backward: only float tensors that require grad.
                    grad_bytes=sum(nbytes(t) for t in sent if t.requires_grad),
                )

    def finish(self) -> nx.DiGraph:
        """Mark tied parameters, name the outputs and the order, place unused parameters."""
        graph = self.graph
        self.params.mark_shared(graph)
        graph.graph["param_bytes"] = self.params.param_bytes()
        graph.graph["cast_params"] = sorted(self.cast_params)
        returned = self.output_node.all_input_nodes if self.output_node else []
        graph.graph["outputs"] = [n.name for n in returned if n.name in graph]
        graph.graph["order"] = list(graph.nodes)  # insertion order = execution order
        self.params.attach_unused(graph)
        return graph


def _fetch_attr(gm: Any, target: str) -> Any:
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


AUTOCAST_OPS = frozenset(
    {"linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "addbmm", "conv1d", "conv2d", "conv3d",
     "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "prelu"}
)  # fmt: skip
"""ATen ops on torch.autocast's lower-precision list (CPU and CUDA alike) that read weights."""


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


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
