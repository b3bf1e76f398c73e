"""Atomic file writes: a reader (or a crash) only ever sees the old or the new file.

A write goes to a temporary file beside the target, is flushed (and fsynced) and then
replaces the target with ``os.replace``. A symlink is written through (the link stays and its
target gets the new content); a path that is a FIFO, a device node, a folder or any other
non-regular file is refused. New files get the usual ``0666 & ~umask`` mode; a replaced file
keeps its mode (and, where allowed, its owner and group).
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import ProjectError

TMP_PREFIX = ".cellclass-tmp-"
LOCK_TIMEOUT_S = 30.0


def _write_error(path: Path, exc: OSError) -> ProjectError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable or copy the project to a writable location"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space"
    else:
        fix = "check the folder and try again"
    return ProjectError(f"cannot write {path}: {reason}; {fix}")


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``'a FIFO'``, ``'a folder'``)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def resolve_target(path: str | os.PathLike) -> tuple[Path, os.stat_result | None]:
    """The real file a write to ``path`` must replace (symlinks followed) and its stat (None if new).

    Raises :class:`ProjectError` when the path is not a regular file (FIFO, device, folder, ...)
    or is a broken chain of links.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(path if path.is_symlink() else target)  # /dev/stdout -> a pipe with no real path
    except FileNotFoundError:
        return target, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ProjectError(f"{path}: the link points to itself (a loop); give a real file") from None
        raise _write_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise ProjectError(f"{path}: not a regular file ({file_kind(st.st_mode)}); "
                           "give the path of a regular file to write")
    return target, st


def _open_temp(folder: Path) -> tuple[int, Path]:
    """Create a new temporary file in ``folder`` with mode ``0666 & ~umask``."""
    for _ in range(100):
        tmp = folder / f"{TMP_PREFIX}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def _copy_ownership(fd: int, st: os.stat_result) -> None:
    """Give the temp file the old file's mode and, where allowed, its owner and group."""
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    if hasattr(os, "fchown"):
        for uid in (st.st_uid, -1):
            try:
                os.fchown(fd, uid, st.st_gid)
                break
            except OSError:
                continue


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    On any error the temporary file is removed and ``path`` is untouched. OS errors are
    turned into a one-line :class:`ProjectError` naming the file and the fix.
    """
    path = Path(path)
    target, old = resolve_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(target.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        if old is not None:
            _copy_ownership(fd, old)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        resolve_target(path)  # it may have become something else meanwhile
        os.replace(tmp, target)
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


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created when missing).

    Yields True when the lock is held, False when locking is not available here (no
    ``fcntl``, a read-only folder, a file system without locks): then the caller goes on
    unlocked. Raises :class:`ProjectError` when another program holds it for ``timeout`` s.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout
        held = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ProjectError(f"{path}: another program has held this lock for {timeout:.0f} s; "
                                       "close the other napari-cellclass session and try again") from None
                time.sleep(0.01)
            except OSError:  # e.g. ENOLCK on a network file system
                break
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
