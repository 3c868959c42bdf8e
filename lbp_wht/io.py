"""Files that appear whole or not at all.

:func:`atomic_path` hands out a temporary path next to the target; whatever the caller writes
there (pandas, matplotlib, ``open``) becomes the target only when the block ends without an
exception: the temporary file is flushed to disk and renamed over the target (``os.replace``,
atomic on POSIX within one folder). A kill or an exception mid-write leaves the old target as it
was and, where the process could clean up, no temporary file. :func:`atomic_write` writes bytes
or text that way.

Temporary names are ``.<name>.<random>.tmp<suffix>``: hidden, in the target's folder (same file
system), and ending in the target's own suffix so that writers that pick the format from it
(``savefig``, ``to_csv``) still do.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if missing); on a clean exit it is
    fsynced and renamed to ``path``, on an exception it is removed and the exception re-raised.

    The file is created empty (mode 0644) before the caller writes it, so a writer that only
    opens existing files works too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (``str`` as UTF-8, newlines as given) to ``path`` through
    :func:`atomic_path`; returns the path."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return Path(path)
