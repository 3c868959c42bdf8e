"""results/cost regenerates from its committed records (the tables from the package, the
hypotheses, agreement and README from analysis/cost_agreement.py); a partial run keeps the
provenance of what it did not regenerate; a record's figures are checked before they reach a
table."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("jinja2")

from lbp_wht.reporting import cost_tables as ct  # noqa: E402
from lbp_wht.reporting.render import RecordValueError, write_rows_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COST = ROOT / "results" / "cost"
sys.path.insert(0, str(ROOT / "analysis"))
import cost_agreement  # noqa: E402  (analysis/, not the package)
from cost_hypotheses import CostHypotheses  # noqa: E402


@pytest.fixture
def cost_copy(tmp_path: Path) -> Path:
    """The committed results/cost without its records (those are read in place)."""
    out = tmp_path / "cost"
    shutil.copytree(COST, out, ignore=shutil.ignore_patterns("records"))
    return out


def test_readme_regenerates_byte_for_byte_from_the_committed_files(cost_copy: Path) -> None:
    cost_agreement.write_readme(ct.CostTables(cost_copy, records=COST / "records"))
    assert (cost_copy / "README.md").read_text() == (COST / "README.md").read_text()


@pytest.mark.parametrize("table", [2, 7])
def test_tables_regenerate_from_the_committed_records(cost_copy: Path, table: int) -> None:
    cost = ct.CostTables(cost_copy, records=COST / "records")
    name = f"table{table}"
    (cost_copy / f"{name}.csv").unlink()
    cost.write_table(table, cost.build_rows(table, cost.paper_rows("classification.csv", table)))
    assert (cost_copy / f"{name}.csv").read_text() == (COST / f"{name}.csv").read_text()
    assert (cost_copy / f"{name}.md").read_text() == (COST / f"{name}.md").read_text()
    assert not cost.records.joinpath("x").exists()  # nothing new measured


def test_table1_is_measured_again_with_the_same_numbers(cost_copy: Path) -> None:
    extra = ct.CostTables(cost_copy).write_table1()
    assert (cost_copy / "table1.csv").read_text() == (COST / "table1.csv").read_text()
    assert (cost_copy / "table1.md").read_text() == (COST / "table1.md").read_text()
    assert extra["speedup_table1"] == pytest.approx(462.422 / 78.207, rel=1e-4)


def test_a_partial_run_does_not_clobber_the_full_runs_provenance(cost_copy: Path) -> None:
    before = {p.name: p.read_bytes() for p in cost_copy.glob("table[2-7].*")}
    old_info = json.loads((cost_copy / "run_info.json").read_text())
    cost = ct.CostTables(cost_copy, records=COST / "records")
    meta = cost.run([1], command="python tools/make_cost_tables.py --tables 1")
    cost_agreement.write_readme(cost)
    info = json.loads((cost_copy / "run_info.json").read_text())
    assert {k: v for k, v in info.items() if k != "partial_runs"} == old_info
    assert info["partial_runs"] == [meta] and meta["tables"] == [1]
    assert {p.name: p.read_bytes() for p in cost_copy.glob("table[2-7].*")} == before
    readme = (cost_copy / "README.md").read_text()
    assert f"Last run: `{old_info['command']}`" in readme
    assert "* `python tools/make_cost_tables.py --tables 1` (tables 1) on" in readme
    # the same partial run again replaces its entry; a full run replaces everything
    again = ct.merge_run_info(info, dict(meta, date="later"), full=False)
    assert [p["date"] for p in again["partial_runs"]] == ["later"]
    assert ct.merge_run_info(again, {"command": "full"}, full=True) == {"command": "full"}


def test_unknown_table_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no cost table \[4\]"):
        ct.CostTables(tmp_path).run([1, 4])
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------ agreement.csv
def _paper_cells() -> set[tuple]:
    """Every printed cost cell of Tables 2, 3, 5, 7 read straight from the paper reference."""
    import csv

    cells = set()
    for name in ("classification.csv", "segmentation.csv"):
        with open(ROOT / "results" / "paper" / name, newline="") as f:
            for r in csv.DictReader(f):
                if r["table"] not in ("2", "3", "5", "7"):
                    continue
                key = (r["table"], r["model"], r["scope"], r["method"], r["r"])
                if r.get("mflops"):
                    cells.add((*key, "MFLOPs"))
                if r.get("speedup") and r["method"] != "full_bp":
                    cells.add((*key, "speedup"))
    return cells


def test_agreement_has_every_printed_cell_and_its_ratios_are_ours_over_paper() -> None:
    rows = ct.read_csv(COST / "agreement.csv")
    keys = [(r["table"], r["model"], r["scope"], r["method"], r["r"], r["column"]) for r in rows]
    assert len(keys) == len(set(keys)) == 113
    assert set(keys) == _paper_cells()
    for r in rows:
        paper = float(r["paper"])
        for v in ("corrected", "authors"):
            assert float(r[f"ratio_{v}"]) == pytest.approx(float(r[f"ours_{v}"]) / paper, abs=6e-4)
        assert r["ours"] == r[f"ours_{r['variant']}"]
        ratio = float(r["ratio"])
        assert ratio == pytest.approx(float(r["ours"]) / paper, abs=6e-4)
        assert abs(ratio - 1) <= min(
            abs(float(r[f"ratio_{v}"]) - 1) for v in ("corrected", "authors")
        )
        within = abs(ratio - 1) <= 0.10 + 1e-9
        assert r["within_10pct"] == str(within)
        if within:
            assert r["explanation"] == "" and r["explained_by"] == ""
        else:  # no cell beyond 10% without an explanation naming what was tried
            assert r["explanation"].startswith(("within 10% under ", "not explained; tried "))
            for h in r["explained_by"].split():
                assert f"under {h} (" in r["explanation"]


def test_agreement_files_regenerate_from_the_committed_tables(cost_copy: Path) -> None:
    names = ("agreement.csv", "agreement_summary.csv", "hypotheses_by_cell.csv",
             "hypotheses_index.csv")  # fmt: skip
    for name in names:
        (cost_copy / name).unlink()
    summary = cost_agreement.write_agreement(cost_copy, ct.read_csv, write_rows_csv)
    for name in names:
        assert (cost_copy / name).read_text() == (COST / name).read_text(), name
    total = summary[-1]
    assert total["table"] == "all" and total["cells"] == 113
    assert total["within_best"] + total["explained_by_hypothesis"] + total["not_explained"] == 113


def test_hypotheses_regenerate_from_the_committed_records(cost_copy: Path) -> None:
    """Every hypothesis variant is read from its committed record (none measured again) and
    gives the committed hypotheses*.csv byte for byte."""
    names = sorted(p.name for p in COST.glob("hypotheses*.csv") if p.name not in
                   ("hypotheses_by_cell.csv", "hypotheses_index.csv"))  # fmt: skip
    assert len(names) == 6
    for name in names:
        (cost_copy / name).unlink()
    before = sorted(p.name for p in (COST / "records").iterdir())
    CostHypotheses(cost_copy, records=COST / "records").hypotheses()
    for name in names:
        assert (cost_copy / name).read_text() == (COST / name).read_text(), name
    assert sorted(p.name for p in (COST / "records").iterdir()) == before


@pytest.mark.parametrize("bad", [math.nan, math.inf, "12.5 MFLOPs", None, [1.0]])
def test_a_record_figure_that_is_not_a_finite_number_is_refused(tmp_path: Path, bad) -> None:
    cost = ct.CostTables(tmp_path, records=tmp_path / "records")
    found = cost.find_config(2, "efficientformer-l1", "partial", "full_bp", None, "cifar100")
    name = f"{Path(found[0]).stem}.json"
    rec = json.loads((COST / "records" / name).read_text())
    if bad is None:  # a figure that is missing altogether is not a number either
        del rec["backprop_flops"]
    else:
        rec["backprop_flops"] = bad
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / name).write_text(json.dumps(rec))
    with pytest.raises(RecordValueError) as err:
        cost.record(found)
    assert str(tmp_path / "records" / name) in str(err.value)
    assert "backprop_flops" in str(err.value)
