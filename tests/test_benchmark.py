"""The latency benchmarks: Table 8 output, the roofline model, the allocator switch and the
Markdown rebuilt from the committed CSVs."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lbp_wht.benchmark import latency, timing
from lbp_wht.reporting import latency_tables

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def test_roofline_bound_takes_the_slower_of_flops_and_weight_traffic() -> None:
    # Full BP 10 s, its GEMMs 8 s, one streaming pass 1 s per round.
    # Compute-bound: low-rank GEMMs 0.1 * 8 = 0.8 s > weight traffic 0.5 * 1 -> 10 / 1.8.
    assert latency.roofline_bound([10.0], [8.0], [1.0], 0.1, 0.5) == pytest.approx(10 / 1.8)
    # Memory-bound (batch 1): weight traffic 3 * 1 = 3 s > 0.8 s -> 10 / 4.
    assert latency.roofline_bound([10.0], [8.0], [1.0], 0.1, 3.0) == pytest.approx(10 / 4.0)
    # Median over rounds.
    assert latency.roofline_bound(
        [10.0, 20.0, 30.0], [8.0] * 3, [1.0] * 3, 0.1, 0.5
    ) == pytest.approx(20 / 1.8)


def test_unknown_allocator_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown allocator 'jemalloc'"):
        timing.configure_allocator("jemalloc")
    assert timing.configure_allocator("system").startswith("system")


def test_reuse_allocator_is_applied_in_a_fresh_process() -> None:
    # Its own process: mallopt changes how this process recycles memory for good.
    code = (
        "from lbp_wht.benchmark.timing import configure_allocator; "
        "print(configure_allocator('reuse'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    if sys.platform.startswith("linux"):
        assert out.startswith("reuse (glibc mallopt")


def test_table8_quick_run_writes_every_row(tmp_path: Path) -> None:
    rows = latency.run_table8(batches=[1], rs=[2], quick=True, allocator="system (glibc defaults)")
    meta = latency_tables.run_meta("tools/benchmark_latency.py --quick")
    latency_tables.write_table8(rows, tmp_path, "cpu", meta)
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


def test_committed_latency_markdown_rebuilds_from_its_csvs(tmp_path: Path) -> None:
    """Every committed results/latency CSV renders again (prose identical; cells from the
    CSV's significant digits: 4 in the files of earlier runs), and a CSV without its
    .run.json is refused by name."""
    import shutil

    src = ROOT / "results" / "latency"
    shutil.copytree(src, tmp_path / "lat")
    written = latency_tables.rerender(tmp_path / "lat")
    assert {p.name for p in written} >= {
        "table8_cpu.md",
        "ablation_cpu.md",
        "projection_cpu.md",
        "e2e_backward_cpu.md",
        "step_cpu.md",
        "fusion_cpu.md",
    }
    names = ("table8_cpu.md", "ablation_cpu.md", "projection_cpu.md", "e2e_backward_cpu.md")
    for name in names + ("step_cpu.md", "fusion_cpu.md"):
        old = (src / name).read_text().splitlines()
        new = (tmp_path / "lat" / name).read_text().splitlines()
        assert len(old) == len(new), name
        for a, b in zip(old, new):
            if not a.startswith("|") or a.startswith("| ---") or "method" in a or "map" in a:
                assert a == b, name  # titles, prose and table headers are unchanged
            else:  # same row, same numbers up to the CSV's rounding
                assert a.split(" | ")[0] == b.split(" | ")[0], name
                na, nb = NUMBER.findall(a), NUMBER.findall(b)
                assert len(na) == len(nb), (a, b)
                for x, y in zip(na, nb):
                    unit = 10.0 ** -len(x.partition(".")[2].replace(",", ""))
                    fx, fy = float(x.replace(",", "")), float(y.replace(",", ""))
                    assert abs(fx - fy) <= 6e-4 * abs(fx) + unit, (name, a, b)
    (tmp_path / "lat" / "ablation_cpu.run.json").unlink()
    with pytest.raises(FileNotFoundError, match="ablation_cpu.run.json"):
        latency_tables.rerender(tmp_path / "lat")


def test_a_written_latency_table_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    """A run's Markdown is made from the rows as its CSV stores them, so ``--tables-only`` /
    :func:`rerender` of a fresh run writes the same bytes (it used to differ in the last
    digits: the run rendered its full-precision numbers, the CSV held 4 digits)."""
    import json

    src = ROOT / "results" / "latency"
    rows = [
        {k: v * 1.000123457 if isinstance(v, float) else v for k, v in r.items()}
        for r in latency_tables.read_rows_csv(src / "projection_cpu.csv")
    ]
    meta = json.loads((src / "projection_cpu.run.json").read_text())
    latency_tables.write_component_table("projection", rows, tmp_path, meta)
    first = (tmp_path / "projection_cpu.md").read_bytes()
    latency_tables.rerender(tmp_path)
    assert (tmp_path / "projection_cpu.md").read_bytes() == first


def test_e2e_backward_benchmark_on_the_mini_model(tmp_path: Path) -> None:
    pytest.importorskip("mmpretrain")
    from lbp_wht.benchmark.e2e import run_e2e

    rows = run_e2e(
        model="mini-efficientformer", batch=2, size=28, rounds=2, num_classes=5, log=lambda s: None
    )
    assert [r["method"] for r in rows] == ["Full BP", "LoRA-all", "LP_L1-2", "LP_L1-4", "LP_L1-6"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["flop_speedup"] == 1.0
    lp2, lp6 = rows[2], rows[4]
    assert lp2["backprop_gflops"] < lp6["backprop_gflops"]  # fewer bases, fewer FLOPs
    assert lp2["trainable_params"] == rows[0]["trainable_params"]  # LBP-WHT trains the same
    paths = latency_tables.write_e2e(rows, tmp_path, latency_tables.run_meta("tools/x.py"))
    assert {p.suffix for p in paths} == {".csv", ".md", ".png", ".pdf", ".json"}
    md = (tmp_path / "e2e_backward_cpu.md").read_text()
    assert md.startswith("# End-to-end backward time, mini-efficientformer partial training")
    assert "| LP_L1-4 |" in md
