"""The one run-record format (``record.json``, one JSON object per run; docs/RUNNING.md).

``status == "complete"`` marks a finished run; ``config_digest`` tells a sweep which config made
it. Writes are atomic and refuse non-numeric or non-finite metrics; reads name the file (:class:`RecordError`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import os
import platform
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write, utc_now

#: Top-level config keys that say where or how a run executes, not what it computes.
DIGEST_IGNORED_KEYS = frozenset(
    {"work_dir", "resume", "launcher", "env_cfg", "log_level", "visualizer", "filename"}
)
#: ``lbp`` keys that only steer loading or recording, not what a run trains: a resume may change
#: them, and two records that differ only in them describe the same experiment.
LOADING_LBP_KEYS = frozenset(
    "allow_random_init strict_load reinit_keys drop_keys spectrum_layer spectrum_iters".split()
)
#: Part of the name of a run directory a sweep moved aside (``<run>.stale-<UTC time>``).
STALE_MARK = ".stale-"


class RecordError(ValueError):
    """A record that cannot be used or written (not JSON, not an object, a bad metric); the
    message names the file or the metric."""


def config_digest(cfg: Mapping[str, Any]) -> str:
    """Short SHA-256 of an effective config (canonical JSON, :data:`DIGEST_IGNORED_KEYS` out)."""
    body = {k: v for k, v in dict(cfg).items() if k not in DIGEST_IGNORED_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_metrics(record: Mapping[str, Any], where: str = "record") -> None:
    """Refuse a record whose ``value`` is not None or a finite number, or whose ``metrics``
    hold anything but finite numbers (or lists of them, e.g. per-class values)."""
    value = record.get("value")
    if value is not None and not _finite(value):
        raise RecordError(f"{where}: metric value {value!r} is not a finite number")
    metrics = record.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise RecordError(f"{where}: metrics must be a mapping, got {type(metrics).__name__}")
    for name, v in metrics.items():
        if not (_finite(v) or (isinstance(v, (list, tuple)) and all(map(_finite, v)))):
            raise RecordError(f"{where}: metric {name!r} = {v!r} is not a finite number")


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``path`` atomically, after :func:`check_metrics`."""
    check_metrics(record, str(path))
    try:
        text = json.dumps(dict(record), indent=2, sort_keys=True, default=str, allow_nan=False)
    except ValueError as err:  # a NaN / Inf outside the metrics
        raise RecordError(f"{path}: {err}") from None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, text + "\n")


def load_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``; None if there is no file. Raises :class:`RecordError` naming the
    file for a directory, bytes that are not UTF-8, invalid JSON or JSON that is no object."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        raise RecordError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not valid JSON (truncated?): {err}") from None
    except OSError as err:
        raise RecordError(f"{path} cannot be read ({err.strerror}): not a run record") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path} holds a JSON {type(rec).__name__}, not a record object")
    return rec


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``, or None if it is missing or unusable."""
    try:
        return load_record(path)
    except RecordError:
        return None


def read_records(
    root: str | os.PathLike, pattern: str = "**/record.json", *, warn: bool = True
) -> list[dict[str, Any]]:
    """Usable records under ``root`` (sorted by path, ``_path`` added); hidden files and
    directories moved aside (:data:`STALE_MARK`) are left out, unusable files warned about."""
    root, out = Path(root), []
    for p in sorted(root.glob(pattern)):
        if p.name.startswith(".") or any(STALE_MARK in s for s in p.relative_to(root).parts):
            continue
        try:
            rec = load_record(p)
        except RecordError as err:
            if warn:
                warnings.warn(f"skipping unusable run record: {err}", stacklevel=2)
            continue
        if rec is not None:
            out.append({**rec, "_path": str(p)})
    return out


def _git(cwd: str | None, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def _machine(cwd: str | None) -> dict[str, Any]:
    from mmengine.utils.dl_utils import collect_env

    env = collect_env()
    gpus = [f"{len(k.split()[1].split(','))}x {v}" for k, v in env.items() if k.startswith("GPU ")]
    commit = _git(cwd, "rev-parse", "HEAD")
    dirty = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return dict(
        git_commit=commit,
        git_dirty=None if commit is None or dirty is None else bool(dirty),
        machine=", ".join([platform.node(), platform.machine(), *(gpus or ["cpu only"])]),
        torch=env.get("PyTorch"),
    )


def provenance(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where and when: ``timestamp`` (:func:`lbp_wht.io.utc_now`), ``git_commit`` and
    ``git_dirty`` of the repository at ``cwd``, ``machine`` and ``torch`` (from mmengine's
    ``collect_env``). The one provenance helper of the project."""
    return {"timestamp": utc_now(), **_machine(None if cwd is None else str(cwd))}
