"""Tables 2-8 and Figures 3-5 from a small set of synthetic run / cost / latency records.

Checks that our cells hold exactly the records' statistics, the paper's cells exactly the
reference CSV's values, that cells without records stay empty, and that every file exists.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from lbp_wht.experiments.catalog import Cell  # noqa: E402
from lbp_wht.reporting import figures, tables  # noqa: E402
from lbp_wht.runs.records import write_record  # noqa: E402  (after the optional-extra checks)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"
L1 = "efficientformer-l1"
DATASETS = ["cifar100", "cifar10", "cars", "flowers", "food", "pets"]
RECORD_NAMES = {
    "cars": "stanford-cars",
    "flowers": "flowers102",
    "food": "food101",
    "pets": "oxford-pets",
}  # as the configs' dataset_name writes them


def _rec(root: Path, cell: Cell, seed: int, value: float, **extra) -> None:
    write_record(
        root / cell.run_id(seed) / "record.json",
        dict(
            kind="train",
            status=extra.pop("status", "complete"),
            model=cell.model,
            scope=cell.scope,
            dataset=RECORD_NAMES.get(cell.dataset, cell.dataset),
            method=cell.method,
            select=cell.select,
            r=cell.r,
            rank=cell.rank,
            seed=seed,
            metric="accuracy/top1",
            value=value,
            **extra,
        ),
    )


def _cell(method, select=None, r=None, dataset="cifar100", model=L1, scope="partial", rank=None):
    return Cell(model, scope, method, select, r, rank, dataset)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tables")
    runs, cost, lat = tmp / "runs", tmp / "cost", tmp / "latency"
    # Table 2, L1 partial Full BP: all six datasets, two seeds (-> mAcc and std).
    for i, ds in enumerate(DATASETS):
        for seed, delta in ((0, 0.0), (1, 1.0)):
            _rec(runs, _cell("full_bp", dataset=ds), seed, 80.0 + i + delta)
    # LP_L1-8: CIFAR-100 only (mAcc must stay empty); LP_L1-2..4 on CIFAR-100 for Figure 3.
    _rec(runs, _cell("lbp_wht", "lp_l1", 8), 0, 79.0)
    for r, acc in ((2, 70.0), (3, 74.0), (4, 76.0)):
        _rec(runs, _cell("lbp_wht", "lp_l1", r), 0, acc)
    _rec(runs, _cell("lora_all"), 0, 75.0)
    # Records that must be ignored: not complete, a test record, a spectrum file.
    _rec(runs, _cell("lora"), 0, 99.0, status="running")
    write_record(runs / "x" / "test_record.json", dict(status="complete", kind="test", value=1))
    # Table 3 (mIoU), Table 4 (LHE), Table 6 (LBP + LoRA-all), Table 7 (Places365).
    _rec(runs, _cell("lbp_wht", "lp_l1", 4, "cityscapes", "segformer-mit-b0", "full"), 0, 64.0)
    _rec(runs, _cell("lbp_wht", "lhe", None, "cifar10", rank=10), 0, 94.0)
    _rec(runs, _cell("lbp_wht+lora_all", "lp_l1", 4, "cifar10"), 0, 93.5)
    _rec(runs, _cell("lora", dataset="places365"), 0, 50.0)
    # Figure 5 spectrum, saved by LBPWHTHook in the Figure 5 run's work dir.
    fig5 = Cell(L1, "partial", "lbp_wht", "lp_l1", 15, None, "cifar100", variant="spectrum")
    energy = [[2.0 ** -(i + j) for j in range(8)] for i in range(8)]
    d = runs / fig5.run_id(0)
    d.mkdir(parents=True)
    (d / "spectrum.json").write_text(
        json.dumps(
            dict(layer="backbone.network.3.5.token_mixer.proj", order=8, steps=3, energy=energy)
        )
    )
    # Our measured cost (bp_mflops), as tools/make_cost_tables.py writes it.
    cost.mkdir()
    with open(cost / "classification.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "table",
                "model",
                "scope",
                "method",
                "select",
                "r",
                "rank",
                "bp_mflops",
                "mflops_paper",
            ]
        )
        w.writerow([2, L1, "partial", "full_bp", "", "", "", 1600.0, 1685.01])
        w.writerow([2, L1, "partial", "lora_all", "", "", "", 1000.0, ""])
        for r in (2, 3, 4, 8):
            w.writerow([2, L1, "partial", "lbp_wht", "lp_l1", r, r * (r + 1) // 2, 100.0 * r, ""])
    with open(cost / "table6.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "scope", "method", "select", "r", "gflops", "activation_mb", "gradient_mb"]
        )
        w.writerow([L1, "partial", "lbp_wht+lora_all", "lp_l1", 4, 12.5, 30.0, 44.0])
    lat.mkdir()
    with open(lat / "table8_cpu.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["device", "model", "cx", "cy", "L", "batch", "method", "r", "latency_us", "speedup"]
        )
        w.writerow(["cpu", L1, 448, 1792, 49, 1, "full_bp", "", 1000.0, 1.0])
        w.writerow(["cpu", L1, 448, 1792, 49, 1, "lbp_wht", 2, 250.0, 4.0])
        w.writerow(["cpu", L1, 448, 1792, 49, 64, "lbp_wht", 2, 9999.0, 9.0])  # not batch 1
    out = tmp / "results"
    tables.make_tables(
        runs=tables.load_runs([runs]),
        cost=tables.load_cost(cost),
        paper_dir=PAPER,
        out=out,
        latency_dir=lat,
    )
    written = figures.make_figures(
        runs_roots=[runs], cost_dir=cost, paper_dir=PAPER, out=out / "figures"
    )
    return out, written


def _table(out: Path, n: int) -> pd.DataFrame:
    return pd.read_csv(out / f"table{n}" / f"table{n}.csv")


def _row(df: pd.DataFrame, **where) -> pd.Series:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k].isna()] if v is None else sel[sel[k] == v]
    assert len(sel) == 1, (where, sel)
    return sel.iloc[0]


def _empty(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def test_every_table_file_exists(synthetic):
    out, _ = synthetic
    for n in range(2, 9):
        for ext in ("md", "csv", "tex"):
            p = out / f"table{n}" / f"table{n}.{ext}"
            assert p.exists() and p.stat().st_size > 0, p
        tex = (out / f"table{n}" / f"table{n}.tex").read_text()
        assert r"\begin{tabular}" in tex and r"\bottomrule" in tex


def test_table2_cells_ours_paper_and_empty(synthetic):
    out, _ = synthetic
    t2 = _table(out, 2)
    # The paper's rows, in its order: 30 partial + 5 full-training rows.
    assert len(t2) == 35
    full = _row(t2, model=L1, method="full_bp", section=tables.SECTION_TITLES["2"]["partial"])
    assert full["cifar100"] == pytest.approx(80.5) and full["cifar100_n"] == 2
    assert full["cifar100_std"] == pytest.approx(math.sqrt(0.5))
    assert _empty(full["cifar100_paper"])  # unreadable in the paper: empty, not filled
    assert full["cifar10_paper"] == pytest.approx(95.23)
    assert full["macc"] == pytest.approx(83.0)  # mean of per-seed means 82.5 and 83.5
    assert full["macc_n"] == 2 and full["macc_paper"] == pytest.approx(88.66)
    assert full["mflops"] == pytest.approx(1600.0) and full["speedup"] == pytest.approx(1.0)
    assert full["mflops_paper"] == pytest.approx(1685.01)

    lp8 = _row(t2, model=L1, method="lbp_wht", r=8, section=full["section"])
    assert lp8["cifar100"] == pytest.approx(79.0) and _empty(lp8["cifar100_std"])
    assert _empty(lp8["cifar10"]) and lp8["cifar10_n"] == 0  # no run: empty cell
    assert _empty(lp8["macc"])  # five datasets missing: no mAcc
    assert lp8["cifar100_paper"] == pytest.approx(79.34)
    assert lp8["speedup"] == pytest.approx(1600.0 / 800.0)  # derived from our cost records
    assert lp8["speedup_paper"] == pytest.approx(1.2) and str(lp8["R"]) == "36"

    lora = _row(t2, model=L1, method="lora", section=full["section"])
    assert _empty(lora["cifar100"])  # its record is 'running', not complete
    # Rows only the records have (LP_L1-3) are not in the paper layout by default.
    assert not ((t2["model"] == L1) & (t2["r"] == 3)).any()

    md = (out / "table2" / "table2.md").read_text()
    assert "| EfficientFormer-L1 (Hybrid) | Full BP | - | 1.0× |  | 83.00 ± 0.71 | 88.66 |" in md
    assert "LP_L1-8 | 36 | 2.0× | 1.2× |" in md


def test_other_tables(synthetic):
    out, _ = synthetic
    t3 = _table(out, 3)
    assert len(t3) == 12
    seg = _row(t3, method="lbp_wht", r=4, section="Full Training")
    assert seg["cityscapes"] == pytest.approx(64.0) and seg["cityscapes_paper"] == 64.72
    assert _empty(seg["voc12aug"]) and seg["voc12aug_paper"] == 68.85
    assert "speedup" not in t3.columns and "macc" not in t3.columns  # the paper's layout

    t4 = _table(out, 4)
    assert list(t4["label"]) == ["LP_L1-4", "LP_Linf-3", "LHE"]
    lhe = _row(t4, select="lhe")
    assert lhe["cifar10"] == pytest.approx(94.0) and _empty(lhe["cifar100"])
    assert lhe["cifar100_paper"] == pytest.approx(78.06) and str(lhe["R"]) == "10"

    t5 = _table(out, 5)
    assert len(t5) == 28 and t5["cifar100"].isna().all()  # no full-training records

    t6 = _table(out, 6)
    row = _row(t6, method="lbp_wht+lora_all", r=4)
    assert row["cifar10"] == pytest.approx(93.5) and row["cifar10_paper"] == pytest.approx(93.74)
    assert row["gflops"] == pytest.approx(12.5) and row["gflops_paper"] == 13
    assert row["activation_mb"] == 30 and row["gradient_mb_paper"] == 44
    assert _empty(_row(t6, method="full_bp")["gflops"])

    t7 = _table(out, 7)
    assert len(t7) == 7
    lora = _row(t7, method="lora")
    assert lora["places365"] == pytest.approx(50.0) and lora["places365_paper"] == 50.64

    t8 = _table(out, 8)
    assert len(t8) == 16
    lp2 = _row(t8, section="(448,1792,49)", method="lbp_wht", r=2)
    assert lp2["speedup_cpu"] == pytest.approx(4.0) and lp2["latency_cpu_us"] == 250.0
    assert lp2["speedup_cpu_paper"] == pytest.approx(2.2) and _empty(lp2["speedup_gpu"])
    assert _empty(_row(t8, section="(448,1792,49)", method="full_bp")["speedup_cpu"])


def test_figures(synthetic):
    out, written = synthetic
    assert set(written) == {"3", "4", "5"}
    for paths in written.values():
        for p in paths:
            assert p.exists() and p.stat().st_size > 0, p
        assert {p.suffix for p in paths} >= {".png", ".pdf"}
    f3 = pd.read_csv(out / "figures" / "figure3_data.csv")
    ours = f3[(f3["source"] == "ours") & (f3["model"] == L1)]
    # Points need both a record and our cost: LP_L1-2/3/4/8, Full BP, LoRA-all (not LoRA).
    assert sorted(ours["method"].unique()) == ["full_bp", "lbp_wht", "lora_all"]
    assert sorted(ours[ours["method"] == "lbp_wht"]["r"]) == [2, 3, 4, 8]
    paper = f3[(f3["source"] == "paper") & (f3["model"] == L1)]
    assert list(paper["acc"]) == [79.34]  # the only L1 row with CF100 and MFLOPs in Table 2
    f4 = pd.read_csv(out / "figures" / "figure4_data.csv")
    s = _row(f4, model=L1, source="ours", r_from=2)
    assert s["r_to"] == 3 and s["slope_pp_per_gflop"] == pytest.approx(4.0 / 0.1)
    f5 = pd.read_csv(out / "figures" / "figure5_data.csv", index_col=0)
    assert f5.shape == (8, 8) and f5.iloc[0, 0] == 1.0


def test_spectrum_share_and_validation(tmp_path):
    import numpy as np

    e = np.zeros((8, 8))
    e[0, 0], e[0, 1], e[7, 7] = 3.0, 1.0, 4.0
    assert figures.lp_l1_share(e, 2) == pytest.approx(0.5)
    bad = tmp_path / "spectrum.json"
    bad.write_text(json.dumps(dict(energy=[[0.0] * 8] * 8)))
    with pytest.raises(ValueError, match="not all zero"):
        figures.load_spectrum(bad)


MINI = "mini-efficientformer"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Proxy tables of a model the paper does not have (the CPU mini run): one dataset,
    head-only among the methods, as scripts/reproduce_mini.sh writes them."""
    tmp = tmp_path_factory.mktemp("mini")
    runs, cost = tmp / "runs", tmp / "cost"
    for seed in (0, 1):
        _rec(runs, _cell("head_only", dataset="fmnist-5to9", model=MINI), seed, 75.0 + seed)
        _rec(runs, _cell("full_bp", dataset="fmnist-5to9", model=MINI), seed, 88.0 + seed)
        for r in (2, 4):
            _rec(runs, _cell("lbp_wht", "lp_l1", r, "fmnist-5to9", MINI), seed, 80.0 + r)
    cost.mkdir()
    with open(cost / "mini_cost.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "scope", "method", "select", "r", "rank", "mflops"])
        w.writerow([MINI, "partial", "head_only", "", "", "", 0.00048])
        w.writerow([MINI, "partial", "full_bp", "", "", "", 40.0])
        for r in (2, 4):
            w.writerow([MINI, "partial", "lbp_wht", "lp_l1", r, "", 10.0 * r])
    out = tmp / "results"
    tables.make_tables(
        runs=tables.load_runs([runs]),
        cost=tables.load_cost(cost),
        paper_dir=PAPER,
        out=out,
        tables=["2", "4"],
        models=[MINI],
        datasets=["fmnist-5to9"],
    )
    written = figures.make_figures(
        runs_roots=[runs],
        cost_dir=cost,
        paper_dir=PAPER,
        out=out / "figures",
        figures=["3"],
        models=[MINI],
        dataset="fmnist-5to9",
    )
    return out, written


def test_head_only_is_a_proxy_row(mini):
    out, _ = mini
    t2 = _table(out, 2)
    assert list(t2["label"]) == ["Head only", "Full BP", "LP_L1-2", "LP_L1-4"]
    head = _row(t2, method="head_only")
    assert str(head["R"]) == "-" and head["fmnist-5to9"] == pytest.approx(75.5)
    # no speedup: Full BP / the head's own backward (40 / 0.00048) would only measure how
    # small the head is; "-" in the table, explained by a note, empty in the CSV
    assert pd.isna(head["speedup"]) and not head["extra"]
    md = (out / "table2" / "table2.md").read_text()
    assert "| mini EfficientFormer | Head only | - | - |" in md
    assert "- Head only: speedup shown as -. Its backprop is the task head's own" in md
    assert "83333" not in md
    assert "| 0.00048 |" in md  # MFLOPs: not printed as 0.00
    # one dataset: no mAcc column and no note about six datasets
    assert "macc" not in t2.columns and "mAcc" not in md and "six" not in md


def test_table4_title_names_the_models_of_its_rows(mini, synthetic):
    out, _ = mini
    md = (out / "table4" / "table4.md").read_text()
    assert md.startswith("# Table 4: base selection for mini EfficientFormer (partial")
    assert "EfficientFormer-L1" not in md
    paper_out, _ = synthetic
    assert "for EfficientFormer-L1 (partial" in (paper_out / "table4" / "table4.md").read_text()


def test_macc_note_follows_the_datasets():
    runs = tables.load_runs([])
    cost = tables.load_cost(None)

    def table2(ds):
        return tables.build_table(
            "2", runs=runs, cost=cost, paper_dir=PAPER, models=[L1], datasets=ds
        )

    six = table2(None)
    assert any("mAcc" in c.header for c in six.columns)
    assert six.notes == [
        "mAcc: mean over the six datasets (per seed, then over seeds); empty unless all six ran."
    ]
    assert any(r.paper.get("macc") is not None for r in six.rows)
    two = table2(["cifar100", "cifar10"])
    assert "the 2 datasets of this table (CF100, CF10" in two.notes[0]
    assert all(r.paper.get("macc") is None for r in two.rows)  # the paper's is over six
    one = table2(["cifar100"])
    assert not any(c.name == "macc" for c in one.columns) and one.notes == []


def test_extra_rows_admit_head_only(tmp_path):
    runs = tmp_path / "runs"
    _rec(runs, _cell("head_only"), 0, 60.0)
    _rec(runs, _cell("full_bp"), 0, 80.0)
    df = tables.load_runs([runs])
    cost = tables.load_cost(None)
    t = tables.build_table("2", runs=df, cost=cost, paper_dir=PAPER, models=[L1], extra_rows=True)
    head = [r for r in t.rows if r.key[0] == "head_only"]
    assert len(head) == 1 and head[0].extra and head[0].rank == "-"
    assert "Head only (extra)" in tables.to_markdown(t)
    t = tables.build_table("2", runs=df, cost=cost, paper_dir=PAPER, models=[L1])
    assert not any(r.key[0] == "head_only" for r in t.rows)  # paper layout by default


def test_figure3_draws_head_only_as_a_baseline(mini):
    out, written = mini
    f3 = pd.read_csv(out / "figures" / "figure3_data.csv")
    head = _row(f3, method="head_only")
    assert head["acc"] == pytest.approx(75.5) and head["mflops"] == pytest.approx(0.00048)
    assert sorted(f3["method"].unique()) == ["full_bp", "head_only", "lbp_wht"]
    assert all(p.exists() for p in written["3"])
