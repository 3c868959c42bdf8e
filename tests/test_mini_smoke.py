"""The CPU mini-reproduction (`make demo`, issue 6) end to end, in its smoke form.

Runs ``scripts/reproduce_mini.sh --smoke --out TMP`` (about 1-3 minutes on 2 cores: a short
pretraining, a few short adaptation runs through ``tools/sweep.py`` / ``tools/train.py``, the cost
measurement, ``tools/make_tables.py``, ``tools/make_figures.py`` and the report) and checks that
it produces the same kinds of files as the full run, with cells filled from real records. A
second invocation must reuse everything (no run restarts).

Needs the real Fashion-MNIST files (``make data``; CI installs the Debian package
``dataset-fashion-mnist``); skipped with the reason when they are absent.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST_ROOT = Path(os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]  # fmt: skip


def _have_fmnist() -> bool:
    return all((FMNIST_ROOT / f).exists() or (FMNIST_ROOT / f"{f}.gz").exists() for f in FILES)


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _have_fmnist(),
        reason=f"Fashion-MNIST idx files not found in {FMNIST_ROOT}: run `make data` "
        "(apt-get install dataset-fashion-mnist) or set FMNIST_ROOT",
    ),
]

SMOKE_RUNS = {  # run id -> (method, select, r) of the smoke's adaptation runs
    "target_method=head_only_s0": ("head_only", None, None),
    "target_method=full_bp_s0": ("full_bp", None, None),
    "target_method=lora_all_s0": ("lora_all", None, None),
    "target_method=losa_s0": ("losa", None, None),
    "target_method=lbp_wht_select=lp_l1_r=2_s0": ("lbp_wht", "lp_l1", 2),
    "target_method=lbp_wht_select=lp_l1_r=8_s0": ("lbp_wht", "lp_l1", 8),
}


def _run_smoke(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "FMNIST_ROOT": str(FMNIST_ROOT)}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "reproduce_mini.sh"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("mini-smoke")
    proc = _run_smoke(out)
    assert proc.returncode == 0, (
        f"reproduce_mini.sh --smoke failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
        f"{proc.stderr[-4000:]}"
    )
    return out, proc


def test_smoke_writes_every_kind_of_file(smoke) -> None:
    out, _ = smoke
    for rel in [
        "RESULTS.md",
        "timing.json",
        "table2/table2.md",
        "table2/table2.csv",
        "table2/table2.tex",
        "table4/table4.md",
        "cost/mini_cost.csv",
        "figures/figure3.png",
        "figures/figure3.pdf",
        "figures/figure4.png",
        "figures/figure5.png",
        "figures/figure5_data.csv",
        "runs/pretrain/source_s0/record.json",
    ]:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, f"missing {rel}"


def test_smoke_records_are_complete_and_what_was_asked(smoke) -> None:
    out, _ = smoke
    for run_id, (method, select, r) in SMOKE_RUNS.items():
        rec = json.loads((out / "runs" / "adapt" / run_id / "record.json").read_text())
        assert rec["status"] == "complete"
        assert (rec["method"], rec["select"], rec["r"]) == (method, select, r)
        assert rec["model"] == "mini-efficientformer" and rec["scope"] == "partial"
        assert rec["dataset"] == "fmnist-5to9"
        assert 0.0 <= rec["value"] <= 100.0
        # 5-way target task trained from the source checkpoint with a fresh head.
        assert rec["lbp"]["drop_keys"] == ["head.*"]
    spec = json.loads(next((out / "runs" / "spectrum").glob("*/spectrum.json")).read_text())
    assert len(spec["energy"]) == 8 and len(spec["energy"][0]) == 8


def test_smoke_tables_hold_measured_numbers(smoke) -> None:
    out, _ = smoke
    with open(out / "cost" / "mini_cost.csv") as f:
        cost = {row["tag"]: float(row["mflops"]) for row in csv.DictReader(f)}
    # LBP-WHT with 3 bases must cost less backprop than Full BP, and more bases more.
    assert cost["lp-l1-r2"] < cost["full-bp"]
    assert cost["lp-l1-r2"] < cost["lp-l1-r8"]
    # Head only back-propagates through the head alone.
    assert cost["head-only"] < 0.01 * cost["full-bp"]
    # LoSA back-propagates through its side network and the head only.
    assert cost["head-only"] < cost["losa"] < 0.1 * cost["lp-l1-r2"]
    md = (out / "table2" / "table2.md").read_text()
    for label in ("Full BP", "LoRA-all", "LoSA", "LP_L1-2", "LP_L1-8"):
        line = next(ln for ln in md.splitlines() if f"| {label} |" in ln)
        cells = [c.strip() for c in line.split("|")]
        assert any(c.replace(".", "", 1).isdigit() for c in cells[4:]), line
    report = (out / "RESULTS.md").read_text()
    assert "SMOKE RUN" in report
    assert "Reading the numbers against the paper's claims" in report


def test_smoke_rerun_reuses_everything(smoke) -> None:
    out, _ = smoke
    proc = _run_smoke(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    to_run = [int(n) for n in re.findall(r"(\d+) to run", text)]
    assert to_run and not any(to_run), to_run  # every sweep found its runs complete
    assert " done    " not in text  # and nothing ran again
