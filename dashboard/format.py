"""How the dashboard writes numbers: one place, so every page reads the same.

Times in s / ms / us, bytes in B..TiB (binary), rates with their unit, fractions as
percentages, counts as 163.0 M. Three significant figures are enough to compare plans;
no figure is ever a raw float.

>>> duration(0.1378835), duration(2.5), duration(4.2e-5), duration(None)
('137.9 ms', '2.50 s', '42.0 us', '-')
>>> size(360132.4375 * 2**20), size(512), size(11.7703 * 2**30)
('351.7 GiB', '512 B', '11.8 GiB')
>>> rate(2418.3662, "samples/s"), percent(0.2374), count(163_027_968), count(512)
('2,418 samples/s', '23.7%', '163.0 M', '512')
>>> bandwidth(450e9), bandwidth(None)
('450 GB/s', 'from its kind')
>>> number(2.302585), number(1234.5678), number(float("nan")), change(0.108), points(-0.036)
('2.303', '1,235', 'NaN', '+10.8%', '-3.6 pt')
>>> elapsed(42.4), elapsed(185), elapsed(3725), elapsed(None)
('42 s', '3 min 05 s', '1 h 02 min', '-')
"""

from __future__ import annotations

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def duration(seconds: float | None) -> str:
    """A time, in the unit that keeps it between 1 and 1000."""
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s >= 100:
        return f"{seconds:,.0f} s"
    if s >= 1:
        return f"{seconds:.2f} s"
    if s >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def size(n_bytes: float | None) -> str:
    """Bytes in binary units (KiB = 1024 B), as memory is sized."""
    if n_bytes is None:
        return "-"
    n = float(n_bytes)
    for unit in _BYTE_UNITS:
        if abs(n) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def rate(value: float | None, unit: str) -> str:
    """A throughput with its unit: 2,418 samples/s; 3 significant figures below 100."""
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"


def count(n: float | None) -> str:
    """A count of things (parameters, FLOPs): 163.0 M, 6.7 B, 1.2 T; small counts in full."""
    if n is None:
        return "-"
    # Below 10,000 the number itself reads best (512 devices, 8,192 tokens).
    for threshold, scale, suffix in ((1e12, 1e12, "T"), (1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / scale:,.1f} {suffix}"
    return f"{n:,.0f}"


def bandwidth(bytes_per_s: float | None) -> str:
    """A link's bandwidth in decimal units per second, as datasheets give it."""
    if bytes_per_s is None:
        return "from its kind"
    for scale, unit in ((1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:,.3g} {unit}"
    return f"{bytes_per_s:.0f} B/s"


def number(value: float | None) -> str:
    """A plain figure without a unit (a loss): four significant figures; NaN and inf kept."""
    if value is None:
        return "-"
    if value != value:
        return "NaN"
    if abs(value) == float("inf"):
        return "inf" if value > 0 else "-inf"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def change(fraction: float | None) -> str:
    """A relative difference, signed: +10.8% (a prediction against its measurement)."""
    return "-" if fraction is None else f"{fraction:+.1%}"


def points(difference: float | None) -> str:
    """A difference of two fractions in percentage points: -3.6 pt (a bubble's error)."""
    return "-" if difference is None else f"{difference * 100:+.1f} pt"


def elapsed(seconds: float | None) -> str:
    """Wall-clock time of a run or an ETA, in the two largest units: 3 min 05 s, 1 h 02 min."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    s = round(max(seconds, 0.0))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours:,} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
