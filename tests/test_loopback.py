"""A single-machine run listens on loopback only: rendezvous store, torchrun, workers."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

from runtime.supervise import store
from tests.runs import zoo_plan
from tests.supervision import run_pids, start_run, the_run, wait_for

pytestmark = pytest.mark.slow


def _address(hex_address: str) -> str:
    host = hex_address.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian
        return socket.inet_ntoa(struct.pack("<I", int(host, 16)))
    words = [struct.pack("<I", int(host[i : i + 8], 16)) for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))


def listening_addresses(pids) -> set[str]:
    """Addresses that ``pids`` accept TCP connections on, from /proc (no ss needed)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(_address(fields[1]))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_a_single_machine_run_listens_on_loopback_only(tmp_path):
    plan = zoo_plan("mlp", ranks=2, strategy="dp", global_batch=32, dp_degree=2, training={"steps": 100_000})
    launcher = start_run(plan, tmp_path)
    try:
        runs = tmp_path / "runs"
        pids = wait_for(lambda: (runs / store.DB_NAME).exists() and run_pids(runs), 60, "the workers")
        wait_for(lambda: store.last_step(store.connect(runs), the_run(runs)["run_id"]), 30, "a step")
        addresses = listening_addresses([launcher.pid, *pids])
        assert addresses, "the run listens somewhere (its rendezvous store, gloo's pairs)"
        assert addresses <= {"127.0.0.1", "::1"}, addresses
    finally:
        launcher.kill()
        launcher.wait()
