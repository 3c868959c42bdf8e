"""Files that appear whole or not at all, the project's one date format, moving files aside.

Standard library only (the core uses it too). Every file the project writes goes through
:func:`atomic_write` (or :func:`atomic_path`, for writers that need a path): a temporary file beside the target, fsynced, renamed over it, the folder
fsynced; a reader sees the old file or the new one. The temporary name
``.<name>.<pid>.<random>.tmp<suffix>`` is hidden, carries the writer's pid (so that
:func:`remove_stale_temps` can remove a killed writer's file) and keeps the target's suffix
(``savefig`` and ``to_csv`` pick the format from it).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp(\.[^.]*)?$")


def utc_now() -> str:
    """Now in UTC, ISO 8601 to the second (``2026-12-01T13:04:52+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        _fsync(os.path.dirname(final) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is atomic all the same


@contextmanager
def atomic_path(path: str | os.PathLike, *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path (an empty file, mode 0644) in ``path``'s folder; on a clean exit
    it is fsynced and renamed to ``path``, on an exception (Ctrl-C too) removed. The folder is
    created unless ``make_parents=False`` (a work dir deleted under a running job is an error)."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        yield tmp
        _publish(str(tmp), str(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | os.PathLike,
    data: str | bytes | Callable[[str], None],
    *,
    make_parents: bool = True,
) -> Path:
    """Replace ``path`` by ``data`` (text as UTF-8, bytes, or a function writing the file at the
    path it is given) through :func:`atomic_path`; returns ``path`` as a ``Path``."""
    with atomic_path(path, make_parents=make_parents) as tmp:
        if callable(data):
            data(str(tmp))
        elif isinstance(data, str):
            tmp.write_bytes(data.encode("utf-8"))
        else:
            tmp.write_bytes(bytes(data))
    return Path(path)


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies below it (a record or a command
    line written into ``results/`` then names no machine's checkout), else as given."""
    text = os.fspath(path)
    rel = os.path.relpath(os.path.abspath(text))
    return text if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


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
    """Delete the temporary files of interrupted writes in ``directory`` (those whose process is
    gone); returns their names."""
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        m = _TMP.match(name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            Path(directory, name).unlink(missing_ok=True)
            removed.append(name)
    return removed
