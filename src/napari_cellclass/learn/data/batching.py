"""Row indices to float32 batches on the training device (uploaded once, or prefetched by a thread)."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .cache import ImageStore


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
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
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

