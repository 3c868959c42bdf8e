"""Markdown and files for every report: the Jinja2 templates, one Markdown table writer, CSV
rows in and out, the check of the numbers that reach a table.

Templates (``templates/`` here; the analyses in ``analysis/`` add their own folder) render with
``trim_blocks``/``lstrip_blocks`` (a line holding only a ``{% ... %}`` tag leaves nothing
behind) and ``StrictUndefined`` (a misspelt variable is an error, not an empty string). Every
file is written aside and renamed (:mod:`lbp_wht.io`): a kill leaves the old file or the new
one, never a cut one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..io import atomic_write

TEMPLATES = Path(__file__).resolve().parent / "templates"


class RecordValueError(ValueError):
    """A number that would reach a table is not one (non-numeric, NaN or infinite); the message
    names the file and the key."""


@cache
def environment(*folders: str | os.PathLike):
    """The Jinja2 environment that finds templates in ``folders``, then in ``templates/``."""
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - jinja2 comes with torch
        raise ImportError(
            "the reports need jinja2: pip install 'lbp_wht[reporting]' (or pip install jinja2)"
        ) from e
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([*map(str, folders), str(TEMPLATES)]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` rendered with ``context``."""
    return environment().get_template(template).render(**context)


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
    """A Markdown table, cells as given (``None`` empty). The rule under the header is
    ``| --- | --- |`` or, with ``align`` (``"---"`` / ``"---:"`` per column), ``|---|---:|``."""
    rule = f"| {' | '.join('---' for _ in header)} |" if align is None else f"|{'|'.join(align)}|"
    lines = [f"| {' | '.join(header)} |", rule]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_rows_csv(
    path: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    fields: Sequence[str] | None = None,
    float_format: str | None = None,
) -> Path:
    """Rows as CSV: columns ``fields`` (default: the first row's keys; other keys are dropped),
    ``None`` as an empty cell, floats through ``float_format`` (e.g. ``"{:.4g}"``) if given."""
    return atomic_write(path, rows_csv_text(rows, fields, float_format))


def rows_csv_text(
    rows: Sequence[dict[str, Any]],
    fields: Sequence[str] | None = None,
    float_format: str | None = None,
) -> str:
    """The text :func:`write_rows_csv` writes."""
    fields = list(fields or rows[0])
    f = io.StringIO(newline="")
    wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    wr.writeheader()
    for row in rows:
        wr.writerow({k: _cell(row.get(k), float_format) for k in fields if k in row})
    return f.getvalue()


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
        return parse_rows_csv(f.read())


def parse_rows_csv(text: str) -> list[dict[str, Any]]:
    """:func:`read_rows_csv` of a CSV's text."""
    return [{k: _typed(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


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


def checked_number(v: Any, where: str | os.PathLike, key: str) -> float | None:
    """``v`` as a finite float, None where there is no value (``None``, an empty cell).

    Raises:
        RecordValueError: ``v`` is not a number (text, a list, a boolean), NaN or infinite;
            the message names ``where`` (the file) and ``key``.
    """
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    f = None if isinstance(v, bool) else as_number(v)
    if f is None or not math.isfinite(f):
        raise RecordValueError(f"{where}: {key} = {v!r} is not a finite number")
    return f
