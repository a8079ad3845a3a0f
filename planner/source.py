"""Model sources: how a model is named, and how it is built (on the meta device by default).

A source is one of
- a zoo name: ``mlp``, ``cnn``, ``gan``, ``gpt``;
- ``hf:<model_type>``: a Hugging Face architecture built from its config class with the
  overrides, randomly initialised; nothing is downloaded and remote code is never trusted;
- ``py:package.module:factory``: any importable function returning an ``nn.Module``, called
  with the overrides as keyword arguments. The module must define
  ``example_inputs(batch_size) -> tuple[Tensor, ...]`` (created on the default device).

torch and transformers are imported inside the functions that build models.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from planner.errors import SourceError

ZOO_NAMES = ("mlp", "cnn", "gan", "gpt")
_HF_TYPE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_PY_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSource:
    """A parsed source string plus its size overrides."""

    kind: str  # "zoo" | "hf" | "py"
    name: str  # zoo name, HF model_type, or "package.module:factory"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name if self.kind == "zoo" else f"{self.kind}:{self.name}"


@dataclass
class BuiltModel:
    """A model instance and the example inputs used to trace it."""

    module: Any  # torch.nn.Module
    args: tuple
    kwargs: dict[str, Any]
    config: dict[str, Any]
    """The resolved configuration, for display and the plan."""
    dataset: str | None = None


def parse_source(text: str, overrides: dict[str, Any] | None = None) -> ModelSource:
    """Parse a source string; check its syntax (not yet whether it imports).

    >>> parse_source("gpt")
    ModelSource(kind='zoo', name='gpt', overrides={})
    >>> str(parse_source("hf:gpt2", {"n_layer": 2}))
    'hf:gpt2'
    """
    text = (text or "").strip()
    overrides = dict(overrides or {})
    if text.startswith("hf:"):
        name = text[3:]
        if not _HF_TYPE.match(name):
            raise SourceError(f"{text!r}: expected hf:<model_type>, e.g. hf:gpt2 or hf:llama")
        return ModelSource("hf", name, overrides)
    if text.startswith("py:"):
        name = text[3:]
        if not _PY_PATH.match(name):
            raise SourceError(f"{text!r}: expected py:package.module:factory")
        return ModelSource("py", name, overrides)
    if text in ZOO_NAMES:
        return ModelSource("zoo", text, overrides)
    raise SourceError(
        f"unknown model source {text!r}: use a zoo name ({', '.join(ZOO_NAMES)}), "
        "hf:<model_type> or py:package.module:factory"
    )


def build_model(
    source: ModelSource,
    *,
    device: str = "meta",
    batch_size: int = 1,
    seed: int = 0,
    dtype: str = "float32",
) -> BuiltModel:
    """Build ``source`` on ``device`` with example inputs of ``batch_size`` samples.

    On ``meta`` no memory is allocated for weights, so a 70B model can be built here. On a
    real device, zoo weights depend only on (seed, FQN); other sources are built after
    ``torch.manual_seed(seed)``.
    """
    import torch

    if dtype not in DTYPES:
        raise SourceError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise SourceError(f"batch_size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    builder = {"zoo": _build_zoo, "hf": _build_hf, "py": _build_py}[source.kind]
    with torch.device(device):
        built = builder(source, batch_size, torch.device(device))
    if device != "meta" and source.kind == "zoo":
        from planner.zoo.init import init_weights

        init_weights(built.module, seed)
    torch_dtype = getattr(torch, dtype)
    if torch_dtype != torch.float32:
        built.module.to(torch_dtype)
        built.args = tuple(a.to(torch_dtype) if a.is_floating_point() else a for a in built.args)
    return built


def _build_zoo(source: ModelSource, batch_size: int, device: Any) -> BuiltModel:
    from planner.zoo import ZOO, make_config

    entry = ZOO[source.name]
    try:
        cfg = make_config(source.name, source.overrides)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{source}: {exc}") from None
    import dataclasses

    return BuiltModel(
        module=entry.model_cls(cfg),
        args=entry.example_inputs(cfg, batch_size, device),
        kwargs={},
        config=dataclasses.asdict(cfg),
        dataset=entry.dataset,
    )


def _build_hf(source: ModelSource, batch_size: int, device: Any) -> BuiltModel:
    try:
        import transformers
    except ImportError:
        raise SourceError(f"{source} needs the transformers package (pip install transformers)") from None
    import torch

    overrides = dict(source.overrides)
    seq_len = overrides.pop("seq_len", None)
    try:
        default = transformers.AutoConfig.for_model(source.name)
    except (ValueError, KeyError):
        raise SourceError(
            f"{source}: transformers {transformers.__version__} has no model_type "
            f"{source.name!r} (e.g. gpt2, llama, mistral, qwen2, bert)"
        ) from None
    # Config classes accept any keyword silently; a typo would trace the default size.
    known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise SourceError(
            f"{source}: {type(default).__name__} has no parameter {', '.join(map(repr, unknown))}"
        )
    cfg = transformers.AutoConfig.for_model(source.name, **overrides)
    if hasattr(cfg, "use_cache"):
        cfg.use_cache = False  # no KV cache when training; export needs it off
    model_cls = (
        transformers.AutoModelForCausalLM
        if type(cfg) in transformers.AutoModelForCausalLM._model_mapping
        else transformers.AutoModel
    )
    model = model_cls.from_config(cfg, trust_remote_code=False)
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        raise SourceError(
            f"{source}: takes {model.main_input_name!r}; only text models taking input_ids are supported"
        )
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 128)
    seq = int(seq_len) if seq_len is not None else min(128, int(max_pos))
    ids = torch.zeros(batch_size, seq, dtype=torch.long, device=device)
    kwargs = {"use_cache": False} if hasattr(cfg, "use_cache") else {}
    # A causal LM trains on next-byte prediction over the bundled corpus (token ids < 256).
    dataset = "bytes:stdlib" if model_cls is transformers.AutoModelForCausalLM else None
    config = {**cfg.to_diff_dict(), "vocab_size": cfg.vocab_size, "seq_len": seq}
    return BuiltModel(model, (ids,), kwargs, config, dataset)


def _build_py(source: ModelSource, batch_size: int, device: Any) -> BuiltModel:
    from torch import nn

    module_path, factory_name = source.name.split(":")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise SourceError(f"{source}: cannot import {module_path!r} ({exc})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise SourceError(f"{source}: {module_path!r} has no callable {factory_name!r}")
    try:
        model = factory(**source.overrides)
    except TypeError as exc:
        raise SourceError(f"{source}: calling {factory_name}(**overrides) failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SourceError(f"{source}: {factory_name}() returned {type(model).__name__}, not nn.Module")
    example = getattr(model, "example_inputs", None)
    if not callable(example):
        raise SourceError(
            f"{source}: {type(model).__name__} needs a method example_inputs(batch_size) "
            "returning a tuple of tensors, to know what to trace with"
        )
    args = example(batch_size)
    if not isinstance(args, tuple):
        args = (args,)
    return BuiltModel(model, args, {}, dict(source.overrides), None)
