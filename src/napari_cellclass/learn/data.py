"""The data pipeline: decode each image once, cache it at the input size, batch on the device.

- :class:`ImageStore` holds every image of a run decoded, intensity-scaled to about [0, 1] and
  resized to the input size, as one ``(N, C, S, S)`` float16 block: in RAM up to a memory
  budget, beyond it a memory map on disk under ``<project>/cellclass_cache/`` that later runs
  reuse (an entry is redone when its file's mtime or size changes). A lock file makes
  processes sharing one cache folder take turns from reading its index to writing it back.
- :class:`Batcher` turns row indices into device tensors: on CUDA the block is uploaded once
  when it fits (else pinned host memory + non-blocking copies, prefetched in a thread).
- :class:`BatchAugment` augments whole batches with tensor ops on the training device
  (flips, 90 degree rotations, affine and random resized crop through one ``grid_sample``,
  brightness/contrast/gamma, blur, noise) and normalises per channel.
"""
from __future__ import annotations

import errno
import json
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.atomic import atomic_write_text
from ..core.errors import ChannelMismatchError, ImageReadError
from ..core.images import read_image
from .config import TrainConfig
from .events import CancelToken

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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCENTILES = (0.5, 99.8)
_MEMORY_REASON = ("not enough memory to decode and resize this image; downscale or crop it (or free memory, "
                  "e.g. close other programs)")


# ---------------------------------------------------------------------------- per-image steps
def resolve_scaling(mode: str, dtype: np.dtype) -> str:
    """``'auto'`` -> ``'dtype'`` for 8-bit/bool images, ``'percentile'`` for everything else."""
    if mode != "auto":
        return mode
    return "dtype" if np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(bool)) else "percentile"


def scale_intensity(pixels: np.ndarray, mode: str) -> np.ndarray:
    """``(C, Y, X)`` pixels -> float32 of about [0, 1].

    ``'dtype'`` divides integers by their type's maximum (floats are kept); ``'percentile'``
    maps each channel's 0.5 and 99.8 percentiles to 0 and 1 (robust to camera offset and
    hot pixels, and the same for 8-, 12- and 16-bit data).
    """
    mode = resolve_scaling(mode, pixels.dtype)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    if mode == "dtype":
        if np.issubdtype(pixels.dtype, np.integer):
            info = np.iinfo(pixels.dtype)
            return pixels.astype(np.float32) / float(info.max)
        return np.nan_to_num(pixels.astype(np.float32))
    x = np.nan_to_num(pixels.astype(np.float32))
    flat = x.reshape(x.shape[0], -1)
    step = max(1, flat.shape[1] // 65536)  # percentiles from at most ~64k pixels per channel
    lo, hi = np.percentile(flat[:, ::step], PERCENTILES, axis=1)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    return (x - lo[:, None, None]) / span[:, None, None]


def resize_image(x: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(C, Y, X)`` float32 to ``(C, size, size)`` (bilinear, antialiased when shrinking).

    The whole field of view is kept (non-square images are stretched, never cropped).
    """
    if x.shape[1] == size and x.shape[2] == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    shrink = x.shape[1] > size or x.shape[2] > size
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy()


def prepare_pixels(pixels: np.ndarray, size: int, scaling: str) -> np.ndarray:
    """Raw ``(C, Y, X)`` (or ``(Y, X)``) pixels -> scaled, resized float16 ``(C, size, size)``."""
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ImageReadError(f"array of shape {pixels.shape}: expected (C, Y, X) or (Y, X)")
    x = resize_image(scale_intensity(pixels, scaling), size)
    return np.clip(x, -60000, 60000).astype(np.float16)  # float16 range


# ---------------------------------------------------------------------------- the cache lock
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


# ---------------------------------------------------------------------------- the store
@dataclass
class _Source:
    key: str
    path: Path | None
    array: np.ndarray | None
    stamp: tuple[int, int] | None  # (mtime_ns, size) of the file


def _make_sources(items: Sequence[Any], keys: Sequence[str] | None) -> list[_Source]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            out.append(_Source(keys[i] if keys else f"array:{i}", None, item, None))
        else:
            p = Path(item)
            try:
                st = p.stat()
                stamp = (int(st.st_mtime_ns), int(st.st_size))
            except OSError:
                stamp = None
            out.append(_Source(keys[i] if keys else str(p), p, None, stamp))
    return out


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
    """

    def __init__(self, items: Sequence[Any], size: int, scaling: str = "auto", in_chans: int | None = None,
                 keys: Sequence[str] | None = None, cache_dir: Path | None = None, memory_mb: int = 2048,
                 threads: int | None = None) -> None:
        self.sources = _make_sources(items, keys)
        self.keys = [s.key for s in self.sources]
        self.size = int(size)
        self.scaling = scaling
        self.in_chans = in_chans
        self.cache_dir = cache_dir
        self.memory_mb = memory_mb
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.ok = np.zeros(len(self.sources), dtype=bool)
        self.problems: dict[str, str] = {}
        self.rows = np.arange(len(self.sources), dtype=np.int64)
        self.array: np.ndarray | None = None
        self.location = "memory"
        self.reused = 0
        self.cancelled = False
        self._tmpdir: str | None = None
        self._lock: CacheLock | None = None

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
        first = self._probe_channels()
        if first is None:  # nothing readable at all
            self.array = np.zeros((n, self.in_chans or 1, self.size, self.size), np.float16)
            yield n, n
            return
        row_bytes = self.in_chans * self.size * self.size * 2
        todo = list(range(n))
        index = None
        on_disk = n * row_bytes > self.memory_mb * 2**20
        if not on_disk:
            self.array = np.empty((n, self.in_chans, self.size, self.size), np.float16)
        elif not (yield from self._lock_disk(cancel, log)):  # cancelled while waiting
            self.cancelled = True
            return
        try:
            if on_disk:
                todo, index = self._open_disk(row_bytes)
            done = n - len(todo)
            yield done, n
            for i, result in self._decode_all(todo, cancel):
                if isinstance(result, np.ndarray):
                    self.array[self.rows[i]] = result
                    self.ok[i] = True
                    if index is not None:
                        src = self.sources[i]
                        index["entries"][src.key] = [int(self.rows[i]), *(src.stamp or (-1, -1))]
                else:
                    self.problems[self.sources[i].key] = result
                done += 1
                yield done, n
        finally:  # also after an error or a cancel: the rows decoded so far stay usable
            try:
                if index is not None:
                    self.array.flush()
                    atomic_write_text(self._index_path, json.dumps(index) + "\n", fsync=False)
            finally:
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def _decode_all(self, todo: Sequence[int], cancel: CancelToken | None) -> Iterator[tuple[int, np.ndarray | str]]:
        """``(i, row or reason)`` in order, decoded by threads a bounded window ahead.

        Stops (setting ``cancelled``) when ``cancel`` is set; after an error or a cancel the
        queued decodes are dropped and only the running ones are waited for.
        """
        window = 2 * self.threads
        pending: deque[tuple[int, Future]] = deque()
        pool = ThreadPoolExecutor(self.threads)
        try:
            nxt = 0
            while nxt < len(todo) or pending:
                if cancel is not None and cancel.is_set():
                    self.cancelled = True
                    return
                while nxt < len(todo) and len(pending) < window:
                    pending.append((todo[nxt], pool.submit(self._decode, todo[nxt])))
                    nxt += 1
                i, fut = pending.popleft()
                yield i, fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _probe_channels(self) -> int | None:
        """Find the channel count (first readable image) unless given; None (each image's reason in
        ``problems``) when no image can be read."""
        if self.in_chans is not None:
            return self.in_chans
        reasons: dict[str, str] = {}
        for i, src in enumerate(self.sources):
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
    def _reason(src: _Source, exc: Exception) -> str:
        """The message of a read error without the path (the key names the image)."""
        text = str(exc)
        return text.split(": ", 1)[-1] if src.path is not None and text.startswith(str(src.path)) else text

    @staticmethod
    def _read(src: _Source) -> np.ndarray:
        if src.array is not None:
            return src.array
        return read_image(src.path).pixels

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

    # -------------------------------------------------------------- disk cache
    @property
    def _index_path(self) -> Path:
        return self._disk_dir / "index.json"

    def _lock_disk(self, cancel: CancelToken | None,
                   log: Callable[[str], None] | None) -> Generator[tuple[int, int], None, bool]:
        """Choose the disk cache folder and lock it (a generator returning False when cancelled).

        A busy lock is waited for (polling, so ``cancel`` is heard); a file system that cannot
        lock gets a private temporary cache instead.
        """
        tag = f"v{CACHE_VERSION}-s{self.size}-c{self.in_chans}-{self.scaling}"
        usable = self.cache_dir is not None
        if usable:
            self._disk_dir = Path(self.cache_dir) / tag
            try:
                self._disk_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._say(log, f"{self._disk_dir}: cannot create the image cache ({exc.strerror or exc}); "
                               "using a private temporary cache for this run")
                usable = False
        if usable:
            lock = CacheLock(self._disk_dir / "lock")
            t0 = time.monotonic()
            warned = False
            while True:
                got = lock.try_acquire()
                if got:
                    self._lock = lock
                    return True
                if got is None:
                    self._say(log, f"{self._disk_dir}: cannot lock the image cache on this file system; "
                                   "using a private temporary cache for this run")
                    break
                if cancel is not None and cancel.is_set():
                    return False
                if not warned and time.monotonic() - t0 >= LOCK_WARN_SECONDS:
                    warned = True
                    self._say(log, f"waiting for another process (training, evaluation or prediction) to "
                                   f"finish writing the image cache {self._disk_dir}")
                    yield 0, len(self.sources)
                time.sleep(0.1)
        self._tmpdir = tempfile.mkdtemp(prefix="cellclass-cache-")
        self._disk_dir = Path(self._tmpdir) / tag
        self._disk_dir.mkdir(parents=True)
        return True

    @staticmethod
    def _say(log: Callable[[str], None] | None, message: str) -> None:
        if log is not None:
            log(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _open_disk(self, row_bytes: int) -> tuple[list[int], dict]:
        """Memory-map the locked on-disk cache; return the rows still to decode and the index.

        Rows still to decode are recorded with an impossible file stamp, so a build that is
        cancelled or fails keeps them for the next one instead of leaking them.
        """
        data_path = self._disk_dir / "images.f16"
        index: dict[str, Any] = {"version": CACHE_VERSION, "shape": [self.in_chans, self.size, self.size],
                                 "rows": 0, "entries": {}}
        try:
            old = json.loads(self._index_path.read_text(encoding="utf-8"))
            if old.get("version") == CACHE_VERSION and old.get("shape") == index["shape"] and data_path.exists():
                index = old
        except (OSError, ValueError):
            pass
        entries: dict[str, list[int]] = index["entries"]
        used = int(index["rows"])
        todo = []
        for i, src in enumerate(self.sources):
            hit = entries.get(src.key)
            if src.path is not None and hit is not None and src.stamp is not None and tuple(hit[1:]) == src.stamp:
                self.rows[i] = hit[0]
                self.ok[i] = True
                continue
            if hit is not None:
                self.rows[i] = hit[0]  # redo in place
            else:
                self.rows[i] = used
                used += 1
            entries[src.key] = [int(self.rows[i]), -1, -1]  # reserved, not decoded yet
            todo.append(i)
        self.reused = len(self.sources) - len(todo)
        index["rows"] = used
        with open(data_path, "ab") as fh:  # grow the file to hold every row
            if fh.tell() < used * row_bytes:
                fh.truncate(used * row_bytes)
        self.array = np.memmap(data_path, dtype=np.float16, mode="r+",
                               shape=(used, self.in_chans, self.size, self.size))
        self.location = "disk"
        return todo, index

    def close(self) -> None:
        """Drop the block (and a temporary cache folder)."""
        self.array = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self) -> None:
        if getattr(self, "_tmpdir", None):
            shutil.rmtree(self._tmpdir, ignore_errors=True)

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


# ---------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class Normalisation:
    """How pixels become network input: intensity scaling, then ``(x - mean) / std`` per channel."""

    scaling: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # 'imagenet' or 'dataset'

    def to_json(self) -> dict[str, Any]:
        return {"scaling": self.scaling, "mean": list(self.mean), "std": list(self.std), "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalisation:
        return cls(str(data["scaling"]), tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["std"]), str(data.get("source", "dataset")))

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return mean, std


def choose_normalisation(store: ImageStore, train_index: np.ndarray, scaling: str,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Normalisation:
    """ImageNet statistics when given (pretrained RGB stems), else the training split's own."""
    if mean is not None and std is not None and len(mean) == (store.in_chans or 0):
        return Normalisation(scaling, tuple(float(v) for v in mean), tuple(float(v) for v in std), "imagenet")
    m, s = store.channel_stats(train_index)
    return Normalisation(scaling, m, s, "dataset")


# ---------------------------------------------------------------------------- batches on the device
class Batcher:
    """Row indices -> float32 batches on ``device``.

    On CUDA the whole block is uploaded once when it takes less than ``resident_fraction`` of
    the free device memory; otherwise batches are gathered on the host into pinned memory and
    copied with ``non_blocking=True``, ``prefetch`` batches ahead in a background thread.
    """

    def __init__(self, store: ImageStore, device: torch.device, resident_fraction: float = 0.25,
                 prefetch: int = 2) -> None:
        self.store = store
        self.device = device
        self.prefetch = prefetch
        self._resident: torch.Tensor | None = None
        self._rows_dev: torch.Tensor | None = None
        if device.type == "cuda" and store.array is not None and len(store.array):
            free, _total = torch.cuda.mem_get_info(device)
            if store.array.nbytes < resident_fraction * free:
                self._resident = torch.from_numpy(np.ascontiguousarray(store.array)).to(device)
                self._rows_dev = torch.from_numpy(store.rows).to(device)

    @property
    def resident(self) -> bool:
        return self._resident is not None

    def _host(self, index: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.store.gather(index))
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).float()

    def batch(self, index: np.ndarray) -> torch.Tensor:
        """One batch (float32, ``(B, C, S, S)``) on the device."""
        if self._resident is not None:
            idx = torch.as_tensor(np.asarray(index), device=self.device)
            return self._resident.index_select(0, self._rows_dev[idx]).float()
        x = self._host(index)
        return self._to_device(x) if self.device.type != "cpu" else x.float()

    def iterate(self, batches: Sequence[np.ndarray], threads: int = 0) -> Iterator[torch.Tensor]:
        """Batches in order; with ``threads > 0`` (and not resident) host gathering runs ahead."""
        if threads <= 0 or self._resident is not None or len(batches) < 2:
            for b in batches:
                yield self.batch(b)
            return
        q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()

        def work() -> None:
            try:
                for b in batches:
                    if stop.is_set():
                        return
                    q.put(self._host(b))
            except BaseException as exc:  # hand any failure to the consumer
                q.put(exc)
            q.put(None)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(item) if self.device.type != "cpu" else item.float()
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.05)


# ---------------------------------------------------------------------------- augmentation
def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable depthwise Gaussian blur of ``(B, C, H, W)`` with reflected borders."""
    k = _gaussian_kernel(sigma, x.device)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[len(k) // 2 - r: len(k) // 2 + r + 1]
    k = k / k.sum()
    y = F.pad(x, (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_DIHEDRAL: dict[tuple[int, str], torch.Tensor] = {}


def dihedral_table(size: int, device: torch.device) -> torch.Tensor:
    """``(16, size * size)`` source pixel of each output pixel for code ``fh + 2 fv + 4 k``:
    horizontal flip, then vertical flip, then ``k`` 90 degree rotations."""
    key = (size, str(device))
    if key not in _DIHEDRAL:
        base = torch.arange(size * size).view(size, size)
        rows = []
        for k in range(4):
            for fv in (0, 1):
                for fh in (0, 1):
                    t = base.flip(-1) if fh else base
                    t = t.flip(-2) if fv else t
                    rows.append(torch.rot90(t, k, dims=(-2, -1)).flatten())
        _DIHEDRAL[key] = torch.stack(rows).to(device)
    return _DIHEDRAL[key]


def dihedral(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Flip/rotate each square image of ``x`` ``(B, C, S, S)`` by its ``code`` (exact, one gather)."""
    b, ch, s, _ = x.shape
    index = dihedral_table(s, x.device)[code]
    out = x.reshape(b, ch, s * s).gather(2, index[:, None, :].expand(b, ch, s * s))
    return out.view(b, ch, s, s)


class BatchAugment:
    """Random augmentation of whole batches on their device, then per-channel normalisation.

    Geometric transforms (flips, 90 degree rotations, affine, random resized crop) are composed
    into one matrix per image and applied with a single ``grid_sample``; when only flips and
    90 degree rotations are on, exact index operations are used instead.
    """

    def __init__(self, cfg: TrainConfig, norm: Normalisation, device: torch.device) -> None:
        self.cfg = cfg
        self.mean, self.std = norm.tensors(device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @property
    def _needs_grid(self) -> bool:
        c = self.cfg
        return bool(c.aug_affine_degrees or c.aug_affine_translate or c.aug_affine_scale or c.aug_crop_scale < 1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment and normalise ``x`` (float32 ``(B, C, S, S)``) with random numbers from ``gen``.

        Few passes over the batch: the flips and 90 degree rotations are one ``gather`` through
        a table of the dihedral pixel permutations, and contrast, brightness and normalisation
        are one fused multiply-add per image and channel (each pass over the batch costs a
        thread-pool round trip on the CPU).
        """
        c = self.cfg
        b = x.shape[0]
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=gen.device).to(dev)

        if self._needs_grid:
            x = self._geometric(x, rand)
        else:
            code = torch.zeros(b, dtype=torch.long, device=dev)
            if c.aug_flips:
                code += (rand(b) < 0.5).long()
                code += 2 * (rand(b) < 0.5).long()
            if c.aug_rot90 and x.shape[-1] == x.shape[-2]:
                code += 4 * (rand(b) * 4).long().clamp_max(3)
            if c.aug_flips or (c.aug_rot90 and x.shape[-1] == x.shape[-2]):
                x = dihedral(x, code)
        if c.aug_gamma:
            g = 1 + (rand(b) * 2 - 1) * c.aug_gamma
            x = x.clamp_min(0).pow(g.view(-1, 1, 1, 1))
        # pending per-image, per-channel affine map x * scale + shift
        scale = torch.ones((b, 1), device=dev)
        shift = torch.zeros((b, 1), device=dev)
        if c.aug_contrast:
            f = (1 + (rand(b) * 2 - 1) * c.aug_contrast).view(-1, 1)
            m = x.mean(dim=(-2, -1))
            scale, shift = f, m * (1 - f)
        if c.aug_brightness:
            shift = shift + ((rand(b) * 2 - 1) * c.aug_brightness).view(-1, 1)
        blur = bool(c.aug_blur_prob and c.aug_blur_sigma > 0)
        if blur or c.aug_noise_std:
            if c.aug_contrast or c.aug_brightness:
                x = torch.addcmul(shift[..., None, None], x, scale[..., None, None])
            if blur:
                sel = (rand(b) < c.aug_blur_prob).nonzero().flatten()
                if len(sel):
                    sigma = (float(0.1 + rand(1).item() * (c.aug_blur_sigma - 0.1)) if c.aug_blur_sigma > 0.1
                             else c.aug_blur_sigma)
                    x = x.clone()
                    x[sel] = gaussian_blur(x[sel], sigma)
            if c.aug_noise_std:
                amp = rand(b).view(-1, 1, 1, 1) * c.aug_noise_std
                noise = torch.randn(x.shape, generator=gen, device=gen.device).to(dev)
                x = x + noise * amp
            return self.normalise(x)
        mean, std = self.mean.view(1, -1), self.std.view(1, -1)
        return torch.addcmul(((shift - mean) / std)[..., None, None], x, (scale / std)[..., None, None])

    def _geometric(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        b = x.shape[0]
        dev = x.device
        eye = torch.eye(3, device=dev).repeat(b, 1, 1)
        m = eye.clone()
        if c.aug_flips:
            m[:, 0, 0] = torch.where(rand(b) < 0.5, -1.0, 1.0)
            m[:, 1, 1] = torch.where(rand(b) < 0.5, -1.0, 1.0)
        if c.aug_rot90:
            k = (rand(b) * 4).floor().clamp_max(3)
            ang = k * (math.pi / 2)
            r = eye.clone()
            cos, sin = torch.cos(ang).round(), torch.sin(ang).round()
            r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, -sin, sin, cos
            m = r @ m
        if c.aug_affine_degrees or c.aug_affine_translate or c.aug_affine_scale:
            ang = (rand(b) * 2 - 1) * math.radians(c.aug_affine_degrees)
            s = 1 + (rand(b) * 2 - 1) * c.aug_affine_scale
            a = eye.clone()
            a[:, 0, 0], a[:, 0, 1] = torch.cos(ang) / s, -torch.sin(ang) / s
            a[:, 1, 0], a[:, 1, 1] = torch.sin(ang) / s, torch.cos(ang) / s
            a[:, 0, 2] = (rand(b) * 2 - 1) * 2 * c.aug_affine_translate
            a[:, 1, 2] = (rand(b) * 2 - 1) * 2 * c.aug_affine_translate
            m = a @ m
        if c.aug_crop_scale < 1:
            area = c.aug_crop_scale + rand(b) * (1 - c.aug_crop_scale)
            logr = (rand(b) * 2 - 1) * math.log(4 / 3)
            w = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
            h = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
            crop = eye.clone()
            crop[:, 0, 0], crop[:, 1, 1] = w, h
            crop[:, 0, 2] = (rand(b) * 2 - 1) * (1 - w)
            crop[:, 1, 2] = (rand(b) * 2 - 1) * (1 - h)
            m = crop @ m
        grid = F.affine_grid(m[:, :2, :], list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
