"""Model sources: how a model is named, and how it is built (on the meta device by default).

A source is one of
- a zoo name: ``mlp``, ``cnn``, ``gan``, ``gpt``;
- ``hf:<model_type>``: a Hugging Face architecture built from its config class with the
  overrides, randomly initialised; nothing is downloaded and remote code is never trusted.
  Its samples are as long as its context (the config's maximum positions) unless the
  ``seq_len`` override says otherwise;
- ``py:package.module:factory``: any importable function returning an ``nn.Module``, called
  with the overrides as keyword arguments. The module must define
  ``example_inputs(batch_size) -> tuple[Tensor, ...]`` (created on the default device).

Importing a module runs its code, so a ``py:`` source is code, and it runs only with
consent: `build_model` imports ``package.module`` only if it is on the allow-list, the
comma-separated ``$STAGECRAFT_ALLOWED_PY`` (``package.module`` or ``py:package.module:factory``
entries). A module named on the command line (``--model py:...`` or ``--allow-py``) is added
to it with `allow_py`; so is every worker's, through the environment it inherits. A plan or
cluster from a file never adds to it.

torch and transformers are imported inside the functions that build models.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from planner.capture.overrides import check_overrides
from planner.errors import MetaBuildError, SourceError
from planner.limits import MAX_MODULES, MAX_TEXT_CHARS

ZOO_NAMES = ("mlp", "cnn", "gan", "gpt")
_HF_TYPE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_PY_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_HF_SEQ_LEN = 1024
"""Tokens per sample of a Hugging Face model whose config names no maximum position."""
PY_ALLOW_ENV = "STAGECRAFT_ALLOWED_PY"


def allowed_py_modules() -> frozenset[str]:
    """Modules a ``py:`` source may import: ``$STAGECRAFT_ALLOWED_PY``, empty unless set.

    >>> os.environ[PY_ALLOW_ENV] = "pkg.models, py:other.mod:make"
    >>> sorted(allowed_py_modules())
    ['other.mod', 'pkg.models']
    >>> del os.environ[PY_ALLOW_ENV]
    """
    entries = (e.strip() for e in os.environ.get(PY_ALLOW_ENV, "").split(","))
    return frozenset(e.removeprefix("py:").partition(":")[0] for e in entries if e)


def allow_py(module: str) -> None:
    """Consent to importing ``module`` (the user named it): in this process and its children."""
    module = module.strip().removeprefix("py:").partition(":")[0]
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        raise SourceError(f"--allow-py {module!r}: expected a module path such as pkg.models")
    os.environ[PY_ALLOW_ENV] = ",".join(sorted(allowed_py_modules() | {module}))


def py_module(source: ModelSource) -> str | None:
    """The module a source would import, or None for zoo and Hugging Face sources."""
    return source.name.split(":")[0] if source.kind == "py" else None


def check_consent(source: ModelSource) -> None:
    """Refuse a ``py:`` source whose module nobody allowed, before anything is imported."""
    module = py_module(source)
    if module is not None and module not in allowed_py_modules():
        raise SourceError(
            f"{source} would import {module!r}, which runs its code, and nobody allowed it: "
            f"pass --allow-py {module} (or set {PY_ALLOW_ENV}={module}) if you trust it"
        )


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
    if len(text) > MAX_TEXT_CHARS:
        raise SourceError(f"a model source of {len(text):,} characters; at most {MAX_TEXT_CHARS:,}")
    overrides = check_overrides(dict(overrides or {}))
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
    check_consent(source)
    torch.manual_seed(seed)
    builder = {"zoo": _build_zoo, "hf": _build_hf, "py": _build_py}[source.kind]
    with torch.device(device), _module_budget(source):
        built = builder(source, batch_size, torch.device(device))
    if device != "meta" and source.kind == "zoo":
        from planner.zoo.init import init_weights

        init_weights(built.module, seed)
    torch_dtype = getattr(torch, dtype)
    if torch_dtype != torch.float32:
        built.module.to(torch_dtype)
        built.args = tuple(a.to(torch_dtype) if a.is_floating_point() else a for a in built.args)
    return built


_building = threading.local()  # per thread: the dashboard builds in several at once


def _count_module(module: Any, name: str, submodule: Any) -> None:
    budget = getattr(_building, "budget", None)
    if budget is None:
        return None
    budget[0] += 1
    if budget[0] > MAX_MODULES:
        raise SourceError(
            f"{budget[1]}: the model registers more than {MAX_MODULES:,} modules while it is built "
            "(Llama-3 405B has about 2,400); check the layer count in its overrides"
        )
    return None


@contextmanager
def _module_budget(source: ModelSource):
    """Stop a build that registers more than MAX_MODULES modules, before it runs for hours."""
    from torch.nn.modules.module import register_module_module_registration_hook

    _building.budget = [0, str(source)]
    handle = register_module_module_registration_hook(_count_module)
    try:
        yield
    finally:
        handle.remove()
        _building.budget = None


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
    # Planned at the model's context length unless seq_len says otherwise: a 4k-context
    # model priced for 128 tokens would be priced for a sequence 32x shorter.
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    seq = int(seq_len) if seq_len is not None else int(max_pos or DEFAULT_HF_SEQ_LEN)
    ids = torch.zeros(batch_size, seq, dtype=torch.long, device=device)
    kwargs = {"use_cache": False} if hasattr(cfg, "use_cache") else {}
    # A causal LM trains on next-byte prediction over the bundled corpus (token ids < 256).
    dataset = "bytes:stdlib" if model_cls is transformers.AutoModelForCausalLM else None
    config = {**cfg.to_diff_dict(), "vocab_size": cfg.vocab_size, "seq_len": seq}
    return BuiltModel(model, (ids,), kwargs, config, dataset)


def _build_py(source: ModelSource, batch_size: int, device: Any) -> BuiltModel:
    from torch import nn

    module_path, factory_name = source.name.split(":")
    check_consent(source)  # again, right before the import: nothing reaches it without consent
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
    except Exception as exc:
        if device.type != "meta":
            raise
        raise MetaBuildError(
            f"{source}: {factory_name}() fails on the meta device, where models are traced and "
            f"built without memory ({type(exc).__name__}: {exc}); a factory must not read its "
            "weights' values while it builds"
        ) from None
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
