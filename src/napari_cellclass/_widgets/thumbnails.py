"""Thumbnails of project images (Qt-free): the canvas's channel display, small, cached on disk in the project.

A thumbnail is the image as the canvas shows it (channels in their composite colours, each with
the canvas's percentile contrast; 8-bit RGB as it is) shrunk to at most :data:`THUMB_PX`
pixels. It is cached under ``<project>/cellclass_cache/thumbnails/`` in a file named after the
image id and the image file's stamp (modification time, size), so a changed image gets a new
thumbnail and deleting the folder loses nothing. Like every cache, it is written only into a
project (a folder with ``cellclass.json``), never into a folder only opened.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.atomic import atomic_write_bytes
from ..core.errors import CellclassError
from ..core.images import ImageData
from ..core.project import Project
from .layers import blend_channels, contrast_limits, natural_layer_count

#: Longest side of a cached thumbnail (the gallery scales it to the size the user picks).
THUMB_PX = 160
CACHE_DIR = ("cellclass_cache", "thumbnails")


def thumbnail_rgb(img: ImageData, px: int = THUMB_PX) -> np.ndarray:
    """``(h, w, 3)`` uint8 picture of ``img`` as the canvas shows it, longest side at most ``px``."""
    pixels = img.pixels
    step = max(1, max(pixels.shape[1:]) // (2 * px))  # enough pixels left for a smooth resize
    small = pixels[:, ::step, ::step]
    if natural_layer_count(img) == 1 and img.n_channels in (3, 4):  # 8-bit RGB(A)
        rgb = np.moveaxis(small[:3], 0, -1)
    elif img.n_channels == 1:
        lo, hi = contrast_limits(pixels[0])
        grey = np.clip((small[0].astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        rgb = (np.repeat(grey[..., None], 3, axis=-1) * 255).astype(np.uint8)
    else:
        rgb = (blend_channels(small, limits=[contrast_limits(c) for c in pixels]) * 255).astype(np.uint8)
    pic = Image.fromarray(np.ascontiguousarray(rgb))
    pic.thumbnail((px, px), Image.Resampling.BILINEAR)
    return np.asarray(pic.convert("RGB"))


class ThumbnailStore:
    """Thumbnails of one project's images: read from the disk cache or made (thread-safe)."""

    def __init__(self, project: Project, px: int = THUMB_PX) -> None:
        self.project = project
        self.px = int(px)
        self.folder = project.root.joinpath(*CACHE_DIR)

    def cache_path(self, image_id: str, st: os.stat_result) -> Path:
        key = hashlib.sha1(image_id.encode("utf-8")).hexdigest()
        return self.folder / key[:2] / f"{key[2:]}-{st.st_mtime_ns}-{st.st_size}-{self.px}.png"

    def get(self, image_id: str) -> np.ndarray | None:
        """The thumbnail of an image (cached, else made and cached); None when it cannot be read."""
        try:
            st = os.stat(self.project.path(image_id))
        except (OSError, CellclassError):
            return None
        path = self.cache_path(image_id, st)
        try:
            with Image.open(path) as pic:
                return np.asarray(pic.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError):
            pass
        try:
            rgb = thumbnail_rgb(self.project.read_image(image_id), self.px)
        except (CellclassError, OSError, ValueError, MemoryError):
            return None
        if self.project.config_path.is_file():
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
            with contextlib.suppress(CellclassError, OSError):  # a read-only or full disk only costs speed
                atomic_write_bytes(path, buf.getvalue(), fsync=False)
        return rgb
