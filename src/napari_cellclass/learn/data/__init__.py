"""The data pipeline, split like timm's ``timm/data``: decode once into a cache, batch on the device, augment.

- :mod:`.pixels`: raw pixels to a row (intensity scaling to about [0, 1], resizing);
- :mod:`.normalise`: per-channel ``(x - mean) / std`` saved with a model;
- :mod:`.diskcache`: the shared on-disk cache folder (lock, index, memory-mapped rows);
- :mod:`.cache`: :class:`ImageStore`, every image of a run decoded once (RAM or disk);
- :mod:`.chunks`: :class:`StoreStream`, one ImageStore per chunk, the next decoding while one is used;
- :mod:`.batching`: :class:`Batcher`, row indices to device batches (prefetch thread);
- :mod:`.sampler`: the order of an epoch's training images, in batches;
- :mod:`.augment`: :class:`BatchAugment`, batched augmentation on the device.
"""
from __future__ import annotations

from .augment import BatchAugment, dihedral, gaussian_blur
from .batching import Batcher
from .cache import ImageStore, cache_dir_for, load_store
from .diskcache import CACHE_DIR, CACHE_VERSION, CacheLock
from .normalise import Normalisation, choose_normalisation
from .pixels import prepare_pixels, resize_image, resolve_scaling, scale_intensity
from .sampler import balanced_weights, epoch_batches

__all__ = [
    "BatchAugment", "Batcher", "CACHE_DIR", "CACHE_VERSION", "CacheLock", "ImageStore", "Normalisation",
    "cache_dir_for", "choose_normalisation", "dihedral", "gaussian_blur", "load_store", "prepare_pixels",
    "resize_image", "resolve_scaling", "scale_intensity", "balanced_weights", "epoch_batches",
]
