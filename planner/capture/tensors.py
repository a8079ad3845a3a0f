"""Tensor accounting shared by both tracers: bytes, storages, and what autograd saves.

Tensors are told apart by storage, not by object: a view shares its base's storage, and
autograd may save either. torch is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import Any


def storage_key(t: Any) -> tuple:
    """Identity of ``t``'s storage, for as long as that storage is alive."""
    return (t.device.type, t.untyped_storage()._cdata)


def nbytes(t: Any) -> int:
    """Bytes of ``t``'s own elements (not of the whole storage it may view)."""
    return t.numel() * t.element_size()


def tensors(value: Any) -> list[Any]:
    """The tensors in ``value``, a tensor or any nesting of tuples, lists and dicts."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [x for x in tree_leaves(value) if isinstance(x, torch.Tensor)]


def is_view_of(outs: list[Any], ins: list[Any]) -> bool:
    """True when every output shares storage with an input: a view, which moves no bytes."""
    keys = {storage_key(t) for t in ins}
    return bool(outs) and all(storage_key(t) in keys for t in outs)


class SavedTensors:
    """Counts the bytes autograd keeps for backward, once per storage, parameters excluded.

    Use `pack` as the pack hook of `torch.autograd.graph.saved_tensors_hooks` (see `hooks`).
    ``total`` grows by a storage's bytes the first time any op keeps it; the caller reads the
    difference around an op (or a module call) to attribute it. Parameters and buffers are
    counted as parameters, so their storages are passed in ``exclude``.

    The export tracer names the op now running in ``node``: a storage kept again by a later
    op is then listed in ``resaved`` as ``[storage id, producer, first keeper, bytes]``
    (a stage cut between the two keeps a second copy, see planner.capture.coarsen). The hook
    tracer leaves ``node`` unset and reads only ``total``.
    """

    def __init__(self, exclude: set[tuple]) -> None:
        self.exclude = exclude
        self.total = 0
        self.node = ""
        self.resaved: list[list[Any]] = []
        self.producer_of: dict[tuple, str] = {}  # storage -> node whose output it is, if known
        self.first_saver: dict[tuple, tuple[int, str]] = {}  # storage -> (storage id, node)
        self.keep_alive: list[Any] = []  # a freed storage's address could be reused by a later one

    def pack(self, t: Any) -> Any:
        key = storage_key(t)
        if key in self.exclude:
            return t
        size = t.untyped_storage().nbytes()
        if key not in self.first_saver:
            self.first_saver[key] = (len(self.first_saver), self.node)
            self.keep_alive.append(t)
            self.total += size
        elif self.first_saver[key][1] != self.node:
            storage_id, first = self.first_saver[key]
            self.resaved.append([storage_id, self.producer_of.get(key, first), first, size])
        return t

    def hooks(self) -> Any:
        """The context manager that routes every tensor autograd saves through `pack`."""
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, _unpack)


def _unpack(t: Any) -> Any:
    return t
