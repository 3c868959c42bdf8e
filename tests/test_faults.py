"""Faults during real ``tools/train.py`` runs (mini config, subprocesses): nothing is lost.

Each test injects one fault (``fault_hooks.FaultHook``) and checks what is on disk afterwards
and that ``--resume`` finishes the run: a save failing on a full disk (``RLIMIT_FSIZE``), a
kill -9 in the middle of a save, a truncated newest checkpoint, SIGTERM (after which a fresh
start in the same dir is refused, nothing replaced), a NaN weight, two runs on one work dir
and a sweep-launched run (which holds the lock for its child).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from minirun import MINI_CLS, cls_options, fault_config, tool, write_mini_data

import lbp_wht.integrations.runner  # noqa: F401  (the weights-only allowlist)
from lbp_wht.integrations.checkpoint import load_checkpoint_file


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_mini_data(tmp_path_factory.mktemp("fmnist"))


def _record(wd: Path) -> dict:
    return json.loads((wd / "record.json").read_text())


def _train(config: Path, wd: Path, data: str, *flags: str, opts=(), env=None, iters: int = 4):
    options = [*cls_options(data, iters=iters, ckpt_every=2), *opts]
    return tool("tools/train.py", str(config), "--work-dir", str(wd), *flags,
                "--cfg-options", *options, env=env)  # fmt: skip


def _fault(kind: str, at: int) -> dict:
    return {"LBP_TEST_FAULT": kind, "LBP_TEST_FAULT_ITER": str(at)}


def _resume_completes(config: Path, wd: Path, data: str, from_iter: int) -> None:
    proc = _train(config, wd, data, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resumed from {wd / f'iter_{from_iter}.pth'}" in proc.stdout + proc.stderr
    rec = _record(wd)
    assert rec["status"] == "complete" and rec["iterations"] == 4
    assert (wd / "last_checkpoint").read_text() == str(wd / "iter_4.pth")
    assert not (wd / "iter_2.pth").exists()  # max_keep_ckpts=1, once iter_4 was complete


@pytest.mark.slow
def test_disk_full_during_save_keeps_the_previous_checkpoint(data, tmp_path):
    config, wd = fault_config(tmp_path), tmp_path / "work"
    proc = _train(config, wd, data, env=_fault("fsize", 3))
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr
    assert "could not save checkpoint" in err and str(wd / "iter_4.pth") in err
    assert "File too large" in err and f"previous checkpoint {wd / 'iter_2.pth'}" in err
    assert (wd / "last_checkpoint").read_text() == str(wd / "iter_2.pth")
    assert not (wd / "iter_4.pth").exists() and not list(wd.glob(".*.tmp*"))
    load_checkpoint_file(wd / "iter_2.pth")  # complete and loadable
    rec = _record(wd)
    assert rec["status"] == "failed" and "CheckpointSaveError" in rec["error"]
    _resume_completes(config, wd, data, from_iter=2)


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_save(data, tmp_path):
    config, wd = fault_config(tmp_path), tmp_path / "work"
    proc = _train(config, wd, data, env=_fault("kill_mid_save", 3))
    assert proc.returncode == -signal.SIGKILL
    assert (wd / "last_checkpoint").read_text() == str(wd / "iter_2.pth")
    assert [p.name for p in wd.glob(".iter_4.pth.*.tmp.pth")]  # the half-written temp file
    assert not (wd / "iter_4.pth").exists()
    assert _record(wd)["status"] == "running"  # kill -9 leaves no chance to say more
    _resume_completes(config, wd, data, from_iter=2)
    assert not list(wd.glob(".*.tmp*"))  # removed by the resumed run


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped_and_kept(data, tmp_path):
    wd, keep2 = tmp_path / "work", ["default_hooks.checkpoint.max_keep_ckpts=2"]
    proc = _train(MINI_CLS, wd, data, opts=keep2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the newest checkpoint cut short, as mmengine's in-place save leaves it when killed
    blob = (wd / "iter_4.pth").read_bytes()
    (wd / "iter_4.pth").write_bytes(blob[: len(blob) // 3])
    proc = _train(MINI_CLS, wd, data, "--resume", opts=keep2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"{wd / 'iter_4.pth'} (kept as {wd / 'iter_4.pth.unreadable'})" in out
    assert f"resumed from {wd / 'iter_2.pth'} instead" in out
    assert (wd / "iter_4.pth.unreadable").read_bytes() == blob[: len(blob) // 3]
    assert _record(wd)["status"] == "complete"
    assert load_checkpoint_file(wd / "iter_4.pth")["meta"]["iter"] == 4


@pytest.mark.slow
def test_sigterm_records_interrupted_and_resume_continues(data, tmp_path):
    config, wd = fault_config(tmp_path), tmp_path / "work"
    proc = _train(config, wd, data, env=_fault("sigterm", 3))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    rec = _record(wd)
    assert rec["status"] == "interrupted" and rec["iterations"] == 2  # counted by mmengine
    assert "SIGTERM" in rec["error"] and "--resume" in rec["error"]
    # A fresh start (no --resume) there would replace the record and the checkpoint: refused.
    before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()}
    fresh = _train(config, wd, data)
    assert fresh.returncode == 2, fresh.stderr[-3000:]
    assert "WorkDirHasRunError" in fresh.stderr and "record status 'interrupted'" in fresh.stderr
    assert {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()} == before
    _resume_completes(config, wd, data, from_iter=2)


def test_nan_weights_fail_fast_and_keep_the_finite_checkpoint(data, tmp_path):
    config, wd = fault_config(tmp_path), tmp_path / "work"
    proc = _train(config, wd, data, env=_fault("nan", 2))
    assert proc.returncode == 1
    assert "training loss is not finite at iteration 3 of 4" in proc.stderr
    rec = _record(wd)
    assert rec["status"] == "failed" and "NonFiniteLossError" in rec["error"]
    assert rec["iterations"] == 2 and rec["value"] is None
    state = load_checkpoint_file(wd / "iter_2.pth")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


HOLD_LOCK = """
import sys, time
from lbp_wht.runs.sweep import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_on_the_same_work_dir_is_refused(data, tmp_path):
    """Another process (not an ancestor) trains in the dir: refused, nothing written."""
    import subprocess
    import sys

    from minirun import ENV

    from lbp_wht.runs.sweep import lock_path

    wd = tmp_path / "work"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path(wd))],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _train(MINI_CLS, wd, data)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"work dir {wd} is in use" in proc.stderr
    assert f"pid and start: {holder.pid} " in proc.stderr
    assert not wd.exists()  # nothing of the refused run was written


def test_sweep_launched_run_holds_the_lock_for_itself(data, tmp_path):
    """The sweep holds the run's lock and passes it to tools/train.py, which must proceed."""
    import sys

    from minirun import ENV, ROOT

    from lbp_wht.runs.sweep import Run, run_sweep

    wd = tmp_path / "sweep" / "run_s0"
    cmd = [sys.executable, str(ROOT / "tools/train.py"), str(MINI_CLS), "--work-dir", str(wd),
           "--cfg-options", *cls_options(data, iters=2)]  # fmt: skip
    old = dict(os.environ)
    os.environ.update(ENV)
    try:
        report = run_sweep([Run("run_s0", tuple(cmd), wd, cwd=str(ROOT))], poll_s=0.2)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert report.ok, [r.message for r in report.results]
    assert _record(wd)["status"] == "complete"


def test_sweep_resumes_an_interrupted_run_from_its_checkpoint(data, tmp_path):
    """``tools/sweep.py``: a run stopped by SIGTERM after its first checkpoint is continued by
    the next sweep (``--resume`` in place, same work dir), not restarted; the config digest the
    sweep expects equals the one the training recorded."""
    config, work = fault_config(tmp_path), tmp_path / "sweep"
    cmd = ("tools/sweep.py", "grid", str(config), "--work-root", str(work), "--name", "g",
           "--cfg-options", *cls_options(data, iters=4, ckpt_every=2))  # fmt: skip
    first = tool(*cmd, env=_fault("sigterm", 3), timeout=400)
    assert first.returncode == 1, first.stderr[-3000:]
    (wd,) = [p for p in work.iterdir() if p.is_dir()]
    assert _record(wd)["status"] == "interrupted" and (wd / "iter_2.pth").exists()
    second = tool(*cmd, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumes in place from iter_2.pth" in second.stderr
    assert f"resumed from {wd / 'iter_2.pth'}" in (wd / "run.log").read_text()
    rec = _record(wd)
    assert rec["status"] == "complete" and rec["iterations"] == 4
    assert [p.name for p in work.iterdir() if p.is_dir()] == [wd.name]  # nothing moved aside


def test_a_broken_collective_then_sigterm_counts_as_interrupted():
    """Distributed stop: a peer that stopped first breaks this rank's all-reduce before this
    rank's own SIGTERM arrives; the record must still say interrupted, not failed."""
    import threading

    from lbp_wht.integrations.launch import Interruptible, RunInterrupted

    broken = RuntimeError("Connection closed by peer")
    with Interruptible() as guard:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        err = guard.settle(broken, grace_s=30)
    assert isinstance(err, RunInterrupted) and err.signum == signal.SIGTERM
    with Interruptible() as guard:
        assert guard.settle(broken, grace_s=0.1) is broken  # no signal: a real failure
