"""Small matplotlib helpers the report figures share: labelled log axes, pyplot on the Agg
backend, atomic saving."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path

#: Mantissas labelled on a log axis within each decade.
LOG_MANTISSAS = (1, 2, 5)


def log_ticks(lo: float, hi: float, mantissas: tuple[float, ...] = LOG_MANTISSAS) -> list[float]:
    """Tick values ``m * 10**k`` (``m`` in ``mantissas``) in ``[lo, hi]``; when that gives
    fewer than three ticks, 1.5 / 3 / 7 are added too, so a narrow axis is labelled."""
    if not (lo > 0 and hi > lo):
        raise ValueError(f"log_ticks: need 0 < lo < hi, got lo={lo}, hi={hi}")
    for ms in (mantissas, (1, 1.5, 2, 3, 5, 7)):
        ticks = [
            m * 10.0**k
            for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in ms
            if lo <= m * 10.0**k <= hi
        ]
        if len(ticks) >= 3:
            break
    return ticks


def _plain(v: float, suffix: str) -> str:
    """``0.5``, ``2``, ``50``, ``500``, ``2k``, ``50k`` (+ ``suffix``)."""
    text = f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"
    return text + suffix


def label_log_axis(axis: Any, lo: float, hi: float, suffix: str = "") -> None:
    """Label a log-scaled matplotlib ``axis`` (``ax.xaxis`` / ``ax.yaxis``) with plain numbers
    at :func:`log_ticks` (``1, 2, 5, 10, 20, ..., 1k, 2k``, with ``suffix``, e.g. ``"x"``) and no
    minor labels, instead of matplotlib's ``10^k`` labels at the decades only."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _plain(v, suffix)))
    axis.set_minor_formatter(NullFormatter())


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, paths: Sequence[str | os.PathLike], dpi: int = 200) -> list[Path]:
    """Save ``fig`` to each of ``paths`` (format from the suffix; raster formats at ``dpi``, a
    PDF without a creation date, so that a rerun writes the same bytes), each written aside and
    renamed, then close it. Leaves the backend as it is (a notebook's figures stay open)."""
    import matplotlib.pyplot as plt

    try:
        for path in paths:
            pdf = str(path).endswith(".pdf")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, **({"metadata": {"CreationDate": None}} if pdf else {"dpi": dpi}))
    finally:
        plt.close(fig)
    return [Path(p) for p in paths]
