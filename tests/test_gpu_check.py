"""``scripts/gpu_check.sh --cpu-smoke``: every stage of the prepared GPU check runs on the CPU
and leaves its files and a summary saying so (the same code paths a GPU run takes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STAGES = ["env", "wheels", "cuda_tests", "table8", "step", "train", "cost", "fusion"]


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, **(env_extra or {}))
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_cpu_smoke_runs_every_stage_and_writes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = _run("--cpu-smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu-smoke" and summary["passed"]
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "passed" for s in summary["stages"])
    for rel in (
        "latency/table8_cpu.csv",
        "latency/table8_cpu.md",
        "latency/step_cpu.csv",
        "latency/fusion_cpu.csv",
        "cost/record.json",
        "cuda_tests.xml",
        "summary.md",
    ):
        assert (out / rel).is_file(), rel
    record = json.loads((out / "train" / "work" / "record.json").read_text())
    assert record["status"] == "complete" and record["method"] == "lbp_wht"
    assert record["dataset"] == "cifar100"
    fusion = (out / "latency" / "fusion_cpu.md").read_text()
    assert "LP_L1-2 (compiled)" in fusion and "LP_L1-2 (compiled_bwd)" in fusion
    env = (out / "logs" / "env.log").read_text()
    assert '"cuda_available": false' in env or '"cuda_available": true' in env


def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    proc = _run()
    assert proc.returncode == 2 and "no output folder: pass --out DIR" in proc.stderr
    proc = _run("--out", str(tmp_path), "--budget", "ten")
    assert proc.returncode == 2 and "--budget must be a whole number" in proc.stderr
    proc = _run("--frobnicate")
    assert proc.returncode == 2 and "unknown argument --frobnicate" in proc.stderr
