"""Writers never leave partial files: ``lbp_wht.io`` writes aside and renames, and every report
writer (tables, figures, CSV) goes through it. A writer that raises or is interrupted mid-write
leaves the old file intact and no temporary file; one killed outright (SIGKILL, nothing can
clean up) leaves the old file intact and at most a hidden temporary file that readers skip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lbp_wht.io import atomic_path, atomic_write

ROOT = Path(__file__).resolve().parents[1]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "new" / "table.md"
    assert atomic_write(target, "first\n") == target
    assert target.read_text() == "first\n"
    atomic_write(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert _listing(target.parent) == ["table.md"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_writer_that_raises_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".table.csv.")
        assert tmp.suffix == ".csv"  # writers that read the format from the suffix still can
        tmp.write_text("half a ta")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["table.csv"]


_SLOW_WRITER = """
import sys, time
from lbp_wht.io import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "w") as f:
    f.write(sys.argv[2])
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _start_writer(target: Path, text: str = "partial") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_WRITER), str(target), text],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_an_interrupted_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "figure3_data.csv"
    target.write_text("old\n")
    proc = _start_writer(target)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: KeyboardInterrupt inside the block
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["figure3_data.csv"]


def test_a_killed_writer_leaves_the_old_file_and_only_a_hidden_temp(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from lbp_wht.reporting import tables

    target = tmp_path / "table2.csv"
    pd.DataFrame(
        dict(model=["efficientformer-l1"], scope=["partial"], method=["full_bp"], mflops=[1.5])
    ).to_csv(target, index=False)
    old = target.read_bytes()
    proc = _start_writer(target, "model,scope,method,mflops\nefficientformer-l1,partial,lora,9")
    proc.kill()
    proc.wait(timeout=30)
    assert target.read_bytes() == old
    left = [p for p in tmp_path.iterdir() if p != target]
    assert len(left) == 1 and left[0].name.startswith(".table2.csv.")
    # the cost reader skips it (it would otherwise be read as a second, cut, cost table)
    cost = tables.load_cost(tmp_path)
    assert cost["mflops"].tolist() == [1.5]


def test_a_table_writer_failing_mid_file_keeps_the_old_table(tmp_path, monkeypatch) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("jinja2")
    from lbp_wht.reporting import tables

    paper = ROOT / "results" / "paper"

    def build() -> tables.Table:
        return tables.build_table(
            "8", runs=tables.load_runs([]), cost=tables.load_cost(None), paper_dir=paper,
            latency_dir=ROOT / "results" / "latency",
        )  # fmt: skip

    paths = tables.write_table(build(), tmp_path)
    old = {p: p.read_bytes() for p in paths}

    def cut_csv(self, path, *args, **kwargs):
        Path(path).write_text("section,model,met")  # what a kill mid-write would leave
        raise OSError("killed")

    monkeypatch.setattr(pd.DataFrame, "to_csv", cut_csv)
    with pytest.raises(OSError, match="killed"):
        tables.write_table(build(), tmp_path)
    assert {p: p.read_bytes() for p in paths} == old
    assert _listing(tmp_path / "table8") == ["table8.csv", "table8.md", "table8.tex"]


def test_a_figure_writer_failing_mid_file_keeps_the_old_figure(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import numpy as np
    from matplotlib.figure import Figure

    from lbp_wht.reporting import figures

    spec = dict(energy=np.ones((8, 8)), layer="x", steps=1)
    paths = figures.plot_fig5(spec, tmp_path)
    old = {p: p.read_bytes() for p in paths}

    def cut_savefig(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG cut")
        raise OSError("killed")

    monkeypatch.setattr(Figure, "savefig", cut_savefig)
    with pytest.raises(OSError, match="killed"):
        figures.plot_fig5(spec, tmp_path)
    assert {p: p.read_bytes() for p in paths} == old
    assert _listing(tmp_path) == ["figure5.pdf", "figure5.png"]


def test_csv_rows_are_written_aside(tmp_path: Path, monkeypatch) -> None:
    import csv

    from lbp_wht.reporting.render import write_rows_csv

    target = write_rows_csv(tmp_path / "cost.csv", [dict(tag="a", mflops=1.0)])
    old = target.read_bytes()

    def cut_row(self, row):
        self.writer.writerow(["b"])
        raise OSError("killed")

    monkeypatch.setattr(csv.DictWriter, "writerow", cut_row)
    with pytest.raises(OSError, match="killed"):
        write_rows_csv(target, [dict(tag="b", mflops=2.0)])
    assert target.read_bytes() == old
    assert _listing(tmp_path) == ["cost.csv"]


def test_paths_in_records_and_run_commands_are_relative_to_the_checkout(tmp_path, monkeypatch):
    """What goes into ``results/`` names paths below the working directory relatively (records'
    ``work_dir``, the benchmark tools' ``command``), and other paths as given."""
    from lbp_wht.io import portable_path
    from lbp_wht.reporting.latency_tables import run_meta

    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "work_dirs" / "run_s0"
    assert portable_path(inside) == os.path.join("work_dirs", "run_s0")
    assert portable_path("work_dirs/run_s0") == os.path.join("work_dirs", "run_s0")
    outside = tmp_path.parent / (tmp_path.name + "x") / "run"  # a sibling sharing the prefix
    assert portable_path(outside) == str(outside)
    meta = run_meta(f"tools/benchmark_methods.py layers --out {tmp_path / 'results' / 'b'}")
    assert meta["command"] == "tools/benchmark_methods.py layers --out results/b"


def test_a_run_record_names_its_work_dir_relative_to_the_checkout(monkeypatch):
    pytest.importorskip("mmpretrain")
    from mmengine.config import Config

    import lbp_wht.integrations  # noqa: F401  (CPU shims first)
    from lbp_wht.integrations.recording import build_record

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    cfg = Config.fromfile("configs/mini/demo/target.py")
    rec = build_record(cfg, kind="train", status="done", work_dir=str(root / "work_dirs" / "a"))
    assert rec["work_dir"] == os.path.join("work_dirs", "a")
