"""Bad inputs to the reporting and benchmark tools: each is refused with the exact error type
and a message that names the offending table, dataset, model, file or option (and, for the
tools, a non-zero exit before anything is written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("jinja2")

from lbp_wht.reporting import figures, latency_tables, render, tables  # noqa: E402
from lbp_wht.reporting.cost_tables import CostTables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"


def _tool(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a tool as a user does, from a folder outside the repository."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or "/", capture_output=True, text=True, env=full_env
    )


def _raises(exc: type[BaseException], fn, *args, **kw) -> str:
    """The message of ``fn(*args, **kw)``, which must raise exactly ``exc``."""
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert type(info.value) is exc, type(info.value)
    return str(info.value)


# ----------------------------------------------------------------------- library functions
def test_unknown_dataset() -> None:
    msg = _raises(ValueError, tables.check_datasets, ["fashion-mnisst"])
    assert "'fashion-mnisst'" in msg and "fmnist-5to9" in msg and "cifar100" in msg


def test_unknown_model() -> None:
    msg = _raises(ValueError, tables.check_models, ["vit-huge"])
    assert "'vit-huge'" in msg and "efficientformer-l1" in msg


def test_unknown_table() -> None:
    runs, cost = tables.load_runs([]), tables.load_cost(None)
    msg = _raises(ValueError, tables.build_table, "9", runs=runs, cost=cost, paper_dir=PAPER)
    assert "'9'" in msg and "'8'" in msg


def test_dataset_given_to_build_table_is_checked_too() -> None:
    runs, cost = tables.load_runs([]), tables.load_cost(None)
    msg = _raises(
        ValueError, tables.build_table, "2", runs=runs, cost=cost, paper_dir=PAPER, datasets=["x"]
    )
    assert "['x']" in msg


def test_latency_csv_without_benchmark_columns(tmp_path: Path) -> None:
    (tmp_path / "table8_cpu.csv").write_text("a,b\n1,2\n")
    msg = _raises(ValueError, tables.load_latency, tmp_path)
    assert "table8_cpu.csv" in msg and "'cx'" in msg


def test_empty_latency_csv(tmp_path: Path) -> None:
    (tmp_path / "table8_gpu.csv").write_text("")
    assert "table8_gpu.csv" in _raises(ValueError, tables.load_latency, tmp_path)


def test_spectrum_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "spectrum.json"
    bad.write_text("{not json")
    assert str(bad) in _raises(ValueError, figures.load_spectrum, bad)
    bad.write_text("[1, 2]")
    assert "JSON object" in _raises(ValueError, figures.load_spectrum, bad)


def test_latency_rerender_of_an_empty_folder(tmp_path: Path) -> None:
    assert str(tmp_path) in _raises(FileNotFoundError, latency_tables.rerender, tmp_path)


def test_latency_run_json_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "ablation_cpu.run.json").write_text("[]")
    msg = _raises(ValueError, latency_tables.read_meta, tmp_path / "ablation_cpu")
    assert "ablation_cpu.run.json" in msg and "list" in msg


def test_cost_tables_without_the_paper_reference(tmp_path: Path) -> None:
    cost = CostTables(tmp_path / "out", paper=tmp_path / "no-paper")
    msg = _raises(FileNotFoundError, cost.run, [1])
    assert "table1.csv" in msg and "results/paper" in msg


def test_cost_record_of_a_missing_config(tmp_path: Path) -> None:
    from lbp_wht.integrations.cost_record import config_from_flags, load_config

    missing = tmp_path / "nope.py"
    assert str(missing) in _raises(FileNotFoundError, load_config, missing)
    msg = _raises(ValueError, config_from_flags, "vit-huge", "lbp_wht", "partial")
    assert "'vit-huge'" in msg and "efficientformer-l1" in msg


def test_a_misspelt_template_variable_is_an_error() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError, match="'lines' is undefined"):
        render.render("latency_ablation.md.j2", meta={"command": "x", "torch": "t", "threads": 1})


# -------------------------------------------------------------------------------- the tools
def test_make_tables_unknown_dataset_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    res = _tool(
        str(ROOT / "tools/make_tables.py"), "--datasets", "fashion-mnisst", "--out", str(tmp_path)
    )
    assert res.returncode == 2
    assert "unknown dataset(s) ['fashion-mnisst']; known datasets: cifar100" in res.stderr
    assert not any(tmp_path.iterdir())


def test_make_tables_unknown_table_and_missing_paper_dir(tmp_path: Path) -> None:
    res = _tool(str(ROOT / "tools/make_tables.py"), "--tables", "9", "--out", str(tmp_path))
    assert res.returncode == 2 and "'9'" in res.stderr
    res = _tool(str(ROOT / "tools/make_tables.py"), "--paper", str(tmp_path / "p"))
    assert res.returncode == 2 and f"--paper {tmp_path / 'p'} is not a directory" in res.stderr


def test_make_tables_refuses_a_cell_trained_two_ways_and_where_picks_one(tmp_path: Path) -> None:
    """A second root holding one mini run again with zero padding: the proxy Table 4 is refused
    (naming both records and lbp.padding); ``--where lbp.padding=reflect`` gives the committed
    table byte for byte."""
    import json
    import shutil

    mini = ROOT / "results" / "mini"
    other = tmp_path / "zero"
    name = "target_method=lbp_wht_select=lp_l1_r=4_s0"
    rec = json.loads((mini / "runs" / "adapt" / name / "record.json").read_text())
    rec["lbp"]["padding"], rec["value"], rec["timestamp"] = "zero", 50.0, "2099-01-01T00:00:00"
    (other / name).mkdir(parents=True)
    (other / name / "record.json").write_text(json.dumps(rec))
    args = [str(ROOT / "tools/make_tables.py"), "--runs", str(mini / "runs" / "adapt"), str(other)]
    args += ["--cost", str(mini / "cost"), "--tables", "4", "--models", "mini-efficientformer"]
    args += ["--datasets", "fmnist-5to9", "--out", str(tmp_path / "out")]
    res = _tool(*args)
    assert res.returncode != 0 and "lbp.padding 'reflect' vs 'zero'" in res.stderr, res.stderr
    assert str(other / name / "record.json") in res.stderr and "--where" in res.stderr
    assert not (tmp_path / "out").exists()
    res = _tool(*args, "--where", "lbp.padding=reflect")
    assert res.returncode == 0, res.stderr
    built = (tmp_path / "out" / "table4" / "table4.md").read_bytes()
    assert built == (mini / "table4" / "table4.md").read_bytes()
    shutil.rmtree(tmp_path / "out")
    res = _tool(*args, "--where", "lbp.padding")
    assert res.returncode == 2 and "expected KEY=VALUE" in res.stderr
    # make_figures reads the records the same way
    fig = [str(ROOT / "tools/make_figures.py"), "--runs", str(mini / "runs" / "adapt"), str(other)]
    fig += ["--cost", str(mini / "cost"), "--figures", "3", "--models", "mini-efficientformer"]
    fig += ["--dataset", "fmnist-5to9", "--out", str(tmp_path / "fig")]
    res = _tool(*fig)
    assert res.returncode != 0 and "lbp.padding 'reflect' vs 'zero'" in res.stderr, res.stderr
    res = _tool(*fig, "--where", "lbp.padding=reflect")
    assert res.returncode == 0, res.stderr
    built = (tmp_path / "fig" / "figure3_data.csv").read_bytes()
    assert built == (mini / "figures" / "figure3_data.csv").read_bytes()


def test_make_tables_defaults_build_table8_from_the_committed_csv(tmp_path: Path) -> None:
    res = _tool(str(ROOT / "tools/make_tables.py"), "--tables", "8", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "| (448,1792,49) |" in (tmp_path / "table8" / "table8.md").read_text()


def test_reproduce_table8_tables_only_and_a_missing_interpreter(tmp_path: Path) -> None:
    script = str(ROOT / "scripts/reproduce_table8.sh")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path), "PYTHON": sys.executable}
    res = subprocess.run([script, "--tables-only"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "table8" / "table8.csv").exists()
    env["PYTHON"] = str(tmp_path / "no-python")
    res = subprocess.run([script, "--dry-run"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "no-python cannot import torch" in res.stderr


def test_make_cost_tables_unknown_table_exits_2(tmp_path: Path) -> None:
    res = _tool(str(ROOT / "tools/make_cost_tables.py"), "--tables", "4", "--out", str(tmp_path))
    assert res.returncode == 2 and "invalid choice: 4" in res.stderr
    assert not any(tmp_path.iterdir())


def test_make_figures_bad_dataset_and_missing_spectrum(tmp_path: Path) -> None:
    res = _tool(str(ROOT / "tools/make_figures.py"), "--dataset", "cifar-1000")
    assert res.returncode == 2 and "['cifar-1000']" in res.stderr
    missing = tmp_path / "spectrum.json"
    res = _tool(str(ROOT / "tools/make_figures.py"), "--spectrum", str(missing))
    assert res.returncode == 2 and f"--spectrum {missing} does not exist" in res.stderr


def test_benchmark_latency_bad_options(tmp_path: Path) -> None:
    res = _tool(str(ROOT / "tools/benchmark_latency.py"), "--batches", "0")
    assert res.returncode == 2 and "--batches must be positive, got [0]" in res.stderr
    res = _tool(str(ROOT / "tools/benchmark_latency.py"), "--device", "gpu0")
    assert (
        res.returncode == 2
        and "--device must be cpu, cuda or cuda:<index>, got 'gpu0'" in res.stderr
    )
    res = _tool(str(ROOT / "tools/benchmark_latency.py"), "--tables-only", "--out", str(tmp_path))
    assert res.returncode == 1 and "no benchmark CSV" in res.stderr and str(tmp_path) in res.stderr


def test_benchmark_e2e_unknown_model() -> None:
    res = _tool(str(ROOT / "tools/benchmark_backward_e2e.py"), "--model", "vit-huge")
    assert res.returncode == 2 and "--model 'vit-huge' is not a preset model" in res.stderr


def test_mini_report_bad_stage_and_missing_out(tmp_path: Path) -> None:
    script = str(ROOT / "scripts/mini_report.py")
    res = _tool(script, "report", "--out", str(tmp_path), "--stages", "pretrain=3.5")
    assert res.returncode == 2 and "'pretrain=3.5'" in res.stderr
    res = _tool(script, "report", "--out", str(tmp_path / "none"))
    assert res.returncode == 2 and "is not a directory" in res.stderr


def test_analyze_cost_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    res = _tool(str(ROOT / "tools/analyze_cost.py"), str(missing))
    assert res.returncode == 1 and f"config {missing} does not exist" in res.stderr
    res = _tool(str(ROOT / "tools/analyze_cost.py"), "--model", "x", "--batch", "0")
    assert res.returncode == 2 and "--batch must be positive" in res.stderr


def test_tools_run_from_any_folder(tmp_path: Path) -> None:
    """No tool relies on the working directory or on sys.path edits (the package is
    installed; PYTHONPATH stands in for it here)."""
    for tool in ("make_tables", "make_figures", "make_cost_tables", "benchmark_latency"):
        res = _tool(str(ROOT / "tools" / f"{tool}.py"), "--help", cwd=tmp_path)
        assert res.returncode == 0, (tool, res.stderr)
    for path in (ROOT / "tools").glob("*.py"):
        if path.stem in ("make_tables", "make_figures", "make_cost_tables", "analyze_cost",
                         "benchmark_latency", "benchmark_backward_e2e"):  # fmt: skip
            text = path.read_text()
            assert "sys.path" not in text, path
            assert len(text.splitlines()) <= 300, path
    assert json.loads((ROOT / "results" / "latency" / "table8_cpu.run.json").read_text())
