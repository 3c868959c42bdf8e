"""The project's one run-record format: one JSON file per run, written atomically.

A record is a flat-ish dict (config, model, dataset, method, select, r, rank, scope, seed,
iterations, metric, value, wall_time_s, status, config_digest, ...). ``status == "complete"``
marks a finished run; sweeps skip runs whose record is complete and re-run everything else.

``config_digest`` (:func:`config_digest`) identifies what the run computed: the hash of the
effective config as ``tools/train.py`` trains it, i.e. ``Config.fromfile(config)`` with the
run's ``--cfg-options`` merged and ``randomness.seed`` set from ``--seed``. A sweep computes
the same digest for the run it is about to skip and so tells a finished run of the same
config from one made with other options (``lbp_wht.sweep``).

Reading is robust: :func:`load_record` raises :class:`RecordError` naming the file for
anything that is not a JSON object (truncated file, a list, bytes that are not UTF-8, a
directory); :func:`read_record` turns that into None and :func:`read_records` skips such files
with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "write_record",
    "load_record",
    "read_record",
    "read_records",
    "is_complete",
    "config_digest",
    "RecordError",
    "STALE_MARK",
    "DIGEST_IGNORED_KEYS",
]

#: Top-level config keys that say where or how a run executes, not what it computes: two runs
#: that differ only in these produce the same result, so they share a digest.
DIGEST_IGNORED_KEYS = frozenset(
    {"work_dir", "resume", "launcher", "env_cfg", "log_level", "visualizer", "filename"}
)


def config_digest(cfg: Mapping[str, Any]) -> str:
    """A short stable hash of an effective (fully merged) config, e.g. ``Config.to_dict()``.

    Keys in :data:`DIGEST_IGNORED_KEYS` are left out; everything else (model, data, schedule,
    ``lbp`` block, seed, ``load_from``) is serialised as canonical JSON (sorted keys, tuples as
    lists, other objects by ``repr``) and hashed with SHA-256. Records store it so that a sweep
    can tell a finished run of the *same* config from a stale one.
    """
    body = {k: v for k, v in dict(cfg).items() if k not in DIGEST_IGNORED_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (temp file in the same dir + rename).

    A reader (or a concurrent sweep) sees either the old file or the whole new one, never a
    partial write, and a kill mid-write leaves no half record behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; records are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class RecordError(ValueError):
    """A record file exists but cannot be used (not JSON, not UTF-8, not an object, ...)."""


def load_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``; None if there is no file there.

    Raises:
        RecordError: the path exists but holds no record: a directory, unreadable bytes
            (not UTF-8), truncated or invalid JSON, or JSON that is not an object (e.g. a
            list). The message names the file and what is wrong with it.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise RecordError(f"{path} is a directory, not a run record") from None
    except UnicodeDecodeError as err:
        raise RecordError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not valid JSON (truncated?): {err}") from None
    except OSError as err:
        raise RecordError(f"{path} cannot be read: {err}") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path} holds a JSON {type(rec).__name__}, not a record object")
    return rec


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``, or None if it is missing or unusable (see :func:`load_record`)."""
    try:
        return load_record(path)
    except RecordError:
        return None


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a usable record with ``status == "complete"``."""
    rec = read_record(path)
    return rec is not None and rec.get("status") == "complete"


#: Part of the name of a run directory a sweep moved aside (``<run>.stale-<UTC time>``):
#: readers skip records below such directories, they belong to no current run.
STALE_MARK = ".stale-"


def read_records(
    root: str | os.PathLike, pattern: str = "**/record.json", *, warn: bool = True
) -> list[dict[str, Any]]:
    """All usable run records under ``root`` (sorted by path), each with ``_path`` added.

    The default pattern takes only ``record.json`` files: work dirs also hold other JSON
    (test records, LHE bases, spectra, mmengine logs). Hidden files and records under run
    directories a sweep moved aside (a path part containing :data:`STALE_MARK`) are left
    out. An unusable record (see :func:`load_record`) is skipped with a warning naming it
    (``warn=False``: silently).
    """
    root = Path(root)
    out = []
    for p in sorted(root.glob(pattern)):
        if p.name.startswith(".") or any(STALE_MARK in part for part in p.relative_to(root).parts):
            continue
        try:
            rec = load_record(p)
        except RecordError as err:
            if warn:
                warnings.warn(f"skipping unusable run record: {err}", stacklevel=2)
            continue
        if rec is not None:
            rec["_path"] = str(p)
            out.append(rec)
    return out
