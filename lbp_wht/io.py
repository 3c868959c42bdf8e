"""Durable file writes, the project's one date format and moving files aside.

Standard library only, so that every module (the core included) can use it. Every file the run
lifecycle writes (records, checkpoints, ``last_checkpoint``, job lists) goes through
:func:`atomic_write`: the content goes to ``.<name>.<pid>.tmp`` in the same directory, is
fsynced and renamed into place, and the directory is fsynced. A reader sees the old file or the
whole new one; a kill leaves at most a temp file (:func:`remove_stale_temps` removes those).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "move_aside", "remove_stale_temps", "temp_path", "utc_now"]

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def utc_now() -> str:
    """Now in UTC, ISO 8601 to the second (``2026-12-01T13:04:52+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def temp_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_write` writes ``path`` before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, final: str) -> None:
    """fsync ``tmp``, rename it onto ``final`` (atomic on one filesystem), fsync the directory."""
    _fsync(tmp)
    os.replace(tmp, final)
    try:
        _fsync(os.path.dirname(final) or ".")
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is atomic all the same


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], None]) -> Path:
    """Replace ``path`` by ``data`` (text, bytes, or a function writing the file at the path
    it is given) atomically and durably. On any error, Ctrl-C included, the temp file is
    removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(str(tmp))
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        _publish(str(tmp), str(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def move_aside(path: str | os.PathLike, tag: str) -> Path:
    """Rename ``path`` to ``<path><tag>`` (``<path><tag>.1``, ``.2`` ... if taken); never
    deletes or overwrites anything. Returns the new path."""
    path = Path(path)
    target, n = Path(f"{path}{tag}"), 0
    while target.exists():
        n += 1
        target = Path(f"{path}{tag}.{n}")
    os.rename(path, target)
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Delete the temp files of interrupted writes in ``directory`` (those of dead processes)."""
    removed = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        m = _TMP.match(name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            Path(directory, name).unlink(missing_ok=True)
            removed.append(name)
    return removed
