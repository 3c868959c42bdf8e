"""Durable checkpoint saving, loadable-checkpoint search and the weights-only loading rules.

- ``save_durably`` (``lbp_wht.io.atomic_write``): the file appears complete or not at all; a
  failed write (disk full, a real ``RLIMIT_FSIZE``) names the file and leaves the previous one
  intact; Ctrl-C leaves no temp;
- ``DurableCheckpointHook`` in a real runner: with ``max_keep_ckpts=1`` a failing save keeps
  the previous checkpoint and ``last_checkpoint``; the old one goes only after the new one;
  a NaN weight is never saved;
- ``checkpoint_candidates`` (newest file first, a dangling ``last_checkpoint`` ignored),
  stale temp files, moving unreadable files aside (``lbp_wht.io``);
- malicious pickles are refused on every load path and run nothing;
- the work-dir lock is the sweep's lock file, and a lock this process holds counts as ours.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from minirun import ENV, MINI_CLS, cls_options, load_cfg, make_runner, write_mini_data

import lbp_wht.integrations.runner  # noqa: F401  (allowlist, registrations)
from lbp_wht import io
from lbp_wht.integrations import checkpoint as ck


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_mini_data(tmp_path_factory.mktemp("fmnist"))


# ---------------------------------------------------------------------------------------------
# save_durably
# ---------------------------------------------------------------------------------------------
def _writer(payload: bytes, fail_after: int | None = None, exc: BaseException | None = None):
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload if fail_after is None else payload[:fail_after])
        if exc is not None:
            raise exc

    return write


def test_save_durably_publishes_the_complete_file(tmp_path):
    final = tmp_path / "iter_2.pth"
    ck.save_durably(_writer(b"x" * 1000), str(final))
    assert final.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth"]


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EFBIG, "File too large")],
)
def test_failed_save_names_the_file_and_keeps_the_old_one(tmp_path, exc):
    final = tmp_path / "iter_4.pth"
    final.write_bytes(b"old complete checkpoint")
    with pytest.raises(ck.CheckpointSaveError) as err:
        ck.save_durably(_writer(b"new" * 100, 50, exc), str(final), intact=str(final))
    msg = str(err.value)
    assert str(final) in msg and exc.strerror in msg and "--resume" in msg
    assert final.read_bytes() == b"old complete checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["iter_4.pth"]  # no temp file left


def test_ctrl_c_during_a_save_leaves_no_temp_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        ck.save_durably(_writer(b"y" * 100, 10, KeyboardInterrupt()), str(tmp_path / "a.pth"))
    assert list(tmp_path.iterdir()) == []


FSIZE_SCRIPT = """
import resource, sys
from lbp_wht.integrations.checkpoint import CheckpointSaveError, save_durably
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"z" * (2 << 20))
try:
    save_durably(write, sys.argv[1], intact=sys.argv[2])
except CheckpointSaveError as err:
    print(err)
    sys.exit(3)
"""


def test_a_real_file_size_limit_is_reported_with_the_file(tmp_path):
    """As on a full disk: the kernel refuses the write (EFBIG); nothing half-written stays."""
    final, old = tmp_path / "iter_6.pth", tmp_path / "iter_4.pth"
    old.write_bytes(b"intact")
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(final), str(old)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"could not save checkpoint {final}: File too large" in proc.stdout
    assert f"The previous checkpoint {old} is intact" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_4.pth"]


def test_atomic_write_replaces_whole(tmp_path):
    path = tmp_path / "last_checkpoint"
    path.write_text("old")
    io.atomic_write(str(path), "/w/iter_4.pth")
    assert path.read_text() == "/w/iter_4.pth" and len(list(tmp_path.iterdir())) == 1
    io.atomic_write(path, b"\x00bytes")  # bytes, or a function writing the file
    io.atomic_write(path, lambda tmp: Path(tmp).write_text("from a writer"))
    assert path.read_text() == "from a writer" and len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------------------------------------
# the hook in a real runner
# ---------------------------------------------------------------------------------------------
def test_hook_keeps_the_previous_checkpoint_when_a_save_fails(data, tmp_path, monkeypatch):
    cfg = load_cfg(MINI_CLS, cls_options(data, iters=4, ckpt_every=2), tmp_path)
    runner = make_runner(cfg)
    hook = next(h for h in runner.hooks if type(h).__name__ == "DurableCheckpointHook")
    assert hook.max_keep_ckpts == 1
    real = io._publish

    def publish(tmp: str, final: str) -> None:
        if final.endswith("iter_4.pth"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, final)

    monkeypatch.setattr(io, "_publish", publish)
    with pytest.raises(ck.CheckpointSaveError, match="iter_4.pth: No space left on device"):
        runner.train()
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_2.pth")
    assert ck.load_checkpoint_file(tmp_path / "iter_2.pth")["meta"]["iter"] == 2
    assert not (tmp_path / "iter_4.pth").exists() and not list(tmp_path.glob(".*.tmp*"))


def test_hook_removes_the_previous_best_only_after_the_new_best_is_complete(
    data, tmp_path, monkeypatch
):
    opts = [
        "default_hooks.checkpoint.save_best=accuracy/top1",
        "default_hooks.checkpoint.rule=greater",
    ]
    cfg = load_cfg(MINI_CLS, cls_options(data, iters=4) + opts, tmp_path)
    runner = make_runner(cfg)
    hook = next(h for h in runner.hooks if isinstance(h, ck.DurableCheckpointHook))
    hook.before_train(runner)
    runner.train_loop._iter = 2
    hook._save_best_checkpoint(runner, {"accuracy/top1": 50.0})
    first = tmp_path / "best_accuracy_top1_iter_2.pth"
    assert ck.load_checkpoint_file(first)["meta"]["iter"] == 2
    real = io._publish

    def publish(tmp: str, final: str) -> None:
        if Path(final).name.startswith("best_"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, final)

    monkeypatch.setattr(io, "_publish", publish)
    runner.train_loop._iter = 4
    with pytest.raises(ck.CheckpointSaveError, match="best_accuracy_top1_iter_4.pth"):
        hook._save_best_checkpoint(runner, {"accuracy/top1": 60.0})
    assert ck.load_checkpoint_file(first)["meta"]["iter"] == 2  # mmengine had deleted it first
    monkeypatch.setattr(io, "_publish", real)
    hook._save_best_checkpoint(runner, {"accuracy/top1": 70.0})  # a save that works
    assert not first.exists()  # removed once the new best was complete
    assert ck.load_checkpoint_file(tmp_path / "best_accuracy_top1_iter_4.pth")["meta"]["iter"] == 4


def test_hook_refuses_to_save_nan_weights(data, tmp_path):
    cfg = load_cfg(MINI_CLS, cls_options(data, iters=1), tmp_path)
    runner = make_runner(cfg)
    hook = next(h for h in runner.hooks if isinstance(h, ck.DurableCheckpointHook))
    hook.before_train(runner)
    name, param = next((n, p) for n, p in runner.model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        param.fill_(float("nan"))
    with pytest.raises(ck.NonFiniteWeightsError, match=name):
        hook._save_checkpoint(runner)
    assert not list(tmp_path.glob("*.pth"))


# ---------------------------------------------------------------------------------------------
# finding checkpoints
# ---------------------------------------------------------------------------------------------
def test_candidates_newest_first_and_dangling_pointer(tmp_path):
    for age, n in enumerate((2, 10, 4)):  # iter_4 the oldest file, iter_2 the newest
        (tmp_path / f"iter_{n}.pth").write_bytes(b"x")
        os.utime(tmp_path / f"iter_{n}.pth", (1e9 - age, 1e9 - age))
    (tmp_path / "best_accuracy_iter_10.pth").write_bytes(b"x")  # not a resume point
    (tmp_path / ".iter_12.pth.123.k3x_9q2a.tmp.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_12.pth"))  # deleted
    names = [Path(p).name for p in ck.checkpoint_candidates(str(tmp_path))]
    assert names == ["iter_2.pth", "iter_10.pth", "iter_4.pth"]
    os.utime(tmp_path / "iter_4.pth", (1e9, 1e9))  # same time as iter_2: the larger N first
    assert Path(ck.checkpoint_candidates(str(tmp_path))[0]).name == "iter_4.pth"


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale, live = f".iter_4.pth.{dead}.a1b2c3d4.tmp.pth", f".iter_6.pth.{os.getppid()}.x_y.tmp.pth"
    (tmp_path / stale).write_bytes(b"half")
    (tmp_path / live).write_bytes(b"alive")
    (tmp_path / f".last_checkpoint.{dead}.12345678.tmp").write_bytes(b"half")  # no suffix
    (tmp_path / f".iter_8.pth.{dead}.tmp").write_bytes(b"not ours")  # no random part
    assert io.remove_stale_temps(str(tmp_path)) == sorted(
        [stale, f".last_checkpoint.{dead}.12345678.tmp"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, f".iter_8.pth.{dead}.tmp"])


def test_atomic_temp_names_carry_pid_and_suffix(tmp_path):
    with io.atomic_path(tmp_path / "iter_4.pth") as tmp:
        assert tmp.name.startswith(f".iter_4.pth.{os.getpid()}.") and tmp.suffix == ".pth"
        assert io._TMP.match(tmp.name)


def test_move_aside_never_overwrites(tmp_path):
    for _ in range(3):
        (tmp_path / "iter_4.pth").write_bytes(b"bad")
        io.move_aside(str(tmp_path / "iter_4.pth"), ".unreadable")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["iter_4.pth.unreadable", "iter_4.pth.unreadable.1", "iter_4.pth.unreadable.2"]


# ---------------------------------------------------------------------------------------------
# malicious pickles, on every load path
# ---------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": {"w": torch.ones(1)}, "meta": {"iter": 1}, "x": _Payload(marker)}, path
    )
    return path, marker


def test_malicious_pickle_refused_by_the_loader(evil):
    path, marker = evil
    with pytest.raises(ck.UnsafeCheckpointError) as err:
        ck.load_checkpoint_file(path)
    assert str(path) in str(err.value) and "posix.system" in str(err.value)
    assert "weights_only=False" not in str(err.value) and not marker.exists()


@pytest.mark.parametrize("path_kind", ["load_from", "resume", "test"])
def test_malicious_pickle_refused_on_runner_paths(data, tmp_path, evil, path_kind):
    path, marker = evil
    cfg = load_cfg(MINI_CLS, cls_options(data, iters=1), tmp_path / "work")
    if path_kind == "resume":
        cfg.resume = str(path)
    else:
        cfg.load_from = str(path)
    runner = make_runner(cfg)
    with pytest.raises(ck.UnsafeCheckpointError, match="evil.pth"):
        runner.test() if path_kind == "test" else runner.load_or_resume()
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# the work-dir lock
# ---------------------------------------------------------------------------------------------
def test_work_dir_lock_is_the_sweeps_lock_file(tmp_path):
    from lbp_wht.integrations.launch import claim_work_dir
    from lbp_wht.runs.sweep import Run, lock_path

    wd = tmp_path / "root" / "run_s0"
    lock = claim_work_dir(str(wd), resume=False)  # what tools/train.py takes
    assert lock.path == lock_path(wd) == Run("run_s0", ("true",), wd).lock_path
    lock.release()


def test_a_lock_held_by_this_process_is_ours(tmp_path, monkeypatch):
    """What a sweep child sees: the lock's descriptor is inherited (its number in
    LBP_RUN_LOCK_FD), so the claim proceeds; without it the same lock is someone else's."""
    from lbp_wht.integrations.launch import WorkDirBusyError, claim_work_dir
    from lbp_wht.runs.sweep import LOCK_FD_ENV, RunLock, lock_path

    wd = tmp_path / "run"
    with RunLock(lock_path(wd)) as held:
        assert held.acquire()
        with pytest.raises(WorkDirBusyError, match=f"pid and start: {os.getpid()} "):
            claim_work_dir(str(wd), resume=False)
        monkeypatch.setenv(LOCK_FD_ENV, str(held.fd))
        assert claim_work_dir(str(wd), resume=False) is None  # held for us; not re-taken
    lock = claim_work_dir(str(wd), resume=False)
    assert lock is not None and lock.fd is not None
    lock.release()
