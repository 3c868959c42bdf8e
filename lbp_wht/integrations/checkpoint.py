"""Checkpoints that survive a kill, and loading that names the file when it cannot.

:class:`DurableCheckpointHook`: mmengine's ``CheckpointHook`` saving through
:func:`lbp_wht.io.atomic_write`, deleting old / previous-best checkpoints only after the new
file is complete. :func:`load_checkpoint_file`: ``torch.load(weights_only=True)`` with an
allowlist of what mmengine's checkpoints hold, zip files CRC-checked first.
"""

from __future__ import annotations

import contextlib
import copy
import os
import os.path as osp
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

from lbp_wht.io import atomic_write, remove_stale_temps
from lbp_wht.runs.sweep import LAST_CHECKPOINT, read_last_checkpoint

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


# ------------------------------------------------------------------------------ loading
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
    """Allowlist the globals of mmengine training checkpoints for ``weights_only`` loading:
    the message hub's ``HistoryBuffer``, numpy arrays / dtypes / scalars, and ``getattr`` only
    as the restricted stand-in above (``builtins.getattr`` itself would allow any code)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = getattr(np, "dtypes", None)  # numpy 2 pickles dtypes as numpy.dtypes.<Name>DType
    torch.serialization.add_safe_globals(
        [HistoryBuffer, np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
        + [(_history_buffer_getattr, f"{m}.getattr") for m in ("builtins", "__builtin__")]
        + [
            getattr(dtypes, n)
            for n in dir(dtypes or object)
            if n.endswith("DType") and n[0].isupper()
        ]
    )


allow_mmengine_checkpoint_globals()

_UNREADABLE = (
    "It is truncated, corrupt or not a PyTorch checkpoint (an interrupted save or copy, a failed "
    "download, an HTML error page). Copy or download it again (pretrained weights: "
    "tools/fetch_checkpoints.py), or point to another file."
)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def unpickling_error(path: str, err: pickle.UnpicklingError) -> Exception:
    """Our error for what the weights-only unpickler refused; torch's own message suggests
    turning that loader off, which is never passed on."""
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
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
        f"({type(err).__name__}). {_UNREADABLE}"
    )


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name ``path``; remote paths
    (``s3://``, ``http://`` ...) through mmengine under the same rules."""
    text = str(path)
    if "://" in text:
        from mmengine.runner.checkpoint import _load_checkpoint

        try:
            return _load_checkpoint(text, map_location=map_location)
        except pickle.UnpicklingError as err:
            raise unpickling_error(text, err) from None
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {text} does not exist")
    if p.is_dir():
        raise CheckpointLoadError(f"checkpoint {text} is a directory, not a checkpoint file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointLoadError(
            f"cannot load checkpoint {text}: the file is empty (0 bytes). {_UNREADABLE}"
        )
    if zipfile.is_zipfile(p):  # torch.load reads tensor data unchecked: CRC-check it first
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as err:
            raise CheckpointLoadError(
                f"cannot load checkpoint {text} ({size} bytes): {_first_line(err)}. {_UNREADABLE}"
            ) from None
        if bad is not None:
            raise CheckpointLoadError(
                f"cannot load checkpoint {text} ({size} bytes): its record {bad!r} fails the CRC check (the file is corrupt). {_UNREADABLE}"
            )
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise unpickling_error(text, err) from None
    except MemoryError:
        raise
    except Exception as err:  # anything torch.load raises on a bad file: say which file
        raise CheckpointLoadError(
            f"cannot load checkpoint {text} ({size} bytes): {_first_line(err)}. {_UNREADABLE}"
        ) from None


# ------------------------------------------------------------------------------ finding
def checkpoint_candidates(work_dir: str) -> list[str]:
    """``iter_N.pth`` / ``epoch_N.pth`` of the work dir (and of the folder ``last_checkpoint``
    points into) and the file it names, newest first: by modification time, then N (a file
    saved just before a kill may be newer than what ``last_checkpoint`` still names)."""
    last = read_last_checkpoint(work_dir)
    found: dict[str, tuple[float, int, int]] = {}
    for d in dict.fromkeys(
        osp.abspath(x)
        for x in [work_dir] + ([osp.dirname(last)] if last and osp.dirname(last) else [])
    ):
        for name in os.listdir(d) if osp.isdir(d) else []:
            m, path = _STEP_RE.match(name), osp.join(d, name)
            if m and osp.isfile(path):
                found[path] = (osp.getmtime(path), int(m[1]), 0)
    if last and osp.isfile(last):
        m = _STEP_RE.match(osp.basename(last))
        found[osp.abspath(last)] = (osp.getmtime(last), int(m[1]) if m else -1, 1)
    return sorted(found, key=lambda p: found[p], reverse=True)


# ------------------------------------------------------------------------------- saving
def save_durably(write: Callable[[str], None], final: str, intact: str | None = None) -> None:
    """``atomic_write(final, write)`` into an existing folder; a failed write raises
    :class:`CheckpointSaveError` naming ``final`` and the checkpoint that is still intact
    (``intact``)."""
    try:
        atomic_write(final, write, make_parents=False)
    except OSError as err:
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


@HOOKS.register_module()
class DurableCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments), saving durably (module docstring) and
    never saving non-finite weights. ``LBPWHTRunner`` puts it in place of ``CheckpointHook``."""

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        if is_main_process() and "://" not in str(self.out_dir):
            for name in remove_stale_temps(str(self.out_dir)):
                runner.logger.info(f"removed {name}: the temp file of an interrupted save")

    @contextlib.contextmanager
    def _durably(self, runner: Any) -> Iterator[None]:
        """Within: ``runner.save_checkpoint`` writes through a temp file and the backend's
        deletions are held back; they happen after a successful save, and a failed one
        restores the hook's idea of the best checkpoint (mmengine points it at the new file
        before writing it)."""
        if getattr(self, "_saving", False) or not is_main_process() or "://" in str(self.out_dir):
            yield
            return
        save, backend, deferred = runner.save_checkpoint, self.file_backend, []

        def durable_save(out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
            final, intact = osp.join(out_dir, filename), read_last_checkpoint(runner.work_dir)
            write = lambda tmp: save(osp.dirname(tmp), osp.basename(tmp), *args, **kwargs)  # noqa: E731
            save_durably(write, final, intact if intact != final else None)

        state = {k: copy.copy(v) for k, v in vars(self).items() if k.startswith("best_ckpt_path")}
        info = {
            k: v
            for k, v in runner.message_hub.runtime_info.items()
            if k.startswith(("best_ckpt", "best_score"))
        }
        runner.save_checkpoint, self._saving = durable_save, True
        for name in ("remove", "rmtree"):
            setattr(backend, name, lambda path, _n=name: deferred.append((_n, path)))
        try:
            yield
        except BaseException:
            vars(self).update(state)
            for key in [
                k
                for k in runner.message_hub.runtime_info
                if k.startswith(("best_ckpt", "best_score"))
            ]:
                runner.message_hub.runtime_info.pop(key)
            for key, value in info.items():
                runner.message_hub.update_info(key, value)
            raise
        finally:
            vars(runner).pop("save_checkpoint", None)
            self._saving = False
            for name in ("remove", "rmtree"):
                vars(backend).pop(name, None)  # back to the class's methods
        keep = {
            getattr(self, "best_ckpt_path", None),
            self.last_ckpt,
            *getattr(self, "best_ckpt_path_dict", {}).values(),
        }
        for name, path in deferred:
            if path not in keep:  # a new file under an old name is not deleted
                getattr(backend, name)(path)
        if self.last_ckpt is not None:  # mmengine wrote it in place; now durably
            atomic_write(osp.join(runner.work_dir, LAST_CHECKPOINT), str(self.last_ckpt))

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
        with self._durably(runner):
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner: Any, metrics: dict) -> None:
        with self._durably(runner):
            super()._save_best_checkpoint(runner, metrics)
