"""Small helpers shared by the benchmarks: percentiles and plain-text tables.

Benchmarks print figures for people to compare; they never assert timings. A sample
that never completed (no reply within the benchmark's timeout) is kept as +inf rather
than dropped, so it pushes the percentiles up instead of silently improving them.
"""

from __future__ import annotations

import math
import secrets
import statistics
from collections.abc import Sequence
from typing import Any

TIMEOUT = math.inf  # the value of a sample that did not complete


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, median, p99 and max of durations given in seconds, in milliseconds."""
    return {
        "n": len(seconds),
        "median_ms": round(percentile(seconds, 50) * 1000, 1),
        "p99_ms": round(percentile(seconds, 99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1) if seconds else math.nan,
    }


def _ms(value: float) -> float | None:
    """Seconds to rounded milliseconds; None for a timeout (+inf), JSON-safe."""
    return None if math.isinf(value) else round(value * 1000, 1)


def tail_summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, failures, median, p90, p99 and max in milliseconds of samples in seconds,
    where a failed sample is TIMEOUT (+inf) and counts as the worst one. A figure that
    falls on a failure is None (print it with `fmt_ms`)."""
    return {
        "n": len(seconds),
        "failures": sum(1 for s in seconds if math.isinf(s)),
        "median_ms": _ms(percentile(seconds, 50)),
        "p90_ms": _ms(percentile(seconds, 90)),
        "p99_ms": _ms(percentile(seconds, 99)),
        "max_ms": _ms(max(seconds)) if seconds else math.nan,
    }


def fmt_ms(value: float | None) -> str:
    """A figure of `tail_summary_ms` for a table: None (a failed sample) is 'timeout'."""
    return "timeout" if value is None else f"{value:g}"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements of one quantity."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def lab_prefix() -> str:
    """A unique namespace prefix for one benchmark run (the lab adds its own names)."""
    return "tc" + secrets.token_hex(2)
