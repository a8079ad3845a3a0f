"""The logs of a run's latest attempt, per rank, with runs of warning lines folded.

torchrun writes ``<run dir>/logs/<rendezvous id>_<random>/attempt_<N>/<local rank>/stderr.log``.
A resumed run is a new torchrun, so a new first-level folder; a restarted one is a new
attempt in the same folder. The latest attempt is the newest folder's highest N, compared
as a number (attempt_10 comes after attempt_9). Only the end of each file is read: a log
can grow without bound while the page polls it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 64 * 1024  # about the last thousand lines: enough to see why a rank stopped
TAIL_LINES = 200

# Python's warnings ("file.py:12: UserWarning: ..."), the logging module's "WARNING",
# and c10's glog-style lines ("[W1201 14:38:59.123 ...]" or "W1201 14:38:59 ...").
_WARNING = re.compile(r"warning|^\[?W\d{4} ", re.IGNORECASE)


@dataclass(frozen=True)
class RankLog:
    rank: int
    lines: list[str]
    error: str = ""  # one line when the file cannot be read


@dataclass(frozen=True)
class Folded:
    """Consecutive warning lines, shown as one line that counts them."""

    lines: list[str]

    def __str__(self) -> str:
        first = self.lines[0].strip()
        first = first if len(first) <= 120 else first[:117] + "..."
        return f"[{len(self.lines)} warning line{'s' if len(self.lines) != 1 else ''} folded: {first}]"


def _attempt_number(path: Path) -> int:
    tail = path.name.removeprefix("attempt_")
    return int(tail) if tail.isdigit() else -1


def latest_attempt(run_dir: Path) -> Path | None:
    """The folder of the run's latest torchrun attempt, or None before torchrun wrote one."""
    try:
        launches = [p for p in (Path(run_dir) / "logs").iterdir() if p.is_dir()]
    except OSError:
        return None
    for launch in sorted(launches, key=lambda p: p.stat().st_mtime, reverse=True):
        attempts = [p for p in launch.glob("attempt_*") if p.is_dir() and _attempt_number(p) >= 0]
        if attempts:
            return max(attempts, key=_attempt_number)
    return None


def read_tail(path: Path, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a text file (undecodable bytes replaced), without reading it all."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(size - max_bytes, 0))
        data = f.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line read is cut
    return lines[-max_lines:]


def rank_logs(attempt: Path) -> list[RankLog]:
    """Every rank's stderr in an attempt folder, in rank order; an unreadable one says why."""
    logs = []
    folders = (p for p in attempt.iterdir() if p.is_dir() and p.name.isdigit())
    ranks = sorted(folders, key=lambda p: int(p.name))
    for folder in ranks:
        try:
            logs.append(RankLog(int(folder.name), read_tail(folder / "stderr.log")))
        except OSError as exc:
            logs.append(RankLog(int(folder.name), [], f"rank {folder.name}: log unreadable ({exc.strerror})"))
    return logs


def is_warning(line: str) -> bool:
    return bool(_WARNING.search(line))


def fold_warnings(lines: list[str]) -> list[str | Folded]:
    """Lines with each run of consecutive warning lines replaced by one `Folded`.

    A Python warning is two lines, the message and the indented source line that raised
    it; the indented line belongs to the warning before it.

    >>> out = fold_warnings(["step 1", "a.py:3: UserWarning: slow", "  warnings.warn('slow')",
    ...                      "[W1201 14:38:59.1 x.cpp:5] Warning: y", "step 2"])
    >>> [str(x) for x in out]
    ['step 1', '[3 warning lines folded: a.py:3: UserWarning: slow]', 'step 2']
    """
    out: list[str | Folded] = []
    run: list[str] = []
    for line in lines:
        if is_warning(line) or (run and line.startswith((" ", "\t")) and line.strip()):
            run.append(line)
            continue
        if run:
            out.append(Folded(run))
            run = []
        out.append(line)
    if run:
        out.append(Folded(run))
    return out
