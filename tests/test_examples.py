"""The examples a researcher copies run as shipped (random init, small input, no download)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hooked import hook_site, run_script

ROOT = Path(__file__).resolve().parents[1]


def test_timm_vit_example_runs_and_lbp_costs_less(tmp_path):
    pytest.importorskip("timm")
    script = ROOT / "examples" / "timm_vit_lbp.py"
    assert len(script.read_text().splitlines()) < 40
    env = dict(os.environ, LBP_EXAMPLE_SMOKE="1")
    # As a user of `make setup` runs it: with the start-up hook that lets timm import on CPU.
    out = run_script(script, site_dir=hook_site(tmp_path), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "48 modules replaced: LBPLinear x48" in out.stdout
    assert "skipped head: task head" in out.stdout and "trainable params:" in out.stdout
    rows = dict(
        re.findall(
            r"^(plain backprop|LBP-WHT LP_L1-4)\s+backprop\s+([\d.]+) GFLOPs", out.stdout, re.M
        )
    )
    assert float(rows["LBP-WHT LP_L1-4"]) < float(rows["plain backprop"])
    # the measured backward time beside the FLOPs, and the speedup labelled as measured here
    times = re.findall(r"GFLOPs .* backward\s+([\d.]+) ms$", out.stdout, re.M)
    assert len(times) == 2 and all(float(t) > 0 for t in times), out.stdout
    assert re.search(r"^measured backward speedup on this machine: [\d.]+x", out.stdout, re.M)
