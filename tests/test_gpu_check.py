"""``scripts/gpu_check.sh --cpu-smoke``: every stage of the prepared GPU check runs on the CPU
and leaves its files and a summary saying so (the same code paths a GPU run takes), packed as
the device tool can return them (at most 8 files from its output folder, none deeper than two
folders, names of letters, digits, ``.``, ``_`` and ``-``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STAGES = ["env", "wheels", "cuda_tests", "table8", "step", "methods", "train", "cost", "fusion"]


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, **(env_extra or {}))
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_cpu_smoke_runs_every_stage_and_writes_its_files(tmp_path: Path) -> None:
    sent = tmp_path / "sent"  # what the device tool would return
    proc = _run("--cpu-smoke", "--out", str(sent), "--pack")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    names = sorted(p.name for p in sent.iterdir())
    assert names == ["gpu_check.tar.gz", "stages.tsv", "summary.json", "summary.md"]
    assert all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in sent.iterdir())
    out = tmp_path / "check"
    with tarfile.open(sent / "gpu_check.tar.gz") as tar:
        members = tar.getnames()
        tar.extractall(out, filter="data")
    assert not [m for m in members if m.endswith(".pth")]
    assert (out / "summary.json").read_text() == (sent / "summary.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu-smoke" and summary["passed"]
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "passed" for s in summary["stages"])
    for rel in (
        "latency/table8_cpu.csv",
        "latency/table8_cpu.md",
        "latency/step_cpu.csv",
        "latency/fusion_cpu.csv",
        "benchmark/layers_cpu.csv",
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
    proc = _run("--out", str(tmp_path), "--stages", "step,tabel8")
    assert proc.returncode == 2 and "unknown stage tabel8 in --stages" in proc.stderr


def test_stages_runs_only_those_named_and_env_and_wheels(tmp_path: Path) -> None:
    out = tmp_path / "sent"
    proc = _run("--cpu-smoke", "--out", str(out), "--pack", "--stages", "env")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["env", "wheels"]
    assert summary["passed"]
    for p in out.iterdir():  # names the device tool returns
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name), p.name
