"""The latency tools (issue 7): Table 8 output, the roofline model and the allocator switch."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import benchmark_latency as bl  # noqa: E402


def test_roofline_bound_takes_the_slower_of_flops_and_weight_traffic() -> None:
    # Full BP 10 s, its GEMMs 8 s, one streaming pass 1 s per round.
    # Compute-bound: low-rank GEMMs 0.1 * 8 = 0.8 s > weight traffic 0.5 * 1 -> 10 / 1.8.
    assert bl.roofline_bound([10.0], [8.0], [1.0], 0.1, 0.5) == pytest.approx(10 / 1.8)
    # Memory-bound (batch 1): weight traffic 3 * 1 = 3 s > 0.8 s -> 10 / 4.
    assert bl.roofline_bound([10.0], [8.0], [1.0], 0.1, 3.0) == pytest.approx(10 / 4.0)
    # Median over rounds.
    assert bl.roofline_bound([10.0, 20.0, 30.0], [8.0] * 3, [1.0] * 3, 0.1, 0.5) == pytest.approx(
        20 / 1.8
    )


def test_unknown_allocator_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown allocator 'jemalloc'"):
        bl.configure_allocator("jemalloc")
    assert bl.configure_allocator("system").startswith("system")


def test_reuse_allocator_is_applied_in_a_fresh_process() -> None:
    # Its own process: mallopt changes how this process recycles memory for good.
    code = (
        "import sys; sys.path.insert(0, 'tools'); import benchmark_latency as bl; "
        "print(bl.configure_allocator('reuse'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    if sys.platform.startswith("linux"):
        assert out.startswith("reuse (glibc mallopt")


def test_table8_quick_run_writes_every_row(tmp_path: Path) -> None:
    bl.main(
        ["--quick", "--batches", "1", "--r", "2", "--allocator", "system", "--out", str(tmp_path)]
    )
    rows = list(csv.DictReader(open(tmp_path / "table8_cpu.csv")))
    lbp = [r for r in rows if r["method"] == "lbp_wht"]
    assert len(lbp) == 4  # the four Table 8 shapes at r = 2
    for r in lbp:
        assert r["R"] == "3" and float(r["speedup"]) > 0
        assert float(r["flop_bound"]) == pytest.approx(
            4
            * 49
            * int(r["cx"])
            * int(r["cy"])
            / (4 * int(r["cx"]) * int(r["cy"]) * 3 + (2 * int(r["cx"]) + int(r["cy"])) * 49 * 3),
            rel=1e-3,
        )
        assert float(r["roofline_bound"]) > 0 and r["allocator"].startswith("system")
        assert float(r["paper_speedup_cpu"]) > 1.0  # the paper's Table 8 value is attached
    md = (tmp_path / "table8_cpu.md").read_text()
    assert "| (448, 1792, 49) | LP_L1-2 | 3 |" in md and "roofline" in md
    assert (tmp_path / "table8_cpu.png").stat().st_size > 0
