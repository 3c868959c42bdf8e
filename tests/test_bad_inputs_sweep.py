"""Bad inputs and faults around sweeps and run records: each case asserts the exact error type
and that the message names the offending key or file, and for faults that nothing is lost."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbp_wht.experiments.runs import SweepSpecError, grid_runs, parse_axes, table_runs
from lbp_wht.runs.records import STALE_MARK, RecordError, load_record, read_record, read_records
from lbp_wht.runs.sweep import Run, dry_run_listing, run_state, run_sweep

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "configs" / "mini" / "mini-efficientformer_partial_lp-l1-r4_fashion-mnist.py"

# A run that writes a complete record (no torch: plain json).
WRITE = "import json, sys; json.dump({'status': 'complete', 'value': 1.0}, open(sys.argv[1], 'w'))"


def _run(tmp_path: Path, name: str = "r0", **meta) -> Run:
    wd = tmp_path / name
    return Run(name, (sys.executable, "-c", WRITE, str(wd / "record.json")), wd, meta)


def _sweep(runs, **kw):
    out = io.StringIO()
    report = run_sweep(runs, out=out, poll_s=0.05, **kw)
    return report, out.getvalue()


# ---------------------------------------------------------------------------- unusable records
BAD_RECORDS = {
    "truncated": lambda p: p.write_text('{"status": "complete", "val'),
    "json-list": lambda p: p.write_text('[{"status": "complete"}]'),
    "not-utf8": lambda p: p.write_bytes(b'{"status": "\xff\xfe complete"}'),
    "directory": lambda p: p.mkdir(),
    "empty": lambda p: p.write_text(""),
}


@pytest.mark.parametrize("kind", BAD_RECORDS)
def test_load_record_names_the_unusable_file(kind, tmp_path):
    path = tmp_path / "run" / "record.json"
    path.parent.mkdir()
    BAD_RECORDS[kind](path)
    with pytest.raises(RecordError, match=str(path)):
        load_record(path)
    assert read_record(path) is None  # the lenient reader never raises
    with pytest.warns(UserWarning, match=str(path)):
        assert read_records(tmp_path) == []


@pytest.mark.parametrize("kind", BAD_RECORDS)
def test_sweep_moves_a_run_with_an_unusable_record_aside_and_reruns_it(kind, tmp_path):
    run = _run(tmp_path)
    run.work_dir.mkdir()
    (run.work_dir / "iter_100.pth").write_bytes(b"checkpoint")  # must survive
    BAD_RECORDS[kind](run.record_path)
    assert run_state(run) == "stale"
    assert "stale" in dry_run_listing([run])  # the dry run lists it, no crash
    report, out = _sweep([run])
    assert report.ok and report.results[0].status == "done"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"r0{STALE_MARK}")]
    assert len(aside) == 1 and (aside[0] / "iter_100.pth").read_bytes() == b"checkpoint"
    assert str(aside[0]) in out and "moved the earlier work dir aside" in out
    assert json.loads(run.record_path.read_text())["status"] == "complete"
    # Tables never see the moved-aside run.
    assert [r["_path"] for r in read_records(tmp_path)] == [str(run.record_path)]


def test_incomplete_run_is_moved_aside_not_deleted(tmp_path):
    run = _run(tmp_path)
    run.work_dir.mkdir()
    run.record_path.write_text(json.dumps({"status": "running"}))
    (run.work_dir / "run.log").write_text("earlier attempt\n")
    report, out = _sweep([run])
    assert report.results[0].status == "done"
    (aside,) = [p for p in tmp_path.iterdir() if STALE_MARK in p.name]
    assert (aside / "run.log").read_text() == "earlier attempt\n"
    assert "record status 'running'" in out


# ------------------------------------------------------------------ interrupted runs resume
# A run that records the arguments it was started with, then completes.
ARGV = (
    "import json, sys; wd = sys.argv[1]; "
    "open(wd + '/argv.log', 'a').write(' '.join(sys.argv[2:]) + '\\n'); "
    "json.dump({'status': 'complete', 'value': 1.0}, open(wd + '/record.json', 'w'))"
)


def _argv_run(tmp_path: Path, name: str = "r0") -> Run:
    wd = tmp_path / name
    return Run(name, (sys.executable, "-c", ARGV, str(wd)), wd)


def _interrupted(run: Run, digest: str | None = "aaaa", ckpt: bool = True, **rec) -> None:
    """The work dir a killed training leaves: a 'running' record, a checkpoint, a log."""
    run.work_dir.mkdir(parents=True)
    fields = {"status": "running", **rec}
    if digest:
        fields["config_digest"] = digest
    run.record_path.write_text(json.dumps(fields))
    (run.work_dir / "run.log").write_text("earlier attempt\n")
    if ckpt:
        (run.work_dir / "iter_200.pth").write_bytes(b"checkpoint")
        (run.work_dir / "last_checkpoint").write_text(str(run.work_dir / "iter_200.pth"))


@pytest.mark.parametrize("status", ["running", "interrupted", "failed"])
def test_interrupted_run_of_the_same_config_resumes_in_place(status, tmp_path):
    run = _argv_run(tmp_path)
    _interrupted(run, status=status)
    report, out = _sweep([run], expected_digest=lambda r: "aaaa", resume_args=("--resume",))
    assert report.results[0].status == "done"
    assert (run.work_dir / "argv.log").read_text() == "--resume\n"  # continued, not restarted
    assert (run.work_dir / "iter_200.pth").read_bytes() == b"checkpoint"
    assert (run.work_dir / "run.log").read_text().startswith("earlier attempt\n")  # appended
    assert not [p for p in tmp_path.iterdir() if STALE_MARK in p.name]
    assert "resumes in place from iter_200.pth" in out


def test_resume_falls_back_to_the_newest_checkpoint_file(tmp_path):
    run = _argv_run(tmp_path)
    _interrupted(run, ckpt=False)
    (run.work_dir / "epoch_3.pth").write_bytes(b"checkpoint")  # no last_checkpoint pointer
    report, out = _sweep([run], resume_args=("--resume",))
    assert (run.work_dir / "argv.log").read_text() == "--resume\n"
    assert "from epoch_3.pth" in out


@pytest.mark.parametrize(
    "case",
    ["other-config", "no-checkpoint", "unreadable-record", "no-resume-args"],
)
def test_stale_runs_that_cannot_resume_are_moved_aside_and_restart(case, tmp_path):
    run = _argv_run(tmp_path)
    _interrupted(run, digest="zzzz" if case == "other-config" else "aaaa",
                 ckpt=case != "no-checkpoint")  # fmt: skip
    if case == "unreadable-record":
        run.record_path.write_text('{"status": "runn')
    resume = () if case == "no-resume-args" else ("--resume",)
    report, out = _sweep([run], expected_digest=lambda r: "aaaa", resume_args=resume)
    assert report.results[0].status == "done"
    assert (run.work_dir / "argv.log").read_text() == "\n"  # a fresh start, no --resume
    (aside,) = [p for p in tmp_path.iterdir() if STALE_MARK in p.name]
    assert (aside / "run.log").read_text() == "earlier attempt\n"  # nothing lost
    assert "moved the earlier work dir aside" in out


# ------------------------------------------------------------------------ changed config digest
def _complete(run: Run, **fields) -> None:
    run.work_dir.mkdir(parents=True, exist_ok=True)
    run.record_path.write_text(json.dumps({"status": "complete", "value": 0.5, **fields}))


def test_complete_run_of_another_config_is_kept_and_reported(tmp_path):
    run = _run(tmp_path)
    _complete(run, config_digest="aaaa")
    assert run_state(run, lambda r: "bbbb") == "changed"
    assert "changed" in dry_run_listing([run], expected_digest=lambda r: "bbbb")
    report, out = _sweep([run], expected_digest=lambda r: "bbbb")
    assert report.ok and report.results[0].status == "changed"
    assert "CHANGED" in out and "aaaa" in out and "bbbb" in out and "--rerun-changed" in out
    assert json.loads(run.record_path.read_text())["value"] == 0.5  # kept as it was
    assert "1 changed" in report.summary()


def test_rerun_changed_moves_the_old_run_aside_and_reruns(tmp_path):
    run = _run(tmp_path)
    _complete(run, config_digest="aaaa")
    report, out = _sweep([run], expected_digest=lambda r: "bbbb", rerun_changed=True)
    assert report.results[0].status == "done"
    (aside,) = [p for p in tmp_path.iterdir() if STALE_MARK in p.name]
    assert json.loads((aside / "record.json").read_text())["config_digest"] == "aaaa"
    assert json.loads(run.record_path.read_text())["value"] == 1.0


def test_matching_or_missing_digest_is_skipped_and_missing_is_said(tmp_path):
    same, old = _run(tmp_path, "same"), _run(tmp_path, "old")
    _complete(same, config_digest="aaaa")
    _complete(old)  # written before records had a digest
    report, out = _sweep([same, old], expected_digest=lambda r: "aaaa")
    assert [r.status for r in report.results] == ["skipped", "skipped"]
    assert "1 complete run(s) have no config digest" in out
    assert not [p for p in tmp_path.iterdir() if STALE_MARK in p.name]


# ------------------------------------------------------------------------------- grid typos
@pytest.mark.parametrize(
    "axis,named",
    [
        ("lpb.r=2,3", "'lpb'"),  # a typo in the block name
        ("lbp.rr=2,3", "'rr' is not a key of the lbp block"),
        ("train_cfg.max_iter=2", "'max_iter'"),
        ("train_dataloader.dataset.datasets.0.data_root=x", "'datasets'"),
        ("lbp.options.kep=0.3", "'kep' is not an option of a successor method"),
    ],
)
def test_grid_with_an_unknown_key_is_an_error_naming_it(axis, named, tmp_path):
    with pytest.raises(SweepSpecError, match=named):
        grid_runs(MINI, [axis], seeds=[0], work_root=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "axis,named",
    [
        ("lbp.r=", "the axis lbp.r has no values"),
        ("lbp.r=,", "the axis lbp.r has no values"),
        ("lbp.r", "'lbp.r': expected KEY=VALUE"),
        ("=2,3", "'=2,3': expected KEY=VALUE"),
    ],
)
def test_grid_with_an_empty_or_malformed_axis_is_an_error_naming_it(axis, named):
    with pytest.raises(SweepSpecError, match=named):
        parse_axes([axis])


def test_grid_values_are_stripped_and_a_value_twice_or_an_axis_overridden_is_refused(tmp_path):
    runs = grid_runs(MINI, ["lbp.r=2, 3"], seeds=[0], work_root=tmp_path)
    assert [r.run_id for r in runs] == [f"{MINI.stem}_r={r}_s0" for r in (2, 3)]
    with pytest.raises(SweepSpecError, match="the axis lbp.r gives 4 twice"):
        parse_axes(["lbp.r=4, 4"])
    with pytest.raises(SweepSpecError, match="lbp.r is both a --set axis and a --cfg-options key"):
        grid_runs(MINI, ["lbp.r=2,6"], seeds=[0], work_root=tmp_path, extra_options=["lbp.r=8"])


def test_sweep_with_a_missing_interpreter_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sweep.py"), "grid", str(MINI), "--set", "lbp.r=2"]
        + ["--work-root", str(tmp_path / "w"), "--python", "/nonexistent/python"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 2 and "--python /nonexistent/python: no such executable" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "w").exists()


def test_a_run_whose_interpreter_cannot_start_fails_with_the_reason(tmp_path):
    from lbp_wht.runs.sweep import Run, run_sweep

    run = Run("r0", ("/nonexistent/python", "-c", "pass"), tmp_path / "r0", {})
    report = run_sweep([run], jobs=1, out=open(os.devnull, "w"))
    (res,) = report.results
    assert res.status == "failed" and "cannot start /nonexistent/python" in res.message


def test_grid_axis_given_twice_and_unknown_extra_option(tmp_path):
    with pytest.raises(SweepSpecError, match="lbp.r is given twice"):
        parse_axes(["lbp.r=2", "lbp.r=3"])
    with pytest.raises(SweepSpecError, match="--cfg-options lbp.lora_rnak"):
        grid_runs(MINI, [], seeds=[0], work_root=tmp_path, extra_options=["lbp.lora_rnak=4"])
    runs = grid_runs(MINI, ["lbp.r=2,3", "lbp.lhe_iters=5"], seeds=[0], work_root=tmp_path)
    assert [r.run_id for r in runs] == [f"{MINI.stem}_r={r}_lhe_iters=5_s0" for r in (2, 3)]


@pytest.mark.parametrize(
    "axes,named",
    [
        (["lbp.r=2,99"], "--set lbp.r=99: .*r must be at most 15"),
        (["lbp.method=velora", "lbp.options.keep_fraction=0.3"],
         "unknown key 'keep_fraction' for lbp.method='velora'; valid keys: \\['subtoken_size'\\]"),
        (["lbp.method=wta_crs,full_bp", "lbp.options.keep_fraction=0.3"],
         "--set lbp.method=full_bp lbp.options.keep_fraction=0.3: .*takes no options"),
    ],
)  # fmt: skip
def test_grid_combination_the_lbp_block_refuses_is_an_error_before_any_run(axes, named, tmp_path):
    """Every combination's ``lbp`` block is parsed before the sweep starts: a value one of them
    refuses is one error naming that combination, not a failure of each of its runs."""
    with pytest.raises(SweepSpecError, match=named):
        grid_runs(MINI, axes, seeds=[0, 1], work_root=tmp_path)
    assert not list(tmp_path.iterdir())


def test_grid_over_a_successors_options_names_them_in_the_run_ids(tmp_path):
    from lbp_wht.experiments.runs import expected_digest

    axes = ["lbp.method=wta_crs", "lbp.options.keep_fraction=0.3,0.5"]
    runs = grid_runs(MINI, axes, seeds=[0], work_root=tmp_path)
    assert [r.run_id for r in runs] == [
        f"{MINI.stem}_method=wta_crs_options.keep_fraction={v}_s0" for v in ("0.3", "0.5")
    ]
    assert len({expected_digest(r) for r in runs}) == 2


def test_sweep_tool_takes_several_set_flags(tmp_path):
    """``--set A --set B`` is both axes (the second flag used to replace the first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sweep.py"), "grid", str(MINI), "--set", "lbp.r=2,3"]
        + ["--set", "lbp.lhe_iters=5", "--work-root", str(tmp_path), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"{MINI.stem}_r=3_lhe_iters=5_s0" in res.stdout, res.stdout


def test_grid_missing_config_and_unknown_table_filters(tmp_path):
    with pytest.raises(SweepSpecError, match="nope.py"):
        grid_runs(tmp_path / "nope.py", ["lbp.r=2"], seeds=[0], work_root=tmp_path)
    with pytest.raises(SweepSpecError, match="vit-b"):
        table_runs(["4"], seeds=[0], work_root=tmp_path, models=["vit-b"])
    with pytest.raises(SweepSpecError, match="fashion"):
        table_runs(["4"], seeds=[0], work_root=tmp_path, datasets=["fashion"])


def test_sweep_tool_exits_2_naming_the_bad_axis(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for axis, named in (("lpb.r=2,3", "'lpb'"), ("lbp.r=", "lbp.r has no values")):
        res = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "sweep.py"), "grid", str(MINI), "--set", axis]
            + ["--work-root", str(tmp_path), "--dry-run"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert res.returncode == 2 and named in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------- reproduce scripts
def test_reproduce_dry_run_fails_when_the_interpreter_is_broken(tmp_path):
    broken = tmp_path / "python"
    broken.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import no_such_module_torch"\n')
    broken.chmod(0o755)
    env = {**os.environ, "PYTHON": str(broken), "WORK_ROOT": str(tmp_path / "w")}
    for script in ("reproduce_table4.sh", "reproduce_figures.sh"):
        res = subprocess.run(
            ["bash", str(ROOT / "scripts" / script), "--dry-run"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert res.returncode != 0, (script, res.stdout, res.stderr)
        assert "no_such_module_torch" in res.stderr, res.stderr
