"""Limits on every input a user or a file can give, stated once, with the reason for each.

Each limit is chosen from what the largest real job needs, with room to spare, and stops
input that would exhaust memory or time before anything is built: a document nested
100,000 deep, a cluster of 10^11 CPU ranks, a model of 10^9 layers. The README's Security
section lists them; `reading` checks a document's bytes before it is parsed.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from planner.errors import PlannerError

KiB, MiB = 2**10, 2**20

# A plan or cluster JSON of 4,096 devices written out pair by pair is ~1 GiB; with grouped
# links a 16,384-GPU cluster is 2.2 MiB and the largest allowed (32,768) 4.4 MiB. 32 MiB
# leaves room for hand-written links and a profile of a 1,000-block model (~1 MiB).
MAX_DOCUMENT_BYTES = 32 * MiB
# The deepest real document (a plan: plan > cluster > links > link) nests 5 brackets deep;
# user overrides may nest a little (lists of lists). Python's JSON parser recurses per level.
MAX_JSON_DEPTH = 32
# A model source, a cluster short form, an override: one line a person types.
MAX_TEXT_CHARS = 1_000
# Overrides typed or stored in a plan: how many, and how large an integer may be. 2^24
# (16.8 M) is above every real width, vocabulary (Gemma's 256 k) and context (1 M tokens).
MAX_OVERRIDES = 64
MAX_OVERRIDE_INT = 2**24
# Samples per optimizer step: the largest published batches are ~4 M tokens, far fewer samples.
MAX_GLOBAL_BATCH = 2**24
# Modules a model may register while it is built on the meta device: Llama-3 405B has
# ~2,400 and a 70B GPT 1,000; n_layer=10^9 would build for hours before tracing began.
MAX_MODULES = 50_000
# torch.manual_seed takes a 64-bit seed.
MAX_SEED = 2**63 - 1
# 10^9 optimizer steps is ~30 years at one step a second.
MAX_STEPS = 10**9
# Intra-op threads per rank: the largest CPU hosts have 2 x 192 cores, 768 hardware threads.
MAX_THREADS = 1_024
# A process-group timeout from 1 s (a hung peer is noticed at once) to one day (a very slow
# first step of a huge model); 10^-9 fails every collective, 10^20 waits for ever.
MIN_PG_TIMEOUT_S, MAX_PG_TIMEOUT_S = 1.0, 86_400.0
# Clusters, checked before a device is built. A node is one host: the largest are an NVL72
# rack's 72 GPUs on one NVLink domain and a 2 x 192-core CPU host (768 ranks with SMT).
MAX_DEVICES_PER_NODE = 1_024
WHY_DEVICES_PER_NODE = "no real node holds more: an NVL72 rack has 72 GPUs, the largest CPU hosts 768 threads"
# The largest published training jobs: Llama 3 405B on 16,384 H100s (2,048 nodes of 8),
# Meta's 24,576-GPU clusters. The planner searches a 7B GPT on 16,384 H100s in ~27 s and on
# 32,768 in ~42 s with 1.2 GB (2 cores; `python -m planner plan --model gpt --set size=7b
# --cluster h100:8x4096 --global-batch 8192 --dtype bfloat16`); it grows with the devices.
MAX_DEVICES = 32_768
MAX_NODES = 4_096
WHY_CLUSTER_SIZE = "the largest published training jobs ran on 16,384-24,576 GPUs, in 2,048-3,072 nodes"
# Explicit per-pair links in a cluster document: every pair of 724 devices, so a plan
# written pair by pair for 8 x 90 GPUs still loads (link groups describe larger clusters in
# a few lines). Link groups: two scopes per pair of device kinds, for far more kinds than
# any catalog holds.
MAX_LINKS = 2**18
MAX_LINK_GROUPS = 1_024

_DEEPEST = "a real plan nests at most 5"
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class InputLimitError(PlannerError):
    """An input over one of the limits above; the message names the limit and why."""


def json_depth(text: str) -> int:
    """How deep brackets nest in JSON ``text``, counted without recursion (strings skipped).

    >>> json_depth('{"a": [1, [2, "[[["]]}')
    3
    >>> json_depth("[" * 100_000 + "]" * 100_000)
    100000
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text))
    if not brackets:
        return 0
    return max(accumulate(1 if c in "[{" else -1 for c in brackets))


def check_size(size: int, origin: str, error: type[PlannerError] = InputLimitError) -> None:
    """A document of ``size`` bytes is at most MAX_DOCUMENT_BYTES."""
    if size > MAX_DOCUMENT_BYTES:
        raise error(
            f"{origin}: {size / MiB:,.1f} MiB is over the {MAX_DOCUMENT_BYTES // MiB} MiB limit for a "
            "document (a cluster of 16,384 GPUs is 2.2 MiB)"
        )


def decode_text(data: bytes | str, origin: str, error: type[PlannerError] = InputLimitError) -> str:
    """``data`` as text: at most MAX_DOCUMENT_BYTES, and valid UTF-8 (one line otherwise)."""
    check_size(len(data), origin, error)
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{origin}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None


def load_json(data: bytes | str, origin: str, error: type[PlannerError] = InputLimitError) -> Any:
    """Parse a JSON document within the limits; NaN and Infinity are refused.

    Every failure is ``error`` with one line that names ``origin`` and the problem.

    >>> load_json('{"a": [1, 2]}', "x")
    {'a': [1, 2]}
    >>> try:
    ...     load_json("[" * 50 + "]" * 50, "plan.json")
    ... except InputLimitError as exc:
    ...     print(exc)
    plan.json: JSON nested 50 deep, over the limit of 32 (a real plan nests at most 5)
    """
    text = decode_text(data, origin, error)
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{origin}: JSON nested {depth} deep, over the limit of {MAX_JSON_DEPTH} ({_DEEPEST})")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{origin}: not valid JSON ({exc})") from None
    except ValueError as exc:  # NaN / Infinity, or an integer of more than 4,300 digits
        raise error(f"{origin}: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def check_text(text: str, what: str, error: type[PlannerError] = InputLimitError) -> str:
    """A line a person typed: at most MAX_TEXT_CHARS, no control characters."""
    if len(text) > MAX_TEXT_CHARS:
        raise error(f"{what}: {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise error(f"{what}: contains a control character")
    return text


def check_range(
    value: float, what: str, low: float, high: float, why: str, error: type[PlannerError] = InputLimitError
) -> None:
    """``low <= value <= high`` or ``error`` naming ``what``, the bounds and ``why``."""
    if not (low <= value <= high):
        raise error(f"{what} is {value:,}; it must be from {low:,} to {high:,} ({why})")
