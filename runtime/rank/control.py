"""What keeps a rank in line with its run: a graceful stop, and death with its supervisor.

Stop: ``runtime stop`` sends SIGUSR1 to every worker. The signal only sets a flag; at each
metrics flush (about once a second) and each checkpoint the ranks all-reduce their flags
(MAX), so all of them stop after the same step, save a checkpoint and exit 0. SIGTERM and
SIGKILL keep their default meaning; under a supervisor SIGINT is ignored (runtime.rank.worker):
Ctrl-C is the supervisor's to turn into this stop.

Death: a worker must not outlive its run. `PR_SET_PDEATHSIG` has the kernel kill it when
torchrun dies, and a watchdog thread exits the process when the supervisor's PID is gone:
killing torchrun with SIGKILL leaves its workers running otherwise (docs/facts.md).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

PR_SET_PDEATHSIG = 1
SUPERVISOR_ENV = "STAGECRAFT_SUPERVISOR_PID"
STORE_ENV = "STAGECRAFT_STORE"  # host:port of the supervisor's rendezvous store
WATCH_PERIOD_S = 0.5


class StopFlag:
    """Set by SIGUSR1 in this process; `agreed()` is collective: True on every rank or none."""

    def __init__(self, group=None) -> None:
        # Process-wide by nature (a signal handler); the group is set once it exists.
        self.group = group
        self.requested = False
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        self.requested = bool(flag.item())
        return self.requested


def die_with_parent() -> None:
    """Ask the kernel for SIGKILL when the parent (torchrun's agent) dies. Linux only."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True  # no /proc: signal 0 is all we know
    return state not in ("Z", "X")


def watch_supervisor() -> None:
    """Exit this process as soon as the supervisor named in the environment is gone."""
    pid = int(os.environ.get(SUPERVISOR_ENV, "0"))
    if pid <= 0:
        return
    parent = os.getppid()

    def watch() -> None:
        while pid_alive(pid) and os.getppid() == parent:
            time.sleep(WATCH_PERIOD_S)
        print(f"supervisor {pid} or parent {parent} is gone: exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="supervisor-watchdog", daemon=True).start()
