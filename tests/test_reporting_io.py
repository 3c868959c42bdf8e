"""``lbp_wht.io`` writes aside and renames: a writer that raises or is interrupted mid-write
leaves the old file intact and no temporary file."""

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
