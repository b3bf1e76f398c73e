"""Atomic file writes: a reader (or a crash) only ever sees the old or the new file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import ProjectError

TMP_PREFIX = ".cellclass-tmp-"


def _write_error(path: Path, exc: OSError) -> ProjectError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError) or exc.errno in (13, 30):  # EACCES, EROFS
        fix = "make the folder writable or copy the project to a writable location"
    elif exc.errno == 28:  # ENOSPC
        fix = "free some disk space"
    else:
        fix = "check the folder and try again"
    return ProjectError(f"cannot write {path}: {reason}; {fix}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    On any error the temporary file is removed and ``path`` is untouched. OS errors are
    turned into a one-line :class:`ProjectError` naming the file and the fix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_writer(path, "w", fsync=fsync) as fh:
        fh.write(text)


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO], None], fsync: bool = True) -> None:
    """Call ``write(fh)`` on a binary temp file that then replaces ``path`` atomically."""
    with atomic_writer(path, "wb", fsync=fsync) as fh:
        write(fh)
