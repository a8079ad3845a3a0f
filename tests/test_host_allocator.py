"""glibc's malloc thresholds, fixed in the processes that train and measure: a block of a
few MiB comes from the reused heap, not from fresh pages; a user's own settings win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.rank.host_allocator import has_glibc

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(not has_glibc(), reason="glibc's allocator only")

# In a fresh process (glibc's mmap threshold starts at 128 KiB): fix or not, then allocate
# a 4 MiB tensor and report how many bytes glibc has in mmapped blocks before and after.
PROBE = """
import ctypes, json, sys
import torch
from runtime.rank.host_allocator import fix_malloc_thresholds

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
fixed = fix_malloc_thresholds() if sys.argv[1] == "fix" else False
before = mallinfo2().hblkhd
block = torch.empty(4 * 2**20, dtype=torch.uint8)
print(json.dumps({"fixed": fixed, "mmapped": mallinfo2().hblkhd - before}))
"""


def _probe(fix: bool, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "fix" if fix else "leave"],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@glibc_only
def test_with_the_thresholds_fixed_a_block_of_a_few_mib_comes_from_the_heap():
    assert _probe(fix=False) == {"fixed": False, "mmapped": pytest.approx(4 * 2**20, rel=0.01)}
    assert _probe(fix=True) == {"fixed": True, "mmapped": 0}


@glibc_only
@pytest.mark.parametrize(
    "env", [{"MALLOC_MMAP_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}]
)
def test_a_users_own_allocator_settings_are_left_alone(env):
    assert _probe(fix=True, **env)["fixed"] is False
