"""Markdown from the Jinja2 templates in ``templates/`` and the small formatting helpers the
reports share.

Every report is one template: its wording lives there, its facts (numbers, verdicts) are
computed by the report's module and passed in. Templates are rendered with
``trim_blocks``/``lstrip_blocks`` (a line holding only a ``{% ... %}`` tag leaves nothing
behind) and ``StrictUndefined`` (a misspelt variable is an error, not an empty string).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


@cache
def _env():
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - jinja2 comes with torch
        raise ImportError(
            "the reports need jinja2: pip install 'lbp_wht[reporting]' (or pip install jinja2)"
        ) from e
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` rendered with ``context``."""
    return _env().get_template(template).render(**context)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_rows_csv(
    path: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    fields: Sequence[str] | None = None,
    float_format: str | None = None,
) -> Path:
    """Rows as CSV: columns ``fields`` (default: the first row's keys; other keys are dropped),
    ``None`` as an empty cell, floats through ``float_format`` (e.g. ``"{:.4g}"``) if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(fields or rows[0])
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        for row in rows:
            wr.writerow({k: _cell(row.get(k), float_format) for k in fields if k in row})
    return path


def _cell(v: Any, float_format: str | None) -> Any:
    if v is None:
        return ""
    if float_format and isinstance(v, float):
        return float_format.format(v)
    return v


def read_rows_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A CSV written by :func:`write_rows_csv` back as rows: integers and floats as numbers,
    empty cells as ``""``, everything else as text."""
    with open(path, newline="") as f:
        return [{k: _typed(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _typed(v: str | None) -> Any:
    if v is None or v == "":
        return ""
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def as_number(v: Any) -> float | None:
    """``v`` as a float, or None for empty / NaN / non-numeric cells."""
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip().rstrip("x×")
        if not v:
            return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f
