"""A model built on the meta device, made real part by part: only what a rank runs.

A rank builds the plan's model on ``meta`` (no memory for weights), cuts its stages there,
and gives real storage only to the parameters and buffers of its own part (`materialise`,
which does `to_empty`'s job tensor by tensor so that tied weights stay tied). Each then gets
its initial value from (seed, FQN) alone, so every rank and the single-process reference
agree without a broadcast:

- zoo models: `planner.zoo.init.init_weights`, one generator per parameter FQN;
- Hugging Face models: their own ``_init_weights``, called module by module in the order
  HF's ``initialize_weights`` calls it (children first, so a block's scaled init of its
  output projection wins), with torch's generator seeded from (seed, module FQN);
- ``py:`` factories: each module's ``reset_parameters()`` (torch's convention) seeded from
  (seed, module FQN); the parameters of a module without one get the zoo's rule.

A part's values are found by binding its tensors into the full meta model (every name of a
tied weight to one tensor) and running the whole model's init there: writes to meta
tensors cost nothing, so the part's values are exactly those a full build would give them.

Buffers are what a module computes when it is built (a rotary table); on meta that value is
lost. HF's init recomputes rotary embeddings' and batch norms' buffers, ``reset_parameters``
those of its own module. A model with any other buffer, or a factory that fails on meta,
cannot be built there faithfully: `why_not_meta` says so, and the rank builds it whole on
the CPU once (with a warning that says what it costs), its parameters then set by the same
rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from planner.zoo.init import draw_initial_value, init_weights, parameter_seed


class Initialiser:
    """The initial values of a model's parameters and buffers, from (seed, FQN) alone."""

    def __init__(self, kind: str, full: nn.Module, seed: int) -> None:
        self.kind, self.full, self.seed = kind, full, seed
        self._slots = {
            _join(prefix, name): (module, attr)
            for prefix, module in full.named_modules(remove_duplicate=False)
            for attr in ("_parameters", "_buffers")
            for name in getattr(module, attr)
        }
        self._aliases: dict[str, list[str]] = {}
        by_tensor: dict[int, list[str]] = {}
        for fqn, param in full.named_parameters(remove_duplicate=False):
            by_tensor.setdefault(id(param), []).append(fqn)
        for fqns in by_tensor.values():
            for fqn in fqns:
                self._aliases[fqn] = fqns

    def __call__(self, parts: list[tuple[nn.Module, str]], only: set[int] | None = None) -> None:
        """Set the real tensors of ``parts`` (those ``only`` names by id, when given) to their
        initial values, in one pass of the model's init. A part is the full model, or a module
        cut from it that keeps its FQNs, or one whose FQN is its prefix."""
        tensors = {
            _join(prefix, fqn): t
            for part, prefix in parts
            for fqn, t in [
                *part.named_parameters(remove_duplicate=False),
                *part.named_buffers(remove_duplicate=False),
            ]
            if not t.is_meta and (only is None or id(t) in only)
        }
        if not tensors:
            return
        with self._bound(tensors) as copies, torch.no_grad(), torch.random.fork_rng(devices=[]):
            {"zoo": self._zoo, "hf": self._hf, "py": self._py}[self.kind]()
            for chosen, other in copies:
                other.copy_(chosen)

    @contextlib.contextmanager
    def _bound(self, tensors: dict[str, torch.Tensor]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The full model with ``tensors`` in its slots, every name of a tied weight bound to
        one of them, and every other slot on meta; yields the (initialised, copy) pairs of a
        part holding a tied weight twice (two stages of one rank). What the slots held is
        put back after. A slot may hold a tensor made real before (a unit made real and
        sharded, runtime.parallel.sharded): the init must neither write to it nor see it."""
        saved: list[tuple[dict, str, torch.Tensor]] = []
        chosen: dict[str, torch.Tensor] = {}
        copies = []
        for fqn, tensor in tensors.items():
            group = self._aliases.get(fqn, [fqn])
            first = chosen.get(group[0])
            if first is not None:
                if first is not tensor:
                    copies.append((first, tensor))
                continue
            chosen[group[0]] = tensor
            for alias in group:
                module, attr = self._slots[alias]
                slots = getattr(module, attr)
                name = alias.rpartition(".")[2]
                saved.append((slots, name, slots[name]))
                slots[name] = tensor
        bound = {(id(slots), name) for slots, name, _ in saved}
        for fqn, (module, attr) in self._slots.items():
            slots, name = getattr(module, attr), fqn.rpartition(".")[2]
            held = slots.get(name)
            if held is None or held.is_meta or (id(slots), name) in bound:
                continue
            stand_in = torch.empty(held.shape, dtype=held.dtype, device="meta")
            if isinstance(held, nn.Parameter):
                stand_in = nn.Parameter(stand_in, requires_grad=held.requires_grad)
            saved.append((slots, name, held))
            bound.add((id(slots), name))
            slots[name] = stand_in
        try:
            yield copies
        finally:
            for slots, name, old in reversed(saved):
                slots[name] = old

    def _live(self) -> dict[str, nn.Module]:
        """Modules with a real tensor in their subtree, children before parents."""
        live: set[str] = set()
        for prefix, module in self.full.named_modules(remove_duplicate=False):
            own = [*module._parameters.values(), *module._buffers.values()]
            if any(t is not None and not t.is_meta for t in own):
                parts = prefix.split(".") if prefix else []
                live.update(".".join(parts[:i]) for i in range(len(parts) + 1))
        modules = dict(self.full.named_modules(remove_duplicate=False))
        return {fqn: modules[fqn] for fqn in _post_order(self.full) if fqn in live}

    def _zoo(self) -> None:
        init_weights(self.full, self.seed)

    def _hf(self) -> None:
        from transformers import PreTrainedModel

        init_of: dict[str, object] = {}
        for prefix, module in self.full.named_modules(remove_duplicate=False):
            if isinstance(module, PreTrainedModel):
                init_of[prefix] = module._init_weights
        for fqn, module in self._live().items():
            # The nearest PreTrainedModel at or above the module initialises it, as HF's
            # smart_apply dispatches to sub-models.
            owner = max((p for p in init_of if _within(fqn, p)), key=len)
            torch.manual_seed(parameter_seed(self.seed, fqn))
            init_of[owner](module)

    def _py(self) -> None:
        for fqn, module in self._live().items():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                torch.manual_seed(parameter_seed(self.seed, fqn))
                reset()
                continue
            for name, param in module.named_parameters(recurse=False):
                if not param.is_meta:
                    full_name = _join(fqn, name)
                    gen = torch.Generator().manual_seed(parameter_seed(self.seed, full_name))
                    value = torch.empty(param.shape)
                    draw_initial_value(module, name, value, gen)
                    param.copy_(value)


def materialise(
    part: nn.Module, init: Initialiser, device: torch.device | str, prefix: str = ""
) -> nn.Module:
    """Give ``part``'s meta parameters and buffers real storage on ``device``, in their own
    dtype, and their initial values. Tensors already real (a model built on the CPU) keep
    their values and move to ``device``; tensors made real before (a block sharded already,
    inside a part made real after it) are left as they are. ``prefix``: ``part``'s FQN in
    the full model when its own names do not carry it (one block made real on its own).
    Returns ``part``."""
    materialise_parts([(part, prefix)], init, device)
    return part.to(device=device)


def materialise_parts(
    parts: list[tuple[nn.Module, str]], init: Initialiser, device: torch.device | str
) -> None:
    """`materialise` for several (part, prefix) at once: a tensor two of them hold (a tied
    embedding and head) becomes one real tensor, as in the whole model. Parts stay where
    their real tensors were made (``device``); nothing is moved."""
    made: dict[int, torch.Tensor] = {}
    for part, _ in parts:
        for module in part.modules():
            for attr in ("_parameters", "_buffers"):
                slots = getattr(module, attr)
                for name, tensor in slots.items():
                    if tensor is None or not tensor.is_meta:
                        continue
                    real = made.get(id(tensor))
                    if real is None:
                        real = torch.empty_like(tensor, device=device)
                        if isinstance(tensor, nn.Parameter):
                            real = nn.Parameter(real, requires_grad=tensor.requires_grad)
                        made[id(tensor)] = real
                    slots[name] = real
    init(parts, {id(t) for t in made.values()})


def why_not_meta(kind: str, module: nn.Module) -> str | None:
    """Why ``module`` (built on meta) cannot be made real from meta faithfully, or None.

    A buffer holds a value computed at build time; only those an init recomputes survive
    meta: HF's rotary embeddings and batch norms, and buffers of a module with
    ``reset_parameters`` in a ``py:`` model. The zoo has no buffers.
    """
    for fqn, _ in module.named_buffers():
        owner = module.get_submodule(fqn.rpartition(".")[0])
        recomputed = (
            kind == "hf"
            and (
                ("RotaryEmbedding" in type(owner).__name__ and hasattr(owner, "original_inv_freq"))
                or hasattr(owner, "running_mean")
            )
        ) or (kind == "py" and callable(getattr(owner, "reset_parameters", None)))
        if not recomputed:
            return f"its buffer {fqn!r} ({type(owner).__name__}) is computed when the model is built"
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _within(fqn: str, prefix: str) -> bool:
    return prefix == "" or fqn == prefix or fqn.startswith(prefix + ".")


def _post_order(module: nn.Module, prefix: str = "") -> Iterator[str]:
    """Module FQNs, children before their parent (HF's ``smart_apply`` order)."""
    for name, child in module.named_children():
        yield from _post_order(child, _join(prefix, name))
    yield prefix
