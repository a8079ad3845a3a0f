"""Fixed glibc malloc thresholds for the processes that train or measure.

torch's CPU tensors come from malloc. glibc serves a block above its mmap threshold
(128 KiB at first) with fresh pages, and each time such a block is freed it raises the
threshold to that block's size (the "dynamic" threshold, up to 32 MiB here) and the trim
threshold to twice that. So whether a step's activations land in reused heap pages or in
freshly mapped, zeroed ones depends on what the process freed before. The same small
model's forward and backward varied by up to 1.5x between fresh processes, and its forward
ran up to about twice as fast with the thresholds fixed (`python bench/allocator.py` prints both).
The profile and the runs it predicts would each land somewhere in that range.

Fixing both thresholds, as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would,
turns the dynamic adjustment off: blocks up to 64 MiB come from the heap and are reused,
and up to 256 MiB of free heap top stays mapped. The cost is resident memory that glibc
keeps after a peak instead of returning it; tensor memory (what the plan predicts) is not
affected. A user's own thresholds (``MALLOC_*`` or ``GLIBC_TUNABLES``) are left as they are.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def has_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or not glibc
        return False


def _user_sets_thresholds() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(os.environ.get(name) for name in USER_SETTINGS) or any(t in tunables for t in USER_TUNABLES)


def fix_malloc_thresholds() -> bool:
    """Set glibc's mmap and trim thresholds for this process (early, before the model is
    built). Return whether they were set: not without glibc, nor where the user's
    environment already sets them."""
    if not has_glibc() or _user_sets_thresholds():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success. Either setting turns the adjustment off, but the trim
    # one alone leaves every block over 128 KiB freshly mapped: slower still, measured.
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(mmap_set & mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
