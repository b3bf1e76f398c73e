"""Raw pixels to a cache row: intensity scaling to about [0, 1], then resizing to the input size."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import ImageReadError

PERCENTILES = (0.5, 99.8)


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


def resize_image(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(C, Y, X)`` float32 to ``(C, size, size)`` (or ``(C, *size)`` for a ``(height, width)``),
    bilinear, antialiased when shrinking.

    The whole field of view is kept (non-square images are stretched, never cropped).
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if (x.shape[1], x.shape[2]) == hw:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    shrink = x.shape[1] > hw[0] or x.shape[2] > hw[1]
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy()


def prepare_pixels(pixels: np.ndarray, size: int, scaling: str) -> np.ndarray:
    """Raw ``(C, Y, X)`` (or ``(Y, X)``) pixels -> scaled, resized float16 ``(C, size, size)``."""
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ImageReadError(f"array of shape {pixels.shape}: expected (C, Y, X) or (Y, X)")
    x = resize_image(scale_intensity(pixels, scaling), size)
    return np.clip(x, -60000, 60000).astype(np.float16)  # float16 range

