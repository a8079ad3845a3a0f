"""A one-line progress bar for a run: step, loss, throughput, ETA.

On a terminal the line is redrawn in place; in a log (not a TTY) a line is printed at
most every ``log_every_s`` seconds and at the end, so CI logs stay short. A stream that
can no longer be written (its terminal closed, its disk full) is given up on, silently:
the run goes on without its bar.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

WIDTH = 24


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``.

    >>> format_duration(75), format_duration(3725)
    ('1:15', '1:02:05')
    """
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def render(
    step: int, total: int, *, loss: float | None, rate: float | None, unit: str, eta_s: float | None
) -> str:
    """The progress line.

    >>> render(5, 10, loss=2.5, rate=1234.5, unit="samples/s", eta_s=12)
    'step 5/10 [############------------]  50%  loss 2.5000  1,234 samples/s  ETA 0:12'
    """
    filled = WIDTH * step // max(total, 1)
    parts = [
        f"step {step}/{total} [{'#' * filled}{'-' * (WIDTH - filled)}] {100 * step // max(total, 1):3d}%"
    ]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if rate is not None:
        parts.append(f"{rate:,.0f} {unit}")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return "  ".join(parts)


class ProgressLine:
    def __init__(self, total: int, stream: TextIO | None = None, log_every_s: float = 10.0) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self._last_print = 0.0
        self._last_line = ""
        self._last_printed = ""
        self.lost = False

    def update(self, line: str, *, final: bool = False) -> None:
        if self.lost or (line == self._last_line and not final):
            return
        self._last_line = line
        now = time.monotonic()
        try:
            if self.tty:
                self.stream.write("\r\033[K" + line + ("\n" if final else ""))
            elif (final and line != self._last_printed) or now - self._last_print >= self.log_every_s:
                self.stream.write(line + "\n")
                self._last_print, self._last_printed = now, line
            self.stream.flush()
        except OSError:
            self.lost = True
