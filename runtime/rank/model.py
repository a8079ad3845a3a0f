"""A plan's model on the meta device, the part a rank holds made real; its tied parameters
and its optimizer.

Every rank builds the whole model from the plan's source and overrides on ``meta`` (no
memory for weights), cuts its part there, and makes only that part real
(runtime.rank.materialise): initial values depend only on (seed, FQN), so every rank and
the single-process reference get the same values without any broadcast. A model that
cannot be built faithfully on meta is built whole on the CPU once, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from planner.capture.source import BuiltModel, ModelSource, build_model, parse_source
from planner.errors import MetaBuildError, PlanError, SourceError
from planner.plan import Plan
from runtime.rank.materialise import Initialiser, materialise, materialise_parts, why_not_meta


def return_logits(model: nn.Module) -> nn.Module:
    """Make a Hugging Face causal LM's forward return the logits tensor, not a ModelOutput.

    The class is swapped for a subclass rather than the model wrapped: a wrapper would put
    a prefix on every FQN, and the plan's stages are cut at the unwrapped model's FQNs.
    """
    base = type(model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return base.forward(self, input_ids=input_ids, use_cache=False).logits

    model.__class__ = type(base.__name__, (base,), {"forward": forward})
    return model


@dataclass
class FullModel:
    module: nn.Module
    """The whole model in train mode: on meta, unless it could not be built there."""
    config: dict[str, Any]
    example_args: tuple[torch.Tensor, ...]
    """One sample's example inputs (batch 1), for tracing the pipeline split."""
    init: Initialiser

    @property
    def on_meta(self) -> bool:
        return all(p.is_meta for p in self.module.parameters())

    def materialise(self, part: nn.Module, device: torch.device | str, prefix: str = "") -> nn.Module:
        """``part`` (the whole module, or one cut from it keeping its FQNs, or the module at
        FQN ``prefix``) real on ``device``, with its initial values."""
        return materialise(part, self.init, device, prefix)

    def materialise_parts(self, parts: list[tuple[nn.Module, str]], device: torch.device | str) -> None:
        """Several (module, its FQN) real at once, a tensor they share made once."""
        materialise_parts(parts, self.init, device)


def build_full_model(plan: Plan) -> FullModel:
    """The plan's whole model on the meta device (on the CPU if it cannot be built there,
    with a warning), in train mode; `FullModel.materialise` makes a part of it real."""
    source = parse_source(plan.model.source, plan.model.overrides)
    seed = plan.training.seed
    built, reason = _build_on_meta(source, seed)
    if reason is not None:
        built = _build_on_cpu(source, seed, reason)
    module = built.module
    if source.kind == "hf":
        if built.dataset is None:
            raise PlanError(f"model.source {source}: only causal language models can be trained")
        module = return_logits(module)
    module.train()
    init = Initialiser(source.kind, module, seed)
    if reason is not None and source.kind != "zoo":  # the zoo's build already applies its rule
        init([(module, "")])
    args = tuple(built.args)
    dtype = getattr(torch, plan.training.precision.recipe.weights)
    if dtype != torch.float32:  # pure bf16; on meta, free; the pipeline's split traces this dtype
        module.to(dtype)
        args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    return FullModel(module, built.config, args, init)


def model_config(plan: Plan) -> dict[str, Any]:
    """The model's resolved configuration, from a build on the meta device (no memory)."""
    source = parse_source(plan.model.source, plan.model.overrides)
    built, _ = _build_on_meta(source, plan.training.seed)
    return built.config if built is not None else dict(source.overrides)


def _build_on_meta(source: ModelSource, seed: int) -> tuple[BuiltModel | None, str | None]:
    """The model on meta, and why it cannot be made real from there (None: it can)."""
    try:
        built = build_model(source, device="meta", batch_size=1, seed=seed)
    except MetaBuildError as exc:
        return None, str(exc).partition(": ")[2]
    except SourceError as exc:
        raise PlanError(f"model.source: {exc}") from None
    return built, why_not_meta(source.kind, built.module)


def _build_on_cpu(source: ModelSource, seed: int, reason: str) -> BuiltModel:
    built = build_model(source, device="cpu", batch_size=1, seed=seed)
    params = {id(p): p for p in built.module.parameters()}.values()
    count, nbytes = sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)
    warnings.warn(
        f"{source} is built whole on the CPU, not on the meta device: {reason}. Every rank holds "
        f"all {count:,} parameters ({nbytes / 2**20:,.1f} MiB) while it builds, before it keeps its part.",
        stacklevel=2,
    )
    return built


def shared_parameter_groups(module: nn.Module) -> list[list[str]]:
    """FQNs that name the same parameter (a tied embedding and head), one list per tensor.

    >>> lin = nn.Linear(2, 2)
    >>> seq = nn.Sequential(lin, nn.ReLU(), lin)
    >>> shared_parameter_groups(seq)
    [['0.weight', '2.weight'], ['0.bias', '2.bias']]
    """
    by_tensor: dict[int, list[str]] = {}
    for fqn, param in module.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(fqn)
    return [fqns for fqns in by_tensor.values() if len(fqns) > 1]


def unique_parameters(modules: list[nn.Module]) -> dict[str, nn.Parameter]:
    """Parameters of several modules by FQN, each tensor once (stages on one rank may share)."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module in modules:
        for fqn, param in module.named_parameters():
            if id(param) not in seen:
                seen.add(id(param))
                out[fqn] = param
    return out


def keep_gradients(params: list[nn.Parameter]) -> None:
    """Give every parameter without one a zeroed gradient; steps then zero it
    (``zero_grad(set_to_none=False)``) instead of freeing it.

    Gradients allocated afresh in every backward land among that step's activations, and
    the holes they leave when freed kept a rank 4-7 MB above its tensors here (glibc's
    heap); allocated before the step's first activation, they sit below them. Engines call
    this at the start of every step (a no-op once the gradients exist). A parameter no loss
    reaches is then stepped with a zero gradient (weight decay applies) where a freed one
    would be skipped: the built-in models have none.
    """
    for param in params:
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)


def flat_gradients(params: list[nn.Parameter], flat: torch.Tensor | None) -> torch.Tensor:
    """`keep_gradients`, with every gradient a view of one flat buffer (returned).

    The replicas' all-reduce then runs on the buffer in place: flattening the gradients
    into a fresh tensor held a second copy of them at the peak (every hybrid rank measured
    that much above its prediction). ``flat`` is the buffer of the previous step, kept while
    every gradient is still a view of it; a checkpoint's load frees the gradients, and a new
    buffer is made. The parameters share one dtype (the plan's).
    """
    trained = [p for p in params if p.requires_grad]
    if not trained:  # a stage of parameter-free blocks: nothing to reduce
        return torch.zeros(0)
    storage = flat.untyped_storage().data_ptr() if flat is not None else None
    if storage is not None and all(
        p.grad is not None and p.grad.untyped_storage().data_ptr() == storage for p in trained
    ):
        return flat
    flat = torch.zeros(sum(p.numel() for p in trained), dtype=trained[0].dtype, device=trained[0].device)
    offset = 0
    for param in trained:
        view = flat[offset : offset + param.numel()].view_as(param)
        if param.grad is not None:
            view.copy_(param.grad)
        param.grad = view
        offset += param.numel()
    return flat


OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
"""The plan's optimizer over the parameters given (`make_optimizer` with the plan bound):
what runtime.parallel.parallelize hands every engine, so it is built in one place."""


def make_optimizer(plan: Plan, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The plan's optimizer (``training.optimizer``) over ``params``."""
    o = plan.training.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    # foreach=False: one code path (the per-tensor loop, CPU's default anyway) in every
    # process, so a stage's update and the full model's match bit for bit on GPUs too.
    return cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, foreach=False)
