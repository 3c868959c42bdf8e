"""The project's one run-record format: one JSON file per run, written atomically.

A record is a flat-ish dict (config, model, dataset, method, select, r, rank, scope, seed,
iterations, metric, value, wall_time_s, status, ...). ``status == "complete"`` marks a finished
run; sweeps skip runs whose record is complete and re-run everything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["write_record", "read_record", "read_records", "is_complete", "config_digest"]

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


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(path: str | os.PathLike) -> bool:
    rec = read_record(path)
    return rec is not None and rec.get("status") == "complete"


def read_records(root: str | os.PathLike, pattern: str = "**/record.json") -> list[dict[str, Any]]:
    """All readable run records under ``root`` (sorted by path), each with ``_path`` added.

    The default pattern takes only ``record.json`` files: work dirs also hold other JSON
    (test records, LHE bases, spectra, mmengine logs).
    """
    out = []
    for p in sorted(Path(root).glob(pattern)):
        if p.name.startswith("."):
            continue
        rec = read_record(p)
        if isinstance(rec, dict):
            rec["_path"] = str(p)
            out.append(rec)
    return out
