"""Images decoded one chunk at a time: the next chunk's ImageStore builds in a thread while the current one is used."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..events import CancelToken
from .cache import ImageStore

#: Decoded bytes of one chunk by default (two chunks are in memory at a time).
CHUNK_MB = 512
#: Most images in one chunk by default.
MAX_CHUNK = 4096


def chunk_rows(size: int, in_chans: int, memory_mb: int = CHUNK_MB, most: int = MAX_CHUNK) -> int:
    """Images per chunk: as many float16 ``(in_chans, size, size)`` rows as fit in ``memory_mb``, at most ``most``."""
    row = max(1, in_chans) * size * size * 2
    return int(max(1, min(most, memory_mb * 2**20 // row)))


@dataclass(frozen=True)
class Chunk:
    """One built chunk: ``positions`` of its items, their ``store`` and when its decoding ``started``
    (seconds since the epoch)."""

    positions: np.ndarray
    store: ImageStore
    started: float


class _Stop:
    """Set by the stream (an error, an early exit) or by the caller's token."""

    def __init__(self, cancel: CancelToken | None) -> None:
        self._event = threading.Event()
        self._cancel = cancel

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set() or (self._cancel is not None and self._cancel.is_set())


class StoreStream:
    """Built :class:`ImageStore` objects over consecutive chunks of ``items``.

    Iterating yields one :class:`Chunk` per chunk in order: its ``positions`` index ``items``
    and its store's rows follow them. While the caller uses one chunk the next decodes in a
    background thread (with the store's own decoding workers), so at most two chunks are in
    memory; a store is closed when the caller moves on (or stops). ``decoded`` counts the images
    decoded so far (for progress).

    Parameters
    ----------
    items, keys
        File paths or arrays, and their names.
    chunks
        Positions of each chunk's items.
    size, scaling, in_chans, cache_dir, threads
        As for :class:`ImageStore`.
    cancel
        Stops decoding; the stream then ends after the current chunk.
    """

    def __init__(self, items: Sequence[Any], keys: Sequence[str], chunks: Sequence[np.ndarray], size: int,
                 scaling: str, in_chans: int | None, *, cache_dir: Path | None = None, threads: int | None = None,
                 cancel: CancelToken | None = None) -> None:
        self.items, self.keys, self.chunks = items, keys, list(chunks)
        self.size, self.scaling, self.in_chans = size, scaling, in_chans
        self.cache_dir, self.threads = cache_dir, threads
        self.decoded = 0
        self._stop = _Stop(cancel)
        biggest = max((len(c) for c in self.chunks), default=0)
        row = max(1, in_chans or 1) * size * size * 2
        self._memory_mb = int(biggest * row / 2**20) + 64  # one chunk always stays in RAM

    def _build(self, positions: np.ndarray) -> Chunk:
        started = time.time()
        store = ImageStore([self.items[i] for i in positions], self.size, self.scaling, self.in_chans,
                           keys=[self.keys[i] for i in positions], cache_dir=self.cache_dir,
                           memory_mb=self._memory_mb, threads=self.threads)
        try:
            last = 0
            for done, _ in store.build(cancel=self._stop):  # type: ignore[arg-type]
                self.decoded += done - last
                last = done
        except BaseException:
            store.close()
            raise
        return Chunk(positions, store, started)

    def wait(self, future: Future, poll: float = 0.2, tick: Any = None) -> Chunk:
        """The chunk ``future`` builds; ``tick()`` every ``poll`` seconds while waiting."""
        while True:
            try:
                return future.result(timeout=poll)
            except FutureTimeout:
                if tick is not None:
                    tick()

    def __iter__(self) -> Iterator[Chunk]:
        return self.iterate()

    def iterate(self, tick: Any = None) -> Iterator[Chunk]:
        """The chunks in order (see the class); ``tick()`` is called while waiting for a decode."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="cellclass-chunk")
        nxt: Future | None = pool.submit(self._build, self.chunks[0]) if self.chunks else None
        try:
            for k in range(len(self.chunks)):
                assert nxt is not None
                chunk = self.wait(nxt, tick=tick)
                nxt = None
                try:
                    if k + 1 < len(self.chunks) and not self._stop.is_set():
                        nxt = pool.submit(self._build, self.chunks[k + 1])
                    yield chunk
                finally:
                    chunk.store.close()
                if self._stop.is_set():
                    return
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            if nxt is not None and nxt.done() and not nxt.cancelled() and nxt.exception() is None:
                nxt.result().store.close()
