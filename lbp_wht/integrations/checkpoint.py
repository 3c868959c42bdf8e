"""Checkpoints that survive a kill, and loading that names the file when it cannot.

Saving (:class:`DurableCheckpointHook` with :func:`save_durably`)
-----------------------------------------------------------------
mmengine's ``CheckpointHook`` deletes the oldest kept checkpoint *before* it writes the next one
and writes the file in place; with ``max_keep_ckpts=1`` a kill, Ctrl-C or a full disk during
that save leaves a truncated file and a ``last_checkpoint`` naming a deleted one. Here a save is

1. the checkpoint is written to ``.<name>.<pid>.tmp`` in the same directory (same filesystem,
   so the rename below is atomic), flushed and ``fsync``-ed;
2. ``os.replace`` puts it under its real name and the directory is ``fsync``-ed;
3. only then ``last_checkpoint`` is rewritten (the same way, atomically);
4. only then checkpoints beyond ``max_keep_ckpts`` are deleted; likewise the previous *best*
   checkpoint (``save_best``) is deleted only after the new best one is complete (mmengine
   deletes it first).

A kill at any moment therefore leaves the previous checkpoints intact and ``last_checkpoint``
naming a complete file, plus at most a stale temp file (removed when the next run starts). A
failed write (disk full, file-size limit) raises :class:`CheckpointSaveError` naming the file and
the checkpoint that is still intact. Remote back ends (``s3://`` ...) are written as mmengine
writes them.

Loading (:func:`load_checkpoint_file`)
--------------------------------------
Every checkpoint this project reads goes through ``torch.load(weights_only=True)`` with the
allowlist of :func:`allow_mmengine_checkpoint_globals` (applied on import), and never through
``weights_only=False``; zip-format files are CRC-checked first (``torch.load`` does not check
tensor data, so a damaged copy would load as wrong weights). Failures name the file: :class:`CheckpointNotFoundError` (missing),
:class:`CheckpointLoadError` (empty, truncated, corrupt, not a PyTorch checkpoint) and
:class:`UnsafeCheckpointError` (the file asks for Python objects outside the allowlist, i.e. it
could run code; refused).

Allowlist: mmengine 0.10.7 training checkpoints hold a little more than tensors (the message
hub's ``HistoryBuffer``, numpy arrays / dtypes / scalars, and ``getattr(HistoryBuffer, 'min')``
style references to its statistics methods). Exactly those globals are allowlisted;
``builtins.getattr`` itself is *not* (that would allow arbitrary code): a restricted stand-in
pickled under that name only resolves ``HistoryBuffer`` statistics methods.

Finding (:func:`checkpoint_candidates`)
---------------------------------------
The checkpoints of a work dir, newest first (``iter_N.pth`` / ``epoch_N.pth`` and whatever
``last_checkpoint`` names, by modification time), for a resume that falls back to the newest
*loadable* one (:meth:`LBPWHTRunner.load_or_resume
<lbp_wht.integrations.runner.LBPWHTRunner.load_or_resume>`).
"""

from __future__ import annotations

import copy
import os
import os.path as osp
import pickle
import re
import zipfile
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer, print_log
from mmengine.registry import HOOKS

__all__ = [
    "CheckpointLoadError",
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "NonFiniteWeightsError",
    "UnsafeCheckpointError",
    "DurableCheckpointHook",
    "allow_mmengine_checkpoint_globals",
    "atomic_write_text",
    "checkpoint_candidates",
    "load_checkpoint_file",
    "move_aside",
    "remove_stale_temp_files",
    "save_durably",
]

LAST_CHECKPOINT = "last_checkpoint"
#: Message-hub keys (prefixes) of the best checkpoint: ``best_ckpt[_<key>]``, ``best_score[_<key>]``.
_BEST_INFO = ("best_ckpt", "best_score")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")
_STEP_RE = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint file the run needs does not exist."""


class CheckpointLoadError(RuntimeError):
    """A checkpoint file exists but cannot be read (empty, truncated, corrupt, not a checkpoint)."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asks for Python objects outside the allowlist: refused, never loaded."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, file-size limit, permissions)."""


class NonFiniteWeightsError(FloatingPointError):
    """Trainable weights are NaN / Inf at a save: the run diverged; nothing is saved."""


# ---------------------------------------------------------------------------------------------
# torch.load allowlist (see module docstring)
# ---------------------------------------------------------------------------------------------
def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to what mmengine checkpoints need: HistoryBuffer statistics."""
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith("_"):
        if name in HistoryBuffer._statistics_methods or name in ("min", "max", "mean", "current"):
            return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics "
        "methods are allowed (lbp_wht.integrations.checkpoint)"
    )


def allow_mmengine_checkpoint_globals() -> None:
    """Allowlist the globals of mmengine training checkpoints for ``weights_only`` loading."""
    import numpy as np

    safe: list[Any] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        (_history_buffer_getattr, "builtins.getattr"),
        (_history_buffer_getattr, "__builtin__.getattr"),
    ]
    core = getattr(np, "_core", None) or np.core
    safe += [core.multiarray._reconstruct, core.multiarray.scalar]
    # numpy 2 pickles dtypes as instances of numpy.dtypes.<Name>DType classes.
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n[0].isupper()]
    torch.serialization.add_safe_globals(safe)


allow_mmengine_checkpoint_globals()


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")

_UNREADABLE_HINT = (
    "It is truncated, corrupt or not a PyTorch checkpoint (an interrupted save or copy, a failed "
    "download, an HTML error page). Copy or download it again (pretrained weights: "
    "tools/fetch_checkpoints.py), or point to another file."
)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name ``path``.

    Remote paths (``http://``, ``s3://``, ``open-mmlab://`` ...) are read by mmengine (whose
    ``torch.load`` calls use torch's ``weights_only=True`` default).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointLoadError: it is a directory, empty, truncated, corrupt or no checkpoint.
        UnsafeCheckpointError: it needs globals outside the allowlist (it could run code).
    """
    text = str(path)
    if "://" in text:
        from mmengine.runner.checkpoint import _load_checkpoint

        try:
            return _load_checkpoint(text, map_location=map_location)
        except pickle.UnpicklingError as err:
            raise _unpickling_error(text, err) from None
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {text} does not exist")
    if p.is_dir():
        raise CheckpointLoadError(f"checkpoint {text} is a directory, not a checkpoint file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointLoadError(
            f"cannot load checkpoint {text}: the file is empty (0 bytes). {_UNREADABLE_HINT}"
        )
    _verify_zip(p, size)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(text, err) from None
    except MemoryError:
        raise
    except Exception as err:  # anything torch.load raises on a bad file: say which file
        raise CheckpointLoadError(
            f"cannot load checkpoint {text} ({size} bytes): {_first_line(err)}. {_UNREADABLE_HINT}"
        ) from None


def _verify_zip(path: Path, size: int) -> None:
    """CRC-check every member of a zip-format checkpoint (torch's format since 1.6).

    ``torch.load`` reads tensor data by offset without checking it, so damage inside the
    data (a bad copy, a disk error) would load as silently wrong weights. Reading the file
    once more costs about a second per GB (mostly from the page cache).
    """
    if not zipfile.is_zipfile(path):
        return  # legacy (pre-1.6) pickle format, or not a checkpoint: torch.load decides
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as err:
        raise CheckpointLoadError(
            f"cannot load checkpoint {path} ({size} bytes): {_first_line(err)}. {_UNREADABLE_HINT}"
        ) from None
    if bad is not None:
        raise CheckpointLoadError(
            f"cannot load checkpoint {path} ({size} bytes): its record {bad!r} fails the CRC "
            f"check (the file is corrupt). {_UNREADABLE_HINT}"
        )


def _unpickling_error(path: str, err: pickle.UnpicklingError) -> Exception:
    # torch's own message suggests turning the weights-only loader off; never pass that on.
    names = sorted(set(_GLOBAL_RE.findall(str(err))))
    if names:
        return UnsafeCheckpointError(
            f"refused to load {path}: it asks for Python objects outside this project's "
            f"allowlist ({', '.join(names)}); unpickling them could run arbitrary code. Only "
            "tensors and the objects mmengine's own checkpoints hold are loaded "
            "(lbp_wht.integrations.checkpoint). Use a checkpoint that holds a plain state dict "
            "(re-save it from a trusted environment with torch.save(model.state_dict(), PATH))."
        )
    return CheckpointLoadError(
        f"cannot load checkpoint {path}: the weights-only unpickler rejected its content "
        f"({type(err).__name__}). {_UNREADABLE_HINT}"
    )


# ---------------------------------------------------------------------------------------------
# durable writing
# ---------------------------------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def temp_name(filename: str) -> str:
    """The temp file name under which ``filename`` is written before the rename."""
    return f".{filename}.{os.getpid()}.tmp"


def _publish(tmp: str, final: str) -> None:
    """fsync ``tmp``, rename it onto ``final`` (atomic on one filesystem), fsync the directory."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(osp.dirname(final) or ".")


def save_durably(write: Callable[[str], None], final: str, intact: str | None = None) -> None:
    """Write a file with ``write(temp_path)``, then publish it as ``final`` (module docstring).

    Args:
        write: writes the complete file to the path it is given.
        final: the path the file must end up at.
        intact: the newest complete checkpoint (named in the error if this save fails).

    Raises:
        CheckpointSaveError: the write failed (the temp file is removed, ``final`` untouched).
    """
    tmp = osp.join(osp.dirname(final) or ".", temp_name(osp.basename(final)))
    try:
        write(tmp)
        _publish(tmp, final)
    except OSError as err:
        _unlink_quietly(tmp)
        kept = (
            f"The previous checkpoint {intact} is intact; free some space and continue the run "
            "with tools/train.py CONFIG --work-dir WORK_DIR --resume."
            if intact
            else "No earlier checkpoint of this run exists."
        )
        raise CheckpointSaveError(
            f"could not save checkpoint {final}: {err.strerror or err} (disk full, a file-size "
            f"limit or no permission?). {kept}"
        ) from err
    except BaseException:  # Ctrl-C / SIGTERM mid-save: leave no partial file behind
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Replace the text file ``path`` atomically (temp file + fsync + ``os.replace``)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    save_durably(write, path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete the temp files of interrupted saves (``.<name>.<pid>.tmp`` of dead processes)."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TMP_RE.match(name)
        if m and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            _unlink_quietly(osp.join(directory, name))
            removed.append(name)
    return removed


def move_aside(path: str, suffix: str = ".unreadable") -> str:
    """Rename ``path`` to ``path + suffix`` (``.1``, ``.2`` ... if taken); returns the new path."""
    target, n = path + suffix, 0
    while osp.exists(target):
        n += 1
        target = f"{path}{suffix}.{n}"
    os.replace(path, target)
    return target


# ---------------------------------------------------------------------------------------------
# finding
# ---------------------------------------------------------------------------------------------
def read_last_checkpoint(work_dir: str) -> str | None:
    """What ``<work_dir>/last_checkpoint`` names (None if there is no such file)."""
    try:
        with open(osp.join(work_dir, LAST_CHECKPOINT)) as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def checkpoint_candidates(work_dir: str) -> list[str]:
    """Existing checkpoints of a work dir, newest first.

    The files ``iter_N.pth`` / ``epoch_N.pth`` in ``work_dir`` and in the directory of the file
    ``last_checkpoint`` names (the hook's ``out_dir`` may differ), by modification time, then
    N. By time, not N: a fresh start in a directory that still holds an earlier attempt's
    ``iter_100.pth`` resumes its own ``iter_20.pth``; and a file saved just before a kill, while
    ``last_checkpoint`` still named the one before, is still the newest.
    """
    last = read_last_checkpoint(work_dir)
    dirs = [work_dir] + ([osp.dirname(last)] if last and osp.dirname(last) else [])
    found: dict[str, tuple[float, int, int]] = {}
    for d in dict.fromkeys(osp.abspath(x) for x in dirs):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            m = _STEP_RE.match(name)
            path = osp.join(d, name)
            if m and osp.isfile(path):
                found[path] = (osp.getmtime(path), int(m[1]), 0)
    if last and osp.isfile(last):
        path = osp.abspath(last)
        m = _STEP_RE.match(osp.basename(path))
        step = int(m[1]) if m else -1
        found[path] = (osp.getmtime(path), step, 1)
    return sorted(found, key=lambda p: found[p], reverse=True)


# ---------------------------------------------------------------------------------------------
# the hook
# ---------------------------------------------------------------------------------------------
@HOOKS.register_module()
class DurableCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` with the save order of the module docstring.

    Same arguments and behaviour as ``CheckpointHook``, except that the new checkpoint is
    complete on disk (written by the runner's ``save_checkpoint``; ``LBPWHTRunner`` writes it
    durably) before ``last_checkpoint`` changes and before any old checkpoint is deleted.
    ``LBPWHTRunner`` puts it in place of ``CheckpointHook``.
    """

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        if is_main_process() and "://" not in str(self.out_dir):
            for name in remove_stale_temp_files(str(self.out_dir)):
                runner.logger.info(f"removed {name}: the temp file of an interrupted save")

    def _save_best_checkpoint(self, runner: Any, metrics: dict) -> None:
        """mmengine's best-checkpoint logic, with every deletion it makes held back until it
        returned, i.e. until the new best checkpoint (and the regular one it re-saves) is
        complete: a failed or killed save keeps the previous best file."""
        backend = self.file_backend
        deferred: list[tuple[Callable[[Any], None], Any]] = []
        for name in ("remove", "rmtree"):
            real = getattr(backend, name)
            setattr(backend, name, lambda path, _real=real: deferred.append((_real, path)))
        # mmengine points its state at the new best file before writing it: after a failed
        # save it must point at the previous, still existing one again
        paths = ("best_ckpt_path", "best_ckpt_path_dict")
        state = {k: copy.copy(v) for k, v in vars(self).items() if k in paths}
        hub = runner.message_hub
        info = {k: v for k, v in hub.runtime_info.items() if k.startswith(_BEST_INFO)}
        try:
            super()._save_best_checkpoint(runner, metrics)
        except BaseException:
            vars(self).update(state)
            for key in [k for k in hub.runtime_info if k.startswith(_BEST_INFO)]:
                hub.runtime_info.pop(key)
            for key, value in info.items():
                hub.update_info(key, value)
            raise
        finally:
            for name in ("remove", "rmtree"):
                vars(backend).pop(name, None)  # back to the class's methods
        best = getattr(self, "best_ckpt_path_dict", {}).values()  # several key indicators
        keep = {getattr(self, "best_ckpt_path", None), self.last_ckpt, *best}
        for delete, path in deferred:
            if path not in keep:  # a new best file under the old name is not deleted
                delete(path)

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        bad = [n for n, p in model.named_parameters() if p.requires_grad and not p.isfinite().all()]
        if bad:  # never replace an intact checkpoint by a diverged one
            raise NonFiniteWeightsError(
                f"trainable weights are NaN / Inf at iteration {runner.iter + 1} "
                f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): the run diverged. "
                f"Not saving {self.filename_tmpl.format(step)}; the last checkpoint "
                f"({read_last_checkpoint(runner.work_dir)}) is kept."
            )
        outdated: list[int] = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            kept = [*self.keep_ckpt_ids, step]
            outdated = kept[: -self.max_keep_ckpts]
            self.keep_ckpt_ids = deque(kept[-self.max_keep_ckpts :], self.max_keep_ckpts)
            # the checkpoint records what will be kept once it is written
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        pointer = osp.join(runner.work_dir, LAST_CHECKPOINT)
        if "://" in str(self.last_ckpt):
            with open(pointer, "w") as f:
                f.write(str(self.last_ckpt))
        else:
            atomic_write_text(pointer, str(self.last_ckpt))
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if path == self.last_ckpt:
                continue
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves directories
                self.file_backend.rmtree(path)
            print_log(f"removed outdated checkpoint {path}", logger="current", level=10)
