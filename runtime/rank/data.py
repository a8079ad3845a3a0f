"""The zoo's data sets: real, small, and never downloaded.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes),
  pixels scaled to [0, 1]; the GAN rescales them to [-1, 1].
- ``bytes:stdlib`` / ``bytes:<path>``: a byte-level corpus (vocabulary 256) from text files,
  by default the Python standard library's own ``.py`` sources, read in sorted path order so
  every process sees the same bytes. Sample ``i`` is the window ``[i*T, (i+1)*T]``: input
  tokens and the next-token targets.
"""

from __future__ import annotations

import functools
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_CORPUS_BYTES = 4 * 1024**2  # enough for thousands of windows; reads in ~0.1 s


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs and targets indexed by sample; `batch` gathers a list of sample indices."""

    inputs: torch.Tensor
    targets: torch.Tensor
    name: str

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def batch(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[idx], self.targets[idx]


@dataclass(frozen=True)
class ByteCorpus:
    """Next-byte prediction over a fixed byte string, in windows of ``seq_len``."""

    data: torch.Tensor  # (N,) uint8
    seq_len: int
    name: str

    def __len__(self) -> int:
        return (self.data.numel() - 1) // self.seq_len

    def batch(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        offsets = idx[:, None] * self.seq_len + torch.arange(self.seq_len + 1)  # (B, T+1)
        window = self.data[offsets].long()
        return window[:, :-1], window[:, 1:]  # tokens, next tokens: (B, T) each


@functools.lru_cache(maxsize=1)
def load_digits() -> ArrayDataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # (1797, 64), pixels 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    return ArrayDataset(x, y, "digits")


# Installed packages and test data are not "the standard library"; skipping them also keeps
# the walk short on machines with large site-packages.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test"}


def text_files(root: str | Path) -> list[Path]:
    """The ``.py``/``.txt``/``.md`` files under ``root`` (or ``root`` itself), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"corpus path {str(root)!r} does not exist")
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        files += [Path(folder, n) for n in names if Path(n).suffix in {".py", ".txt", ".md"}]
    files.sort()
    if not files:
        raise FileNotFoundError(f"no .py, .txt or .md files under {str(root)!r}")
    return files


def load_byte_corpus(
    root: str | Path | None = None, *, seq_len: int, max_bytes: int = DEFAULT_CORPUS_BYTES
) -> ByteCorpus:
    """Concatenate text files (default: the standard library) up to ``max_bytes``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    source = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    data = _corpus_bytes(source, max_bytes)
    if data.numel() <= seq_len:
        raise ValueError(f"corpus {str(source)!r} has {data.numel()} bytes, fewer than seq_len + 1")
    return ByteCorpus(data, seq_len, f"bytes:{root}" if root is not None else "bytes:stdlib")


@functools.lru_cache(maxsize=2)
def _corpus_bytes(source: Path, max_bytes: int) -> torch.Tensor:
    """The first ``max_bytes`` of the text files under ``source``, read once per process."""
    chunks: list[bytes] = []
    size = 0
    for path in text_files(source):
        blob = path.read_bytes()
        chunks.append(blob[: max_bytes - size])
        size += len(chunks[-1])
        if size >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def preload(dataset_id: str) -> None:
    """Read a data set (and import what reads it) now: a rank's memory before the model is
    built then holds it, and the memory measured after that is the plan's alone."""
    load_dataset(dataset_id, seq_len=1)


def load_dataset(dataset_id: str, *, seq_len: int | None = None) -> ArrayDataset | ByteCorpus:
    """``digits``, ``bytes:stdlib`` or ``bytes:<path>`` (the byte corpora need ``seq_len``)."""
    if dataset_id == "digits":
        return load_digits()
    if dataset_id.startswith("bytes:"):
        if seq_len is None:
            raise ValueError(f"{dataset_id} needs seq_len")
        where = dataset_id.removeprefix("bytes:")
        return load_byte_corpus(None if where == "stdlib" else where, seq_len=seq_len)
    raise ValueError(f"unknown data set {dataset_id!r}; known: digits, bytes:stdlib, bytes:<path>")
