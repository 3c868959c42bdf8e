"""Checks on the paper's own numbers typed into ``results/paper/*.csv``.

These CSVs are the LBP-WHT paper's (NeurIPS 2023) reported numbers, typed once from the paper
text (see ``results/paper/README.md``); nothing in them is our measurement. The tests catch
typing mistakes with invariants the paper's tables must satisfy:

* mAcc is the mean of the six classification datasets (Tables 2, 5);
* speedup is Full BP MFLOPs / row MFLOPs, rounded to 0.1x (Tables 2, 5, 7) and the latency
  ratio for Table 8;
* Table 1's components add up and follow the Table 1 formulas;
* rows duplicated between tables (Table 2 "Full Training" vs Table 5, Table 7 vs Table 2)
  agree;
* where the extracted paper text is available, every typed value occurs in the source line
  it is attributed to.

Pure Python + pandas; no torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"
SEEDS = Path("/work/shared/seeds")
MAIN_TEXT = SEEDS / "002_75d66bc3026d5f18.txt"
APPENDIX_TEXT = SEEDS / "001_cf81e5f17a133cf7.txt"

DATASETS = ["cifar100", "cifar10", "cars", "flowers", "food", "pets"]
MODELS = {
    "efficientformer-l1",
    "efficientformer-l7",
    "efficientformerv2-s0",
    "efficientformerv2-l",
    "swinv2-small-w8",
}
CLASSIFICATION_COLUMNS = [
    "table",
    "scope",
    "model",
    "method",
    "select",
    "r",
    "rank",
    "speedup",
    "mflops",
    "macc",
    *DATASETS,
    "places365",
    "source_row",
]
KEY = ["table", "scope", "model", "method", "r"]
# Rows the paper itself gets inconsistent on (mAcc vs mean, speedup vs MFLOPs ratio). Empty:
# every complete row in Tables 2, 5 and 7 passes; add (table, scope, model, method, r) keys
# here with a comment quoting the paper if a future correction reveals one.
MACC_EXCEPTIONS: set[tuple] = set()


def _read(name: str, **kw) -> pd.DataFrame:
    path = PAPER / name
    assert path.exists(), f"{path} missing: it is the typed paper reference, restore it"
    return pd.read_csv(path, **kw)


def _lp_l1_rank(r: int) -> int:
    """Number of bases of LP_L1-r (Eq. 8; LP_L1-2 -> 3 bases, Sec 3.2): r(r+1)/2."""
    return r * (r + 1) // 2


def _rounded_ratio_ok(num: float, den: float, shown: float, num_dp: int, den_dp: int) -> bool:
    """True if ``shown`` (printed to 0.1) is a rounding of num/den, with num and den
    themselves printed to ``num_dp`` / ``den_dp`` decimals (interval arithmetic)."""
    hn, hd = 0.5 * 10.0**-num_dp, 0.5 * 10.0**-den_dp
    lo, hi = (num - hn) / (den + hd), (num + hn) / (den - hd)
    return lo <= shown + 0.05 + 1e-9 and hi >= shown - 0.05 - 1e-9


# ---------------------------------------------------------------- structure


def test_classification_structure() -> None:
    c = _read("classification.csv")
    assert list(c.columns) == CLASSIFICATION_COLUMNS
    assert set(c.table) == {2, 5, 7}
    assert set(c.scope) <= {"partial", "full"}
    assert set(c.model) <= MODELS
    assert set(c.method) <= {"full_bp", "lora", "lora_all", "lbp_wht"}
    assert not c.duplicated(KEY).any(), c[c.duplicated(KEY, keep=False)]
    assert c.source_row.notna().all()
    # Row counts per block (see README): Table 2 partial 5 models x 6 methods, Table 2 full
    # 5 rows, Table 5 28 rows, Table 7 7 rows.
    counts = c.groupby(["table", "scope"]).size().to_dict()
    assert counts == {(2, "full"): 5, (2, "partial"): 30, (5, "full"): 28, (7, "partial"): 7}
    # Table 7 is Places365 only; Tables 2/5 never have a Places365 value.
    assert c.loc[c.table == 7, "places365"].notna().all()
    assert c.loc[c.table != 7, "places365"].isna().all()
    assert c.loc[c.table == 7, DATASETS + ["macc"]].isna().all().all()


def test_classification_rank_and_select_match_method() -> None:
    c = _read("classification.csv")
    lbp = c[c.method == "lbp_wht"]
    assert (lbp["select"] == "lp_l1").all()
    assert (lbp["rank"] == lbp.r.astype(int).map(_lp_l1_rank)).all()
    other = c[c.method != "lbp_wht"]
    assert other["select"].isna().all() and other.r.isna().all()
    assert (other.loc[other.method.isin(["lora", "lora_all"]), "rank"] == 8).all()
    assert other.loc[other.method == "full_bp", "rank"].isna().all()


def test_classification_values_in_range() -> None:
    c = _read("classification.csv")
    acc = c[DATASETS + ["macc", "places365"]].stack().dropna()
    assert len(acc) > 200
    assert ((acc > 0) & (acc <= 100)).all()
    assert (c.mflops.dropna() > 0).all()
    assert (c.loc[c.method == "full_bp", "speedup"].dropna() == 1.0).all()
    assert (c.loc[c.method != "full_bp", "speedup"].dropna() > 1.0).all()


# ---------------------------------------------------------------- invariants


def test_macc_is_mean_of_six_datasets() -> None:
    c = _read("classification.csv")
    complete = c[c[DATASETS].notna().all(axis=1) & c.macc.notna()]
    assert len(complete) >= 35  # guards against the check silently selecting nothing
    bad = []
    for _, row in complete.iterrows():
        key = tuple(row[k] for k in KEY)
        if key in MACC_EXCEPTIONS:
            continue
        mean = float(row[DATASETS].astype(float).mean())
        if abs(mean - row.macc) > 0.01 + 1e-9:
            bad.append((key, row.macc, round(mean, 4)))
    assert not bad, f"mAcc differs from the mean of the six datasets: {bad}"


def test_speedup_is_full_bp_over_row_mflops() -> None:
    c = _read("classification.csv")
    checked, bad = 0, []
    for key, group in c.groupby(["table", "scope", "model"]):
        full = group.loc[group.method == "full_bp", "mflops"].dropna()
        if full.empty:  # e.g. Table 2 EfficientFormer-L7 partial: Full BP row unreadable
            continue
        for _, row in group.dropna(subset=["speedup", "mflops"]).iterrows():
            checked += 1
            if not _rounded_ratio_ok(full.iloc[0], row.mflops, row.speedup, 2, 2):
                bad.append((key, row.method, row.r, row.speedup, full.iloc[0] / row.mflops))
    assert checked >= 45
    assert not bad, f"speedup != Full BP MFLOPs / MFLOPs: {bad}"


def test_table2_full_training_duplicates_table5() -> None:
    c = _read("classification.csv")
    t2 = c[(c.table == 2) & (c.scope == "full")].set_index(["model", "method", "r"])
    t5 = c[c.table == 5].set_index(["model", "method", "r"])
    cols = ["rank", "speedup", "mflops", "macc", *DATASETS]
    for idx, row in t2.iterrows():
        assert idx in t5.index, f"Table 2 full row {idx} has no Table 5 counterpart"
        other = t5.loc[idx]
        for col in cols:
            if pd.notna(row[col]):
                assert row[col] == other[col], (idx, col, row[col], other[col])


def test_table7_mflops_repeat_table2_l1_partial() -> None:
    """Table 7 trains the same EfficientFormer-L1 stage as Table 2, and prints the same MFLOPs
    (Full BP 1685.01, LP_L1-8 1397.02 are readable in both)."""
    c = _read("classification.csv")
    sel = (c.model == "efficientformer-l1") & (c.scope == "partial")
    t2 = c[sel & (c.table == 2)].set_index(["method", "r"]).mflops.dropna()
    t7 = c[sel & (c.table == 7)].set_index(["method", "r"]).mflops
    assert len(t2) == 2
    for idx, value in t2.items():
        assert t7.loc[idx] == value


def test_table1_components() -> None:
    t = _read("table1.csv").set_index("component")
    assert list(t.index) == [
        "vanilla",
        "lbp_total",
        "projection",
        "low_rank_mm",
        "reverse_projection",
        "overhead",
    ]
    mf = t.mflops
    parts = mf["projection"] + mf["low_rank_mm"] + mf["reverse_projection"]
    assert math.isclose(parts, mf["lbp_total"], abs_tol=1e-9)  # 1.5 + 75.5 + 1.2 = 78.2
    assert math.isclose(mf["projection"] + mf["reverse_projection"], mf["overhead"])
    cx, cy, length, rank = (int(t.iloc[0][k]) for k in ["cx", "cy", "L", "R"])
    assert (cx, cy, length, rank) == (3072, 768, 49, 8)
    # Table 1 formulas evaluated at the Sec 3.3 example, in MFLOPs.
    formula = {
        "projection": (cx + cy) * length * rank,
        "low_rank_mm": 4 * cx * cy * rank,
        "reverse_projection": cx * length * rank,
        "overhead": (2 * cx + cy) * length * rank,
        "vanilla": 4 * cx * cy * length,
    }
    formula["lbp_total"] = (
        formula["projection"] + formula["low_rank_mm"] + formula["reverse_projection"]
    )
    for name, flops in formula.items():
        # The paper prints 462.3 for vanilla BP, but 4*3072*768*49 = 462.42 MFLOPs: the paper
        # is off by 0.12 in the last digit (README "Inconsistencies"), so allow 0.15 there.
        tol = 0.15 if name == "vanilla" else 0.05 + 1e-9
        assert abs(flops / 1e6 - mf[name]) <= tol, (name, flops / 1e6, mf[name])
    # Sec 3.3 percentages: 16.9 % of vanilla, overhead 0.6 % of vanilla and 3.5 % of LBP-WHT.
    assert round(100 * mf["lbp_total"] / mf["vanilla"], 1) == 16.9
    assert round(100 * mf["overhead"] / mf["vanilla"], 1) == 0.6
    assert round(100 * mf["overhead"] / mf["lbp_total"], 1) == 3.5


def test_segmentation_structure() -> None:
    s = _read("segmentation.csv")
    assert list(s.columns) == [
        "table",
        "scope",
        "model",
        "method",
        "select",
        "r",
        "rank",
        "mflops",
        "cityscapes",
        "voc12aug",
        "source_row",
    ]
    assert len(s) == 12 and (s.table == 3).all() and (s.model == "segformer-mit-b0").all()
    assert s[["mflops", "cityscapes", "voc12aug"]].notna().all().all()
    lbp = s[s.method == "lbp_wht"]
    assert (lbp["rank"] == lbp.r.astype(int).map(_lp_l1_rank)).all()
    # LBP-WHT is cheaper than Full BP in both scopes.
    for _, g in s.groupby("scope"):
        full = g.loc[g.method == "full_bp", "mflops"].iloc[0]
        assert (g.loc[g.method != "full_bp", "mflops"] < full).all()


def test_table4_table6_table8_structure() -> None:
    t4 = _read("table4.csv")
    assert list(t4.method) == ["lp_l1", "lp_linf", "lhe"]
    assert list(t4["rank"]) == [10, 9, 10]
    t6 = _read("table6.csv")
    assert list(t6.method) == ["full_bp", "lora_all"] + ["lbp_wht+lora_all"] * 3
    assert list(t6.r.dropna().astype(int)) == [2, 4, 8]
    # Cost grows with r.
    lbp6 = t6[t6.method == "lbp_wht+lora_all"]
    assert lbp6.gflops.is_monotonic_increasing and lbp6.activation_mb.is_monotonic_increasing
    t8 = _read("table8.csv")
    assert len(t8) == 16 and t8.groupby(["model", "cx", "cy"]).size().eq(4).all()
    lbp8 = t8[t8.method == "lbp_wht"]
    assert (lbp8["rank"] == lbp8.r.astype(int).map(_lp_l1_rank)).all()


def test_table8_speedup_is_latency_ratio() -> None:
    t8 = _read("table8.csv")
    bad = []
    for key, g in t8.groupby(["model", "cx", "cy"]):
        full = g[g.method == "full_bp"].iloc[0]
        for _, row in g[g.method != "full_bp"].iterrows():
            for dev in ["cpu", "gpu"]:
                lat = f"latency_{dev}_us"
                if not _rounded_ratio_ok(full[lat], row[lat], row[f"speedup_{dev}"], 2, 2):
                    bad.append((key, row.r, dev, row[f"speedup_{dev}"], full[lat] / row[lat]))
    assert not bad, bad


def test_prose_claims_against_tables() -> None:
    """Numbers quoted in the paper's prose that can be recomputed from the typed tables."""
    c = _read("classification.csv")
    s = _read("segmentation.csv")
    t6 = _read("table6.csv")
    claims = _read("prose_claims.csv").set_index("claim_id").value

    def cls(table, scope, model, method, r=None):
        sel = (c.table == table) & (c.scope == scope) & (c.model == model) & (c.method == method)
        sel &= c.r.isna() if r is None else (c.r == r)
        assert sel.sum() == 1
        return c[sel].iloc[0]

    # Sec 4.2: S0 full training, LP_L1-7 needs 66.68 MFLOPs less than LoRA-all, +2 % CIFAR100.
    lora_all = cls(2, "full", "efficientformerv2-s0", "lora_all")
    lp7 = cls(2, "full", "efficientformerv2-s0", "lbp_wht", 7)
    lp4 = cls(2, "full", "efficientformerv2-s0", "lbp_wht", 4)
    assert round(lora_all.mflops - lp7.mflops, 2) == claims["s42_s0_lp7_mflops_saving"]
    assert round(lp7.cifar100 - lora_all.cifar100) == claims["s42_s0_lp7_acc_gain"]
    # "LP_L1-4 (rank 10) only requires 1187 MFLOPs, which is 62% of ... LoRA-all".
    assert round(lp4.mflops) == claims["s42_s0_lp4_mflops"]
    assert round(100 * lp4.mflops / lora_all.mflops) == claims["s42_s0_lp4_cost_fraction"]
    # Sec 4.2: L1 partial LP_L1-8 CIFAR100 79.34 % at 1.2x (Table 2 row readable).
    lp8 = cls(2, "partial", "efficientformer-l1", "lbp_wht", 8)
    assert lp8.cifar100 == claims["s42_l1_lp8_cifar100"]
    assert lp8.speedup == claims["s42_l1_lp8_speedup"]
    # Sec 4.2 "LP_L1-2 requires 8.9 MFLOPs fewer than LoRA" (L1 partial). Those Table 2 cells
    # are unreadable; Table 7 prints the same model/stage: 242.61 - 233.62 = 8.99, which the
    # prose truncates to 8.9 (abstract: "9 MFLOPs"). Tolerance 0.1 accepts the truncation.
    lora7 = cls(7, "partial", "efficientformer-l1", "lora")
    lp2_7 = cls(7, "partial", "efficientformer-l1", "lbp_wht", 2)
    diff = lora7.mflops - lp2_7.mflops
    assert abs(diff - claims["s42_l1_lp2_mflops_saving"]) < 0.1
    assert round(diff) == claims["abs_l1_mflops_saving"]
    # Sec 4.2 "LP_L1-4 ... 3.5x speedup" for L1 partial: Table 7's LP_L1-4 row agrees.
    assert cls(7, "partial", "efficientformer-l1", "lbp_wht", 4).speedup == 3.5
    # Sec 4.3 says LP_L1-4, but 1481.9 MFLOPs, +0.9 mIoU over LoRA-all on Cityscapes and 4.2x
    # vs LoRA-all are all the LP_L1-2 row of Table 3 (LP_L1-4 is 2725.39 MFLOPs, +2.9 mIoU).
    # The paper's prose names the wrong row; we check the numbers against LP_L1-2.
    seg = s[s.scope == "partial"]
    seg_lp2 = seg[(seg.method == "lbp_wht") & (seg.r == 2)].iloc[0]
    seg_la = seg[seg.method == "lora_all"].iloc[0]
    assert round(seg_lp2.mflops, 1) == claims["s43_city_mflops"]
    assert round(seg_lp2.cityscapes - seg_la.cityscapes, 1) == claims["s43_city_gain"]
    assert round(seg_la.mflops / seg_lp2.mflops, 1) == claims["s43_city_speedup"]
    # Appendix B: LP_L1-4 + LoRA-all vs LoRA-all: 4.7x GFLOPs, 2.5x memory, -1.4 CIFAR100.
    la6 = t6[t6.method == "lora_all"].iloc[0]
    lp4_6 = t6[(t6.method == "lbp_wht+lora_all") & (t6.r == 4)].iloc[0]
    assert _rounded_ratio_ok(la6.gflops, lp4_6.gflops, claims["appB_speedup"], 0, 0)
    mem = (la6.activation_mb + la6.gradient_mb) / (lp4_6.activation_mb + lp4_6.gradient_mb)
    assert round(mem, 1) == claims["appB_memory"]
    assert round(la6.cifar100 - lp4_6.cifar100, 1) == claims["appB_acc_drop"]


# ---------------------------------------------------------------- against the source text


def _source_lines() -> tuple[list[str], str]:
    if not (MAIN_TEXT.exists() and APPENDIX_TEXT.exists()):
        pytest.skip(f"paper text not found under {SEEDS}; cannot cross-check the typing")
    return MAIN_TEXT.read_text().splitlines(), APPENDIX_TEXT.read_text()


def test_table2_values_occur_in_their_source_lines() -> None:
    """Every Table 2 value occurs, as printed, in the extracted line(s) its row cites."""
    main_lines, _ = _source_lines()
    c = _read("classification.csv", dtype=str, keep_default_na=False)
    cols = ["speedup", "mflops", "macc", *DATASETS]
    missing = []
    for _, row in c[c.table == "2"].iterrows():
        m = re.search(r"seed 002 lines? (\d+)(?:-(\d+))?", row.source_row)
        assert m, f"Table 2 row without a source line: {row.source_row}"
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        text = "\n".join(main_lines[first - 1 : last])
        missing += [(first, col, row[col]) for col in cols if row[col] and row[col] not in text]
    assert not missing, missing


def test_appendix_and_table3_values_occur_in_text() -> None:
    main_lines, appendix = _source_lines()
    main = "\n".join(main_lines)
    checks = [
        ("classification.csv", appendix, ["speedup", "mflops", "macc", *DATASETS, "places365"]),
        ("table6.csv", appendix, ["gflops", "activation_mb", "gradient_mb", "cifar100"]),
        ("table8.csv", appendix, ["latency_cpu_us", "latency_gpu_us"]),
        ("segmentation.csv", main, ["mflops", "cityscapes", "voc12aug"]),
        ("table4.csv", main, ["cifar100", "cifar10"]),
    ]
    missing = []
    for name, text, cols in checks:
        df = _read(name, dtype=str, keep_default_na=False)
        if name == "classification.csv":
            df = df[df.table.isin(["5", "7"])]
        missing += [(name, col, v) for col in cols for v in df[col] if v and v not in text]
    assert not missing, missing
