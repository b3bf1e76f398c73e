"""Reading the small text files of a project (settings, split, predictions, CSVs to import), bounded.

Every such read goes through :func:`read_text_bounded`: the file is opened without blocking
(a FIFO named ``cellclass_split.csv`` cannot hang it), only a regular file is read (a device
such as ``/dev/zero`` cannot fill the memory), and only up to a size cap. UTF-8 with or without
a byte-order mark is accepted. Every refusal is one :class:`ProjectError` line naming the file
and the fix.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .atomic import file_kind
from .errors import CellclassError, ProjectError

#: the most a CSV the project reads may hold (a 100,000-image CSV is about 10 MB)
MAX_CSV_BYTES = 512 * 2 ** 20
_CHUNK = 1 << 20

#: ``(mtime_ns, ctime_ns, size, inode)`` of a file: changes whenever the file is replaced or written
FileStamp = tuple[int, int, int, int]


def stamp_of(st: os.stat_result) -> FileStamp:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def file_stamp(path: str | os.PathLike) -> FileStamp | None:
    """A cheap fingerprint of the file at ``path`` (one ``stat``); None when there is none."""
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


class NotRegularFile(ValueError):
    """The path names a FIFO, a device, a folder or a socket (its text says which)."""


class FileTooLarge(ValueError):
    """The file holds more than the caller allows (its text gives the sizes)."""


def read_regular_bounded(path: str | os.PathLike, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """The bytes (at most ``max_bytes``) and stat of the regular file ``path``, read without blocking.

    Raises :class:`NotRegularFile`, :class:`FileTooLarge` (also when the file grows while it is
    read) or the :class:`OSError` of the read (:class:`FileNotFoundError` when there is none).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise FileTooLarge(f"too large ({st.st_size} bytes, at most {max_bytes})")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # it grew while we read it
                raise FileTooLarge(f"too large (over {max_bytes} bytes)")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), st


def read_bytes_bounded(path: str | os.PathLike, max_bytes: int, what: str, *, fix: str = "check the file",
                       error: type[CellclassError] = ProjectError) -> tuple[bytes, FileStamp]:
    """The bytes of the regular file ``path`` (at most ``max_bytes``) and its stamp.

    Raises ``error`` (one line naming the file, ``what`` it is and ``fix``) for a file that is
    not regular (FIFO, device, folder, socket), larger than ``max_bytes`` or unreadable, and
    :class:`FileNotFoundError` when there is none.
    """
    path = Path(path)
    try:
        raw, st = read_regular_bounded(path, max_bytes)
    except FileNotFoundError:
        raise
    except (NotRegularFile, FileTooLarge) as exc:
        raise error(f"{path}: the {what} is {exc}; {fix}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}); {fix}") from None
    return raw, stamp_of(st)


def decode_text(raw: bytes, path: str | os.PathLike, what: str, *, fix: str = "save it as UTF-8 text",
                error: type[CellclassError] = ProjectError) -> str:
    """``raw`` decoded as UTF-8 (a byte-order mark is dropped); one-line ``error`` otherwise."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {exc.start}: {exc.reason}); {fix}") from None


def read_text_bounded(path: str | os.PathLike, max_bytes: int, what: str, *, fix: str = "save it as UTF-8 text",
                      missing_ok: bool = False, error: type[CellclassError] = ProjectError) -> str | None:
    """The text of a small UTF-8 file (byte-order mark allowed), read without blocking and bounded.

    ``what`` names the file in messages (``"CSV file"``, ``"split file"``), ``fix`` says what to
    do about it. A missing file gives None with ``missing_ok``, else a one-line "not found".
    """
    try:
        raw, _ = read_bytes_bounded(path, max_bytes, what, fix=fix, error=error)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(f"{path}: {what} not found; check the path") from None
    return decode_text(raw, path, what, fix=fix, error=error)
