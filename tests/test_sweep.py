"""Resumable, lock-safe sweeps (lbp_wht/runs/sweep.py) with a tiny fake run command.

The fake run (a Python script, no torch) behaves like a training run: it marks its work dir,
writes a ``running`` record, sleeps, then writes the ``complete`` record atomically with
:func:`lbp_wht.runs.records.write_record`. Each attempt logs ``start`` / ``end`` lines to a shared
file (``O_APPEND``), so the tests can count how often each run really ran.

The sweep itself runs in subprocesses that load ``lbp_wht.runs.sweep`` / ``lbp_wht.runs.records``
without ``lbp_wht/__init__`` (which imports torch, seconds per process on these machines).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lbp_wht.experiments.catalog import Cell, table_cells
from lbp_wht.runs.records import STALE_MARK, read_record, write_record
from lbp_wht.runs.sweep import (
    Run,
    RunLock,
    dry_run_listing,
    parse_progress,
    run_state,
    run_sweep,
)

ROOT = Path(__file__).resolve().parents[1]
N_RUNS = 5
SLEEP = 0.2

# Loads lbp_wht.<submodule> without running lbp_wht/__init__ (torch).
STUB = (
    "import sys, types\n"
    "pkg = types.ModuleType('lbp_wht'); pkg.__path__ = [@ROOT@ + '/lbp_wht']\n"
    "sys.modules['lbp_wht'] = pkg\n"
)

FAKE_RUN = (
    STUB
    + """
import os, time
from pathlib import Path
from lbp_wht.runs.records import write_record
wd, run_id, sleep, log = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
def note(what):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{what} {run_id}\\n".encode()); os.close(fd)
note("start")
# A leftover of an earlier, killed attempt would show here: the sweep must have cleaned it.
dirty = (wd / "attempt.txt").exists()
(wd / "attempt.txt").write_text(str(os.getpid()))
write_record(wd / "record.json", dict(status="running", run=run_id))
print("PROGRESS 1/2", flush=True)
time.sleep(sleep)
print("PROGRESS 2/2", flush=True)
value = float(sum(map(ord, run_id)) % 97)
write_record(wd / "record.json", dict(status="complete", run=run_id, metric="acc", value=value,
                                      dirty=dirty))
note("end")
"""
)

DRIVER = (
    STUB
    + """
import json
from pathlib import Path
from lbp_wht.runs.sweep import Run, run_sweep
spec = json.load(open(sys.argv[1]))
runs = [Run(r["id"], tuple(r["cmd"]), Path(r["wd"])) for r in spec]
report = run_sweep(runs, jobs=int(sys.argv[2]), poll_s=0.05, progress_every_s=0.2)
print(report.summary(), flush=True)
sys.exit(0 if report.ok else 1)
"""
)


def _stubbed(code: str) -> str:
    return code.replace("@ROOT@", repr(str(ROOT)))


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """Writes the fake run + driver scripts; returns a factory of sweep specs."""
    tmp_path = tmp_path_factory.mktemp("sweeps")
    fake_py = tmp_path / "fake_run.py"
    fake_py.write_text(_stubbed(FAKE_RUN))
    driver = tmp_path / "driver.py"
    driver.write_text(_stubbed(DRIVER))

    def make(name: str, n: int = N_RUNS, sleep: float = SLEEP) -> tuple[Path, Path, Path]:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        log = base / "executions.log"
        spec = [
            dict(
                id=f"run{i}",
                wd=str(base / "work" / f"run{i}"),
                cmd=[
                    sys.executable,
                    str(fake_py),
                    str(base / "work" / f"run{i}"),
                    f"run{i}",
                    str(sleep),
                    str(log),
                ],
            )
            for i in range(n)
        ]
        spec_path = base / "spec.json"
        spec_path.write_text(json.dumps(spec))
        return spec_path, base / "work", log

    return make, driver


@pytest.fixture(scope="module")
def reference(fake) -> dict[str, dict]:
    """The records of one uninterrupted sweep (what every other scenario must end with)."""
    make, driver = fake
    spec, work, log = make("reference")
    _finish(_start(driver, spec, jobs=2))
    records = _records(work)
    assert len(records) == N_RUNS
    assert all(r["status"] == "complete" and not r["dirty"] for r in records.values())
    assert _ends(log) == Counter({f"run{i}": 1 for i in range(N_RUNS)})
    return records


def _start(driver: Path, spec: Path, jobs: int = 1) -> subprocess.Popen:
    # Own session: the test can kill the sweep alone (pid) or with its children (group).
    return subprocess.Popen(
        [sys.executable, str(driver), str(spec), str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _records(work: Path) -> dict[str, dict]:
    """The records of the runs (not of earlier attempts the sweep moved aside)."""
    paths = sorted(work.glob("*/record.json"))
    return {p.parent.name: read_record(p) for p in paths if STALE_MARK not in p.parent.name}


def _wait_for_complete(work: Path, n: int, timeout: float = 30) -> None:
    t0 = time.time()
    while sum(r.get("status") == "complete" for r in _records(work).values()) < n:
        assert time.time() - t0 < timeout, "sweep made no progress"
        time.sleep(0.02)


def _ends(log: Path) -> Counter:
    lines = log.read_text().split("\n") if log.exists() else []
    return Counter(line.split()[1] for line in lines if line.startswith("end "))


@pytest.mark.parametrize("kill_children", [False, True], ids=["sweep-only", "process-group"])
def test_killed_sweep_restarts_to_the_same_records(fake, reference, kill_children):
    make, driver = fake
    spec, work, log = make(f"interrupted-{kill_children}")
    proc = _start(driver, spec)
    _wait_for_complete(work, 2)
    # SIGKILL mid-sweep: either the sweep alone (its running child survives and keeps the run
    # lock) or the whole process group (a crash: the running run is left half done).
    if kill_children:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    before = _records(work)
    done_before = {k for k, r in before.items() if r["status"] == "complete"}
    assert 2 <= len(done_before) < N_RUNS
    log_before = log.read_text()

    out = _finish(_start(driver, spec))
    assert _records(work) == reference  # same set of records, same content
    # Finished runs were skipped, not redone; a run that was in flight was either awaited (its
    # orphan finished it) or moved aside and redone; no run finished twice. (A run killed
    # between writing its complete record and logging "end" has a record and no "end".)
    restarted = {
        ln.split()[1]
        for ln in log.read_text()[len(log_before) :].splitlines()
        if ln.startswith("start ")
    }
    assert not restarted & done_before, restarted & done_before
    ends = _ends(log)
    assert all(n == 1 for n in ends.values()), ends
    assert set(ends) | done_before == {f"run{i}" for i in range(N_RUNS)}, ends
    assert "already complete (skipped)" in out
    # A half-done attempt was moved aside with what it had written, not deleted.
    for aside in (p for p in work.iterdir() if STALE_MARK in p.name):
        run = aside.name.split(STALE_MARK)[0]
        assert before.get(run, {}).get("status") != "complete" and str(aside) in out


def test_two_concurrent_sweeps_never_run_the_same_run(fake, reference):
    make, driver = fake
    spec, work, log = make("shared")
    a, b = _start(driver, spec, jobs=2), _start(driver, spec, jobs=2)
    _finish(a), _finish(b)
    assert _records(work) == reference
    starts = Counter(
        line.split()[1] for line in log.read_text().splitlines() if line.startswith("start ")
    )
    assert starts == Counter({f"run{i}": 1 for i in range(N_RUNS)}), starts
    assert not list(work.glob(".*.tmp*")) and not list(work.glob("*/.*.tmp*"))  # no temp files


def test_interrupted_sweep_stops_its_runs(fake):
    """Ctrl-C (SIGINT to the sweep): the running child is terminated, not orphaned, and its
    run is left incomplete (stale), to be redone by the next sweep."""
    make, driver = fake
    spec, work, log = make("ctrl-c", n=2, sleep=60)
    proc = _start(driver, spec)
    t0 = time.time()
    while not (log.exists() and "start run0" in log.read_text()):
        assert time.time() - t0 < 30, "run did not start"
        time.sleep(0.02)
    child = int((work / "run0" / "attempt.txt").read_text())
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    for _ in range(100):  # the child got SIGTERM from the sweep
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"run child {child} still alive after the sweep was interrupted")
    run0 = Run("run0", ("true",), work / "run0")
    assert run_state(run0) == "stale" and "start run1" not in log.read_text()


def _py_run(tmp: Path, name: str, code: str) -> Run:
    wd = tmp / name
    return Run(name, (sys.executable, "-c", _stubbed(STUB + code), str(wd)), wd)


WRITE_OK = (
    "from lbp_wht.runs.records import write_record\n"
    "write_record(sys.argv[1] + '/record.json', dict(status='complete', metric='m', value=1.0))\n"
)


def test_failures_are_reported_and_do_not_stop_the_sweep(tmp_path):
    runs = [
        _py_run(tmp_path, "crashes", "raise SystemExit(3)"),
        _py_run(tmp_path, "no_record", "pass"),
        _py_run(tmp_path, "ok", WRITE_OK),
    ]
    out = io.StringIO()
    report = run_sweep(runs, out=out, poll_s=0.05)
    status = {r.run.run_id: r for r in report.results}
    assert status["crashes"].status == "failed" and status["crashes"].returncode == 3
    assert status["no_record"].status == "failed"
    assert "no complete record" in status["no_record"].message
    assert status["ok"].status == "done"
    assert not report.ok
    text = out.getvalue()
    assert "FAILED" in text and "m=1.00" in text  # one summary line per finished run
    assert (tmp_path / "ok" / "command.sh").exists() and (tmp_path / "ok" / "run.log").exists()

    # Second sweep: the complete run is skipped, the failed ones are cleaned and re-run.
    (tmp_path / "crashes" / "junk").write_text("stale")
    report = run_sweep(runs, out=io.StringIO(), poll_s=0.05)
    assert [r.status for r in report.results] == ["failed", "failed", "skipped"]
    assert not (tmp_path / "crashes" / "junk").exists()


def test_dry_run_lists_states_and_rejects_duplicates(tmp_path):
    done, stale, todo, held = (_py_run(tmp_path, n, "pass") for n in ("a", "b", "c", "d"))
    write_record(done.record_path, dict(status="complete"))
    write_record(stale.record_path, dict(status="running"))
    lock = RunLock(held.lock_path)
    assert lock.acquire()
    try:
        assert [run_state(r) for r in (done, stale, todo, held)] == [
            "done",
            "stale",
            "todo",
            "running",
        ]
        text = dry_run_listing([done, stale, todo, held])
        assert "4 runs (1 done, 1 running, 1 stale, 1 todo)" in text
        assert todo.shell() in text
        # A locked run is left to its holder; with wait_for_locked=False it is reported.
        report = run_sweep([held], out=io.StringIO(), wait_for_locked=False)
        assert report.results[0].status == "locked"
    finally:
        lock.release()
    with pytest.raises(ValueError, match="duplicate run id"):
        dry_run_listing([todo, todo])
    with pytest.raises(ValueError, match="file-name safe"):
        Run("a/b", ("true",), tmp_path / "x")


def test_parse_progress_reads_mmengine_logs():
    it = (
        "11/21 12:00:00 - mmengine - INFO - Iter(train) [  50/20000]  lr: 1e-4  "
        "eta: 1 day, 2:03:04  time: 0.5"
    )
    frac, eta, phase = parse_progress(it)
    assert frac == pytest.approx(50 / 20000) and eta == "1 day, 2:03:04" and phase == "train"
    ep = "Epoch(train)  [3][100/200]  lr: 1e-4  eta: 0:10:00  time: 0.1"
    assert parse_progress(ep)[0] == pytest.approx(0.5)
    assert parse_progress(ep, max_epochs=50)[0] == pytest.approx(2.5 / 50)
    # An evaluation after training: progress and ETA of that phase, from its own line.
    val = it + "\nIter(val) [  60/1875]    eta: 4:00:40  time: 11.3\n"
    assert parse_progress(val) == (pytest.approx(60 / 1875), "4:00:40", "val")
    assert parse_progress("PROGRESS 3/4") == (0.75, "", "train")
    assert parse_progress("nothing yet") is None


def test_paper_tables_have_the_papers_rows():
    """The run matrix of each table comes from the paper's own rows (results/paper)."""
    paper = ROOT / "results" / "paper"
    counts = {t: len(table_cells(t, paper)) for t in ("2", "3", "4", "5", "6", "7", "fig3")}
    # rows x datasets: Table 2 = 30 partial rows + 5 full rows, x 6 datasets; Table 3 = 12 x 2;
    # Table 4 = 3 x 2; Table 5 = 28 x 6; Table 6 = 5 x 2; Table 7 = 7 x 1; Figure 3 = 5 models
    # x (3 baselines + LP_L1-2..8).
    assert counts == {"2": 210, "3": 24, "4": 6, "5": 168, "6": 10, "7": 7, "fig3": 50}
    ids = [c.run_id(0) for c in table_cells("4", paper)]
    assert "efficientformer-l1_partial_lbp_wht-lhe-R10_cifar100_s0" in ids
    assert "efficientformer-l1_partial_lbp_wht-lp_linf-3_cifar10_s0" in ids


def _expected_ids(table: str) -> set[str]:
    """Run ids of a paper table computed straight from results/paper (rows x datasets)."""
    import pandas as pd

    datasets = {
        "2": ["cifar100", "cifar10", "cars", "flowers", "food", "pets"],
        "3": ["cityscapes", "voc12aug"],
        "4": ["cifar100", "cifar10"],
        "5": ["cifar100", "cifar10", "cars", "flowers", "food", "pets"],
        "6": ["cifar100", "cifar10"],
        "7": ["places365"],
    }[table]
    name = {"3": "segmentation.csv", "4": "table4.csv", "6": "table6.csv"}
    df = pd.read_csv(ROOT / "results" / "paper" / name.get(table, "classification.csv"))
    df = df[df["table"] == int(table)]
    ids = set()
    for _, row in df.iterrows():
        method, select = row["method"], row.get("select")
        if table == "4":
            method, select = "lbp_wht", row["method"]
        r = None if pd.isna(row.get("r")) else int(row["r"])
        rank = None if pd.isna(row.get("rank")) else int(row["rank"])
        if not method.startswith("lbp_wht"):
            select, r, rank = None, None, None
        elif select != "lhe":
            rank = None
        for ds in datasets:
            cell = Cell(row["model"], row["scope"], method, select, r, rank, ds)
            ids.add(cell.run_id(0))
    return ids


@pytest.fixture(scope="module")
def table_lib():
    if not (ROOT / "configs" / "table2").is_dir():
        pytest.skip("generated configs missing: run tools/gen_configs.py")
    from lbp_wht.experiments import runs

    return runs


@pytest.mark.parametrize("table", ["2", "3", "4", "5", "6", "7"])
def test_table_sweeps_are_exactly_the_papers_runs(table_lib, table, tmp_path):
    runs = table_lib.table_runs([table], seeds=[0], work_root=tmp_path)
    assert {r.run_id for r in runs} == _expected_ids(table)
    for run in runs:
        config = ROOT / run.command[2]
        assert config.is_file(), run.shell()
        assert run.work_dir == tmp_path / run.run_id and run.cwd == str(ROOT)
    # Seeds multiply the runs; shared cells (Table 2 / 4 / 6 / figures) run once.
    assert len(table_lib.table_runs([table], seeds=[0, 1], work_root=tmp_path)) == 2 * len(runs)


def test_cells_without_a_generated_config_override_the_method(table_lib, tmp_path):
    runs = table_lib.table_runs(
        ["5", "fig3", "figures", "2", "4"],
        seeds=[0],
        work_root=tmp_path,
        models=["efficientformer-l1"],
        datasets=["cifar100"],
        data_root="/data",
        ckpt_dir="/ckpt",
    )
    by_id = {r.run_id: r for r in runs}
    assert len(by_id) == len(runs)  # union without duplicates
    # Table 5's LP_L1-7 row has its own generated config: no method override.
    lp7 = by_id["efficientformer-l1_full_lbp_wht-lp_l1-7_cifar100_s0"]
    assert lp7.command[2].endswith("efficientformer-l1_full_lp-l1-r7_cifar100.py")
    assert not any(o.startswith("lbp.") for o in lp7.command)
    # Figure 3's LP_L1-3 has none: the r=4 config with the rank set on the command line.
    lp3 = by_id["efficientformer-l1_partial_lbp_wht-lp_l1-3_cifar100_s0"]
    assert lp3.command[2].endswith("efficientformer-l1_partial_lp-l1-r4_cifar100.py")
    opts = lp3.command[lp3.command.index("--cfg-options") + 1 :]
    assert "lbp.r=3" in opts and "lbp.method=lbp_wht" in opts
    assert "train_dataloader.dataset.data_root=/data/cifar100" in opts
    assert any(o.startswith("load_from=/ckpt/") for o in opts)
    spectrum = by_id["efficientformer-l1_partial_lbp_wht-lp_l1-15_spectrum_cifar100_s0"]
    assert "figure5" in spectrum.command[2]


def test_reproduce_scripts_dry_run(table_lib, tmp_path):
    for name in [f"reproduce_table{n}.sh" for n in range(2, 9)] + ["reproduce_figures.sh"]:
        path = ROOT / "scripts" / name
        assert path.is_file() and os.access(path, os.X_OK), path
    env = {**os.environ, "WORK_ROOT": str(tmp_path), "SEEDS": "0 1", "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reproduce_table4.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "12 runs (12 todo)"
    listed = {line.split()[-1] for line in lines if line.startswith("[")}
    assert {i.replace("_s0", f"_s{s}") for i in _expected_ids("4") for s in (0, 1)} == listed
    assert not list(tmp_path.iterdir())  # a dry run creates nothing


def test_config_digest_ignores_placement_but_not_content():
    from lbp_wht.runs.records import config_digest

    base = {"lbp": {"method": "lbp_wht", "r": 4}, "work_dir": "a", "seed": 0}
    assert config_digest(base) == config_digest({**base, "work_dir": "b", "launcher": "pytorch"})
    assert config_digest(base) != config_digest({**base, "lbp": {"method": "lbp_wht", "r": 6}})
    assert config_digest(base) != config_digest({**base, "seed": 1})
