"""Every image of a run decoded once: scaled, resized float16 rows in RAM or in the shared disk cache."""
from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import signal
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import ChannelMismatchError, ImageReadError
from ...core.images import TiffLayout, read_image
from ..events import CancelToken
from .diskcache import CACHE_DIR, DiskCache, DiskRows, Source, cache_tag, make_sources
from .pixels import prepare_pixels

_MEMORY_REASON = ("not enough memory to decode and resize this image; downscale or crop it (or free memory, "
                  "e.g. close other programs)")


def decode_threads() -> int:
    """Decoding workers: one per core this process may use, at most 16 (more than cores only compete); under
    torchrun the cores are shared by the processes of the machine (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        local = 1
    return max(1, min(16, cores // local))


def can_fork_decoders() -> bool:
    """True where decoding workers may be forked processes: Linux, and no Qt in this process.

    Preparing a row holds the GIL for about half of its time, so threads add little beyond one
    core (1.1x on 2 cores) and processes scale (1.6x). Forking copies no state the worker
    needs to rebuild (no re-import of the main script, unlike spawn) and shares the block the
    rows go into; a process running Qt's event loop (napari) is not forked: it decodes in
    threads.
    """
    if not sys.platform.startswith("linux") or "fork" not in mp.get_all_start_methods():
        return False
    return not any(name in sys.modules for name in ("PyQt5", "PyQt6", "PySide2", "PySide6"))


class ImageStore:
    """Decoded images at one input size, one ``(C, S, S)`` float16 row each.

    Build with :meth:`build` (a generator of ``(done, total)`` progress pairs) or
    :func:`load_store` (blocking). ``ok[i]`` is False for an image that could not be read
    (``problems`` maps its key to the reason) or was not decoded because the build was
    cancelled (``cancelled`` is then True).

    Parameters
    ----------
    items
        File paths or ``(C, Y, X)`` arrays.
    size
        Input size in pixels (square).
    scaling
        ``'auto'``, ``'dtype'`` or ``'percentile'`` (see :func:`scale_intensity`).
    in_chans
        Expected channel count; None = the first readable image's.
    keys
        Names for the items (project image ids); default: the paths.
    cache_dir
        Folder for the on-disk cache (``<project>/cellclass_cache``); None: a temporary one
        when the images exceed ``memory_mb``.
    memory_mb
        RAM budget for the decoded block; above it the block lives in a memory-mapped file.
    threads
        Decoding workers (default :func:`decode_threads`: one per usable core, at most 16):
        forked processes where :func:`can_fork_decoders` allows and ``processes`` is not False,
        else threads.
    processes
        False: decode in threads only.
    """

    def __init__(self, items: Sequence[Any], size: int, scaling: str = "auto", in_chans: int | None = None,
                 keys: Sequence[str] | None = None, cache_dir: Path | None = None, memory_mb: int = 2048,
                 threads: int | None = None, processes: bool | None = None) -> None:
        self.sources = make_sources(items, keys)
        self.keys = [s.key for s in self.sources]
        self.size = int(size)
        self.scaling = scaling
        self.in_chans = in_chans
        self.cache_dir = cache_dir
        self.memory_mb = memory_mb
        self.threads = threads or decode_threads()
        self.processes = processes
        self.ok = np.zeros(len(self.sources), dtype=bool)
        self.problems: dict[str, str] = {}
        self.rows = np.arange(len(self.sources), dtype=np.int64)
        self.array: np.ndarray | None = None
        self.location = "memory"
        self.reused = 0
        self.cancelled = False
        self._disk = DiskCache(cache_dir)
        self._layout: TiffLayout | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def needs_disk(self) -> bool:
        """True when the decoded block (channel count known) exceeds the RAM budget."""
        row_bytes = (self.in_chans or 1) * self.size * self.size * 2
        return len(self.sources) * row_bytes > self.memory_mb * 2**20

    # -------------------------------------------------------------- building
    def build(self, cancel: CancelToken | None = None,
              log: Callable[[str], None] | None = None) -> Iterator[tuple[int, int]]:
        """Decode what is not cached yet; yields ``(done, total)`` after each image.

        ``cancel`` is checked between images (and while waiting for the disk cache's lock): a
        cancelled build stops early with ``cancelled`` set. ``log(message)`` (default: a
        :class:`RuntimeWarning`) hears when another process has held the disk cache for long.
        The disk cache stays locked from reading its index until the index is written back.
        """
        n = len(self.sources)
        self.cancelled = False
        if n == 0:
            self.array = np.zeros((0, self.in_chans or 1, self.size, self.size), np.float16)
            return
        if self._probe_channels() is None:  # nothing readable at all
            self.array = np.zeros((n, self.in_chans or 1, self.size, self.size), np.float16)
            yield n, n
            return
        on_disk = self.needs_disk()
        if not on_disk:  # shared: forked decoders write into it
            self.array = _shared_block((n, self.in_chans, self.size, self.size))
        elif not (yield from self._disk.acquire(cache_tag(self.size, self.in_chans, self.scaling), cancel, log, n)):
            self.cancelled = True  # while waiting for the lock
            return
        disk: DiskRows | None = None
        try:
            todo = list(range(n))
            if on_disk:
                disk = self._open_disk()
                todo = disk.todo
            self._learn_layout(todo)
            yield from self._fill(todo, disk, cancel)
        finally:  # also after an error or a cancel: the rows decoded so far stay usable
            self._disk.finish(disk)

    def _open_disk(self) -> DiskRows:
        """Map the locked disk cache's rows; the items whose row is still valid are done."""
        disk = self._disk.open(self.sources, (self.in_chans, self.size, self.size))
        self.array = disk.array
        self.rows[:] = disk.rows
        self.ok |= disk.cached
        self.reused = int(disk.cached.sum())
        self.location = "disk"
        return disk

    def _fill(self, todo: Sequence[int], disk: DiskRows | None, cancel: CancelToken | None
              ) -> Iterator[tuple[int, int]]:
        """Decode the items ``todo`` into their rows; yields ``(done, total)`` (first before any decode)."""
        n = len(self.sources)
        done = n - len(todo)
        yield done, n
        for i, reason in self._decode_all(todo, cancel):
            if reason is None:
                self.ok[i] = True
                if disk is not None:
                    disk.record(self.sources[i], int(self.rows[i]))
            else:
                self.problems[self.sources[i].key] = reason
            done += 1
            yield done, n

    def _decode_all(self, todo: Sequence[int], cancel: CancelToken | None) -> Iterator[tuple[int, str | None]]:
        """``(i, None)`` once row ``i`` is written, or ``(i, reason)``, in order.

        Workers (processes or threads, see :class:`ImageStore`) take tasks of a few images a
        bounded window ahead. Stops (setting ``cancelled``) when ``cancel`` is set; after an
        error or a cancel the queued tasks are dropped and only the running ones are waited for.
        A process pool that breaks (a worker killed, e.g. out of memory) hands the rest to threads.
        """
        per_task = max(1, min(32, len(todo) // (8 * self.threads)))
        tasks = [list(todo[k:k + per_task]) for k in range(0, len(todo), per_task)]
        pool = self._workers(len(todo))
        forked = isinstance(pool, ProcessPoolExecutor)
        pending: deque[tuple[list[int], Future]] = deque()
        window = 4 * self.threads
        try:
            nxt = 0
            while nxt < len(tasks) or pending:
                if cancel is not None and cancel.is_set():
                    self.cancelled = True
                    return
                while nxt < len(tasks) and len(pending) < window:
                    pending.append((tasks[nxt], pool.submit(_decode_rows, self if not forked else None, tasks[nxt])))
                    nxt += 1
                items, fut = pending.popleft()
                try:
                    reasons = fut.result()
                except BrokenProcessPool:
                    pool.shutdown(wait=True, cancel_futures=True)
                    rest = [i for t, _ in ((items, fut), *pending) for i in t] + [i for t in tasks[nxt:] for i in t]
                    self.processes = False
                    yield from self._decode_all(rest, cancel)
                    return
                yield from zip(items, reasons, strict=True)
        except BaseException:
            if forked:  # Ctrl+C may land inside the executor's own bookkeeping (it then waited forever at exit)
                _kill_workers(pool)
            raise
        finally:
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except BaseException:  # a second Ctrl+C while the workers are told to stop
                if forked:
                    _kill_workers(pool)
                raise

    def _workers(self, n: int) -> Executor:
        """Forked processes for ``n`` images where they can be had (see :class:`ImageStore`), else threads."""
        if self.processes is not False and self.threads > 1 and n >= 4 * self.threads and can_fork_decoders():
            try:
                return _fork_pool(self)
            except (OSError, BrokenProcessPool):  # no process to be had (memory, process limits)
                self.processes = False
        return ThreadPoolExecutor(self.threads)

    def _probe_channels(self) -> int | None:
        """Find the channel count (first readable image) unless given; None (each image's reason in
        ``problems``) when no image can be read."""
        if self.in_chans is not None:
            return self.in_chans
        reasons: dict[str, str] = {}
        for src in self.sources:
            try:
                pix = self._read(src)
            except ImageReadError as exc:
                reasons[src.key] = self._reason(src, exc)
                continue
            except MemoryError:
                reasons[src.key] = _MEMORY_REASON
                continue
            self.in_chans = int(pix.shape[0]) if pix.ndim == 3 else 1
            return self.in_chans
        self.problems.update(reasons)
        return None

    @staticmethod
    def _reason(src: Source, exc: Exception) -> str:
        """The message of a read error without the path (the key names the image)."""
        text = str(exc)
        return text.split(": ", 1)[-1] if src.path is not None and text.startswith(str(src.path)) else text

    def _read(self, src: Source) -> np.ndarray:
        if src.array is not None:
            return src.array
        if self._layout is not None:
            return self._layout.read(src.path)
        return read_image(src.path).pixels

    def _learn_layout(self, todo: Sequence[int]) -> None:
        """Decode TIFFs saved like the first one to decode in C (:class:`TiffLayout`)."""
        first = next((self.sources[i].path for i in todo if self.sources[i].path is not None), None)
        self._layout = TiffLayout.learn(first) if first is not None and len(todo) > 1 else None

    def _decode(self, i: int) -> np.ndarray | str:
        """The prepared row, or the reason the image could not be used."""
        src = self.sources[i]
        try:
            pix = self._read(src)
        except ImageReadError as exc:
            return self._reason(src, exc)
        except MemoryError:
            return _MEMORY_REASON
        chans = int(pix.shape[0]) if pix.ndim == 3 else 1
        if chans != self.in_chans:
            name = src.path if src.path is not None else src.key
            raise ChannelMismatchError(
                f"{name}: has {chans} channel(s) but the model takes {self.in_chans}; "
                "convert the image or remove it from the project")
        try:
            return prepare_pixels(pix, self.size, self.scaling)
        except (ValueError, ImageReadError) as exc:
            return f"cannot prepare the pixels ({exc})"
        except MemoryError:
            shape = " x ".join(str(n) for n in np.shape(pix))
            return f"{_MEMORY_REASON} ({shape} pixels)"

    def close(self) -> None:
        """Drop the block (and a temporary cache folder)."""
        self.array = None
        self._disk.close()

    # -------------------------------------------------------------- access
    def gather(self, index: np.ndarray) -> np.ndarray:
        """Rows for item positions ``index`` as one ``(B, C, S, S)`` float16 array."""
        rows = self.rows[np.asarray(index, dtype=np.int64)]
        if self.location == "disk":  # sorted reads are faster on a memory map
            order = np.argsort(rows, kind="stable")
            out = np.empty((len(rows), *self.array.shape[1:]), np.float16)
            out[order] = self.array[rows[order]]
            return out
        return self.array[rows]

    def channel_stats(self, index: np.ndarray, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation over items ``index`` (float64 sums)."""
        index = np.asarray(index, dtype=np.int64)
        c = self.in_chans or 1
        s1 = np.zeros(c)
        s2 = np.zeros(c)
        count = 0
        for k in range(0, len(index), chunk):
            block = self.gather(index[k:k + chunk]).astype(np.float64)
            s1 += block.sum(axis=(0, 2, 3))
            s2 += (block ** 2).sum(axis=(0, 2, 3))
            count += block.shape[0] * block.shape[2] * block.shape[3]
        if count == 0:
            return tuple([0.0] * c), tuple([1.0] * c)
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0))
        std = np.where(std > 1e-6, std, 1.0)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


_FORKED: ImageStore | None = None  # the store a forked decoding process works for


def _decode_rows(store: ImageStore | None, items: list[int]) -> list[str | None]:
    """Decode ``items`` into their rows of the store (in a forked process: the one it was forked for);
    None for each row written, else the reason."""
    store = store if store is not None else _FORKED
    out: list[str | None] = []
    for i in items:
        result = store._decode(i)
        if isinstance(result, np.ndarray):
            store.array[store.rows[i]] = result
            out.append(None)
        else:
            out.append(result)
    return out


def _forked_worker(store: ImageStore) -> None:
    """Initialise a forked decoding process: its store, one torch thread, Ctrl-C left to the parent."""
    global _FORKED
    _FORKED = store
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive a fork


def _fork_pool(store: ImageStore) -> ProcessPoolExecutor:
    """``store.threads`` processes forked now (before the first task), sharing ``store.array``."""
    pool = ProcessPoolExecutor(store.threads, mp_context=mp.get_context("fork"), initializer=_forked_worker,
                               initargs=(store,))
    with warnings.catch_warnings():  # Python 3.12+: the workers touch no lock another thread may hold
        warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                                category=DeprecationWarning)
        pool.submit(int).result()  # forks every worker now, from this thread
    return pool


def _kill_workers(pool: Executor) -> None:
    """Stop a process pool's workers at once (they hold nothing to save: the rows go to a block the parent owns)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # ProcessPoolExecutor's own table
        with contextlib.suppress(Exception):
            proc.kill()


def _shared_block(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float16 array in anonymous shared memory (seen by processes forked later)."""
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(1, count * 2))
    return np.frombuffer(buf, np.float16, count=count).reshape(shape)


def cache_dir_for(root: str | os.PathLike | None) -> Path | None:
    """``<project>/cellclass_cache`` (None without a project)."""
    return Path(root) / CACHE_DIR if root is not None else None


def load_store(items: Sequence[Any], size: int, scaling: str = "auto", in_chans: int | None = None,
               keys: Sequence[str] | None = None, cache_dir: Path | None = None, memory_mb: int = 2048,
               progress: Callable[[int, int], None] | None = None) -> ImageStore:
    """Build an :class:`ImageStore` (blocking), calling ``progress(done, total)``."""
    store = ImageStore(items, size, scaling, in_chans, keys, cache_dir, memory_mb)
    for done, total in store.build():
        if progress is not None:
            progress(done, total)
    return store
