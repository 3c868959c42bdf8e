"""The walkthrough notebook executes top to bottom on CPU (nbclient, kernel python3) and is
up to date with its generator ``notebooks/make_walkthrough.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "lbp_wht_walkthrough.ipynb"


def test_notebook_matches_its_generator():
    res = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "make_walkthrough.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,  # per cell; the whole notebook takes well under two minutes on a CPU
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "identical to exact backprop" in text
    assert "paper: 462.3 vs 78.2" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # bases, projection, error vs rank, spectrum, Figure 3
