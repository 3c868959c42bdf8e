"""Structure checks on ``results/paper/successors.csv``.

The file holds the headline numbers that five later papers (HOT, INSTANT, VeLoRA, WTA-CRS,
LoRA-FA) state about themselves, typed from their abstracts / introductions (see the
"successors' own claims" section of ``results/paper/README.md``). None of them is our
measurement. These tests catch typing mistakes: every row names one of the five methods, the
value is a number that occurs, as typed, in the quoted sentence, and every row cites a URL.

Standard library only; no torch.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

CSV_PATH = Path(__file__).resolve().parents[1] / "results" / "paper" / "successors.csv"
COLUMNS = [
    "claim_id",
    "method",
    "quantity",
    "value",
    "unit",
    "baseline",
    "setting",
    "source",
    "quote",
]
METHODS = {"hot", "instant", "velora", "wta_crs", "lora_fa"}


def _rows() -> list[dict[str, str]]:
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_columns():
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == COLUMNS


def test_has_rows_and_no_empty_cells():
    rows = _rows()
    assert rows, "successors.csv has no rows"
    for row in rows:
        assert None not in row, f"{row.get('claim_id')}: more cells than columns"
        for col in COLUMNS:
            assert row[col] is not None and row[col].strip(), f"{row['claim_id']}: empty {col}"


def test_method_vocabulary():
    bad = {r["claim_id"]: r["method"] for r in _rows() if r["method"] not in METHODS}
    assert not bad, f"methods outside {sorted(METHODS)}: {bad}"


def test_claim_ids_unique():
    ids = [r["claim_id"] for r in _rows()]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"duplicate claim_id: {dupes}"


def test_quantity_is_snake_case():
    for r in _rows():
        q = r["quantity"]
        assert q == q.lower() and " " not in q and q.replace("_", "").isalnum(), q


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["claim_id"])
def test_value_parses_and_is_quoted(row):
    value = float(row["value"])
    assert math.isfinite(value) and value > 0
    assert row["value"] in row["quote"], (
        f"{row['claim_id']}: value {row['value']!r} does not occur in its quote"
    )


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["claim_id"])
def test_source_is_url(row):
    assert row["source"].startswith(("http://", "https://")), row["source"]
