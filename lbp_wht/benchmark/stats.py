"""Summary statistics of benchmark samples (stdlib only)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``values`` with linear interpolation between samples
    (``statistics.quantiles(..., method="inclusive")``); one value is its own quartiles."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of the per-round ratios ``num[i] / den[i]``.

    Samples of the same round were taken back to back, so a ratio per round cancels the load
    that hit both of them; the median of those ratios is the reported speedup.
    """
    return quartiles([a / b for a, b in zip(num, den)])


def loadavg() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages, NaN where the platform has none."""
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return (math.nan, math.nan, math.nan)


def say(line: str) -> None:
    """Print a progress line at once (benchmarks run for minutes; output may be a pipe)."""
    print(line, flush=True)
