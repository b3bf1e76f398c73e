"""The shared on-disk image cache: one folder per input size and channels, with its lock, index and rows.

``<project>/cellclass_cache/v1-s<size>-c<channels>-<scaling>/`` holds ``images.f16`` (every
decoded row, memory-mapped), ``index.json`` (image key -> row and the file's mtime and size, so
a changed file is decoded again) and ``lock``: processes sharing the folder take turns from
reading the index to writing it back. A folder that cannot be created or locked is replaced by
a private temporary one for the run.
"""
from __future__ import annotations

import errno
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.atomic import atomic_write_text
from ..events import CancelToken

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

CACHE_DIR = "cellclass_cache"
CACHE_VERSION = 1
LOCK_WARN_SECONDS = 10.0  # say why a build waits once another process held the cache this long


def cache_tag(size: int, in_chans: int, scaling: str) -> str:
    """The name of the cache folder for rows of one size, channel count and scaling."""
    return f"v{CACHE_VERSION}-s{size}-c{in_chans}-{scaling}"


class CacheLock:
    """An exclusive lock on a file shared by processes (``fcntl.flock``; ``msvcrt.locking`` on Windows).

    Threads of one process also exclude each other (each lock opens the file itself).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: Any = None

    def try_acquire(self) -> bool | None:
        """True: locked; False: held by someone else; None: this file system cannot lock."""
        if fcntl is None and msvcrt is None:
            return None
        try:
            fh = open(self.path, "a+b")  # noqa: SIM115 - kept open while locked
        except OSError:  # a read-only cache folder: no shared cache
            return None
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):
                return False
            return None
        self._fh = fh
        return True

    def release(self) -> None:
        """Unlock (closing the file releases the lock too)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            else:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        finally:
            fh.close()


@dataclass
class Source:
    """One item of a store: a file (with the stamp that invalidates its cached row) or an array."""

    key: str
    path: Path | None
    array: np.ndarray | None
    stamp: tuple[int, int] | None  # (mtime_ns, size) of the file


def make_sources(items: Sequence[Any], keys: Sequence[str] | None) -> list[Source]:
    """A :class:`Source` per file path or ``(C, Y, X)`` array, named by ``keys`` (default: the paths)."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            out.append(Source(keys[i] if keys else f"array:{i}", None, item, None))
        else:
            p = Path(item)
            try:
                st = p.stat()
                stamp = (int(st.st_mtime_ns), int(st.st_size))
            except OSError:
                stamp = None
            out.append(Source(keys[i] if keys else str(p), p, None, stamp))
    return out


@dataclass(frozen=True)
class DiskRows:
    """The memory-mapped rows of a locked cache folder, and which items still need decoding."""

    array: np.memmap
    rows: np.ndarray            # (N,) row of each item
    cached: np.ndarray          # (N,) True where the row holds the item's current content
    todo: list[int]             # items to decode (their rows are reserved)
    index: dict[str, Any]       # what index.json will hold

    def record(self, source: Source, row: int) -> None:
        """Note that ``row`` now holds ``source`` as it is on disk."""
        self.index["entries"][source.key] = [int(row), *(source.stamp or (-1, -1))]


class DiskCache:
    """The cache folder of one :class:`~.cache.ImageStore` build: lock, open, record, write back.

    Parameters
    ----------
    cache_dir
        ``<project>/cellclass_cache``; None: a private temporary folder (removed by :meth:`close`).
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir
        self.folder: Path | None = None
        self._lock: CacheLock | None = None
        self._tmpdir: str | None = None

    @property
    def index_path(self) -> Path:
        """``index.json`` of the locked folder."""
        assert self.folder is not None, "acquire() first"
        return self.folder / "index.json"

    def acquire(self, tag: str, cancel: CancelToken | None, log: Callable[[str], None] | None,
                total: int) -> Generator[tuple[int, int], None, bool]:
        """Choose the folder ``tag`` and lock it (a generator returning False when cancelled).

        A busy lock is waited for (polling, so ``cancel`` is heard; after a while ``log`` hears
        why and a ``(0, total)`` progress pair is yielded); a file system that cannot lock gets a
        private temporary cache instead.
        """
        usable = self.cache_dir is not None
        if usable:
            self.folder = Path(self.cache_dir) / tag
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._say(log, f"{self.folder}: cannot create the image cache ({exc.strerror or exc}); "
                               "using a private temporary cache for this run")
                usable = False
        if usable:
            lock = CacheLock(self.folder / "lock")
            t0 = time.monotonic()
            warned = False
            while True:
                got = lock.try_acquire()
                if got:
                    self._lock = lock
                    return True
                if got is None:
                    self._say(log, f"{self.folder}: cannot lock the image cache on this file system; "
                                   "using a private temporary cache for this run")
                    break
                if cancel is not None and cancel.is_set():
                    return False
                if not warned and time.monotonic() - t0 >= LOCK_WARN_SECONDS:
                    warned = True
                    self._say(log, f"waiting for another process (training, evaluation or prediction) to "
                                   f"finish writing the image cache {self.folder}")
                    yield 0, total
                time.sleep(0.1)
        self._tmpdir = tempfile.mkdtemp(prefix="cellclass-cache-")
        self.folder = Path(self._tmpdir) / tag
        self.folder.mkdir(parents=True)
        return True

    @staticmethod
    def _say(log: Callable[[str], None] | None, message: str) -> None:
        if log is not None:
            log(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def open(self, sources: Sequence[Source], shape: tuple[int, int, int]) -> DiskRows:
        """Memory-map the locked folder's rows; find each item's row and whether it is still valid.

        Rows still to decode are recorded with an impossible file stamp, so a build that is
        cancelled or fails keeps them for the next one instead of leaking them.
        """
        data_path = self.folder / "images.f16"
        index: dict[str, Any] = {"version": CACHE_VERSION, "shape": list(shape), "rows": 0, "entries": {}}
        try:
            old = json.loads(self.index_path.read_text(encoding="utf-8"))
            if old.get("version") == CACHE_VERSION and old.get("shape") == index["shape"] and data_path.exists():
                index = old
        except (OSError, ValueError):
            pass
        entries: dict[str, list[int]] = index["entries"]
        used = int(index["rows"])
        rows = np.zeros(len(sources), dtype=np.int64)
        cached = np.zeros(len(sources), dtype=bool)
        todo = []
        for i, src in enumerate(sources):
            hit = entries.get(src.key)
            if src.path is not None and hit is not None and src.stamp is not None and tuple(hit[1:]) == src.stamp:
                rows[i], cached[i] = hit[0], True
                continue
            if hit is not None:
                rows[i] = hit[0]  # redo in place
            else:
                rows[i] = used
                used += 1
            entries[src.key] = [int(rows[i]), -1, -1]  # reserved, not decoded yet
            todo.append(i)
        index["rows"] = used
        row_bytes = int(np.prod(shape)) * 2
        with open(data_path, "ab") as fh:  # grow the file to hold every row
            if fh.tell() < used * row_bytes:
                fh.truncate(used * row_bytes)
        array = np.memmap(data_path, dtype=np.float16, mode="r+", shape=(used, *shape))
        return DiskRows(array, rows, cached, todo, index)

    def finish(self, rows: DiskRows | None) -> None:
        """Flush the rows and write the index back (when :meth:`open` ran), then unlock."""
        try:
            if rows is not None:
                rows.array.flush()
                atomic_write_text(self.index_path, json.dumps(rows.index) + "\n", fsync=False)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def close(self) -> None:
        """Remove a temporary cache folder."""
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self) -> None:
        if getattr(self, "_tmpdir", None):
            shutil.rmtree(self._tmpdir, ignore_errors=True)
