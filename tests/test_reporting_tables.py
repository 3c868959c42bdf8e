"""The table builders on the committed results (not synthetic CSVs): Table 8 from
results/latency/table8_cpu.csv (its ``r`` and ``R`` columns), the cost columns of Tables 2-7
from results/cost; the numbers that reach a table are checked (one named error, naming the file
and the key)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

from lbp_wht.reporting import tables  # noqa: E402
from lbp_wht.reporting.render import RecordValueError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"
LATENCY = ROOT / "results" / "latency"


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table8_from_the_committed_latency_csv() -> None:
    t = tables.build_table(
        "8", runs=tables.load_runs([]), cost=tables.load_cost(None), paper_dir=PAPER,
        latency_dir=LATENCY,
    )  # fmt: skip
    assert len(t.rows) == 16
    committed = {
        (int(r["cx"]), int(r["cy"]), r["r"]): r
        for r in _csv(LATENCY / "table8_cpu.csv")
        if r["batch"] == "1" and r["method"] in ("full_bp", "lbp_wht")
    }
    for row in t.rows:
        cx, cy, _ = (int(v) for v in row.section.strip("()").split(","))
        r = "" if row.key[0] == "full_bp" else str(row.key[2])
        ours = committed[(cx, cy, r)]
        assert row.ours["latency_cpu_us"].mean == pytest.approx(float(ours["latency_us"]))
        if r:  # the paper prints "-" for the baseline's speedup, and so do we
            assert row.ours["speedup_cpu"].mean == pytest.approx(float(ours["speedup"]))
            assert row.rank == ours["R"]
        assert row.ours["speedup_gpu"].mean is None  # no GPU run committed
    md = tables.to_markdown(t)
    assert "| (448,1792,49) | EfficientFormer-L1 (Hybrid) | Full BP | - |" in md


def test_cost_columns_from_the_committed_cost_tables() -> None:
    cost = tables.load_cost(ROOT / "results" / "cost")
    runs = tables.load_runs([])
    for n in ("2", "5", "7"):
        t = tables.build_table(n, runs=runs, cost=cost, paper_dir=PAPER)
        committed = {
            (r["model"], r["scope"], r["method"], r["r"]): r
            for r in _csv(ROOT / "results" / "cost" / f"table{n}.csv")
        }
        checked = 0
        for row in t.rows:
            scope = "full" if row.section.startswith("Full") else "partial"
            r = "" if row.key[2] is None else str(row.key[2])
            c = committed.get((row.model, scope, row.key[0], r))
            if c is None:
                continue
            assert row.ours["mflops"].mean == pytest.approx(float(c["ours_mflops"])), row
            checked += 1
        assert checked >= 7, n


def test_dataset_spellings_normalise_and_typos_do_not() -> None:
    assert tables.check_datasets(["stanford-cars", "CIFAR-100"]) == ["cars", "cifar100"]
    assert tables.check_datasets(None) is None
    with pytest.raises(ValueError, match=r"\['cifar-1000'\].*cifar100"):
        tables.check_datasets(["cifar-1000"])


def _run_record(root, value, **extra) -> Path:
    """A record file as an older writer or a hand edit leaves it: written as plain JSON, since
    lbp_wht.runs.records.write_record refuses a value that is not a finite number."""
    path = root / "efficientformer-l1_partial_full_bp_cifar100_s0" / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(kind="train", status="complete", model="efficientformer-l1",
                                    scope="partial", dataset="cifar100", method="full_bp", seed=0,
                                    metric="accuracy/top1", value=value, **extra)))  # fmt: skip
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "88.1%", [88.1], True])
def test_a_run_value_that_is_not_a_finite_number_is_refused(tmp_path, bad) -> None:
    path = _run_record(tmp_path, bad)
    with pytest.raises(RecordValueError) as err:
        tables.load_runs([tmp_path])
    assert str(path) in str(err.value) and "value" in str(err.value)


def test_a_run_without_a_value_is_left_out_and_a_good_one_is_read(tmp_path) -> None:
    _run_record(tmp_path, None)
    assert tables.load_runs([tmp_path]).empty
    _run_record(tmp_path, "88.5")  # a number written as text is still a number
    assert tables.load_runs([tmp_path])["value"].tolist() == [88.5]


def test_one_cell_trained_twice_alike_keeps_the_newest_and_differently_is_refused(tmp_path):
    """Two work roots holding the same cell and seed: a repeat (the same config digest; records
    without one: loading-only keys may differ) gives the newest value; runs that trained
    differently (a grid over ``lbp.padding``, or the learning rate) would lose one silently, so
    the loader names both files and what differs."""
    lbp = dict(method="full_bp", padding="reflect", options={}, strict_load=True)
    old = _run_record(tmp_path / "a", 80.0, timestamp="2026-01-01T00:00:00", lbp=lbp)
    _run_record(tmp_path / "b", 81.0, timestamp="2026-01-02T00:00:00",
                lbp=dict(lbp, strict_load=False))  # fmt: skip
    runs = tables.load_runs([tmp_path / "a", tmp_path / "b"])
    assert runs["value"].tolist() == [81.0] and "lbp" not in runs.columns
    new = _run_record(tmp_path / "b", 81.0, timestamp="2026-01-02T00:00:00",
                      lbp=dict(lbp, padding="zero"))  # fmt: skip
    with pytest.raises(RecordValueError) as err:
        tables.load_runs([tmp_path / "a", tmp_path / "b"])
    msg = str(err.value)
    assert str(old) in msg and str(new) in msg and "lbp.padding 'reflect' vs 'zero'" in msg
    assert "--where lbp.padding=VALUE" in msg
    for padding, value in (("zero", 81.0), ("reflect", 80.0)):
        where = {"lbp.padding": padding}
        assert tables.load_runs([tmp_path / "a", tmp_path / "b"], where)["value"].tolist() == [
            value
        ]
    with pytest.raises(RecordValueError, match="--where lbp.paddding: no record under"):
        tables.load_runs([tmp_path / "a", tmp_path / "b"], {"lbp.paddding": "zero"})  # a typo
    # configs that differ outside the lbp block (a learning-rate grid): told by the digest
    _run_record(tmp_path / "a", 80.0, timestamp="2026-01-01T00:00:00", lbp=lbp, config_digest="d1")
    _run_record(tmp_path / "b", 81.0, timestamp="2026-01-02T00:00:00", lbp=lbp, config_digest="d2")
    with pytest.raises(RecordValueError, match="config_digest d1 vs d2.*--where config_digest="):
        tables.load_runs([tmp_path / "a", tmp_path / "b"])
    where = {"config_digest": "d1"}
    assert tables.load_runs([tmp_path / "a", tmp_path / "b"], where)["value"].tolist() == [80.0]
    _run_record(tmp_path / "a", 80.0, timestamp="2026-01-01T00:00:00", lbp=lbp, config_digest="d2")
    assert tables.load_runs([tmp_path / "a", tmp_path / "b"])["value"].tolist() == [81.0]
    # an older record without the key is not compared on it
    _run_record(tmp_path / "a", 80.0, timestamp="2026-01-01T00:00:00", lbp=dict(method="full_bp"))
    assert tables.load_runs([tmp_path / "a", tmp_path / "b"])["value"].tolist() == [81.0]


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "fast"])
def test_a_cost_cell_that_is_not_a_finite_number_is_refused(tmp_path, bad) -> None:
    path = tmp_path / "table2.csv"
    path.write_text(
        "model,scope,method,ours_mflops,ours_speedup\n"
        "efficientformer-l1,partial,full_bp,1584.59,1.0\n"
        f"efficientformer-l1,partial,lora,{bad},\n"
    )
    with pytest.raises(RecordValueError) as err:
        tables.load_cost(tmp_path)
    assert str(path) in str(err.value) and "ours_mflops" in str(err.value)
    path.write_text(path.read_text().replace(bad, ""))  # an empty cell is a missing value
    cost = tables.load_cost(tmp_path)
    assert cost["mflops"].isna().tolist() == [False, True]


def test_a_transfer_accuracy_that_is_not_a_number_is_refused() -> None:
    recs = [dict(tag="full-bp", seed=s, label="Full BP", method="full_bp", r=None, norm_eval=True,
                 accuracy=acc, train_s=1.0) for s, acc in enumerate([87.0, float("nan")])]  # fmt: skip
    with pytest.raises(RecordValueError, match=r"runs/full-bp_s1\.json: accuracy = nan"):
        tables.transfer_rows(recs, [dict(tag="full-bp", mflops=450.0)], ["full-bp"])
    recs[1]["accuracy"] = 88.0
    (row,) = tables.transfer_rows(recs, [dict(tag="full-bp", mflops=450.0)], ["full-bp"])
    assert row["acc"] == 87.5 and row["n"] == 2 and row["speedup"] == 1.0
