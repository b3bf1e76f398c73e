"""Turning project images into napari layer data (napari-free: plain tuples)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import ImageReadError
from ..core.project import Project

PAGE_SIZE = 16
METADATA_KEY = "cellclass"


def contrast_limits(pixels: np.ndarray) -> list[float]:
    """Robust display range (0.5-99.8 percentiles) so 16-bit images are not black."""
    if pixels.dtype == np.uint8:
        return [0.0, 255.0]
    flat = pixels.reshape(-1)
    lo, hi = np.percentile(flat[:: max(1, flat.size // 200_000)], [0.5, 99.8])
    if hi <= lo:
        hi = lo + 1
    return [float(lo), float(hi)]


def image_layer_data(project: Project, image_id: str) -> tuple[Any, dict[str, Any], str]:
    """One image as ``(data, kwargs, 'image')``: channels first, a composite for several channels."""
    img = project.read_image(image_id)
    meta = {METADATA_KEY: {"project": str(project.root), "image_id": image_id,
                           "labels": list(project.labels(image_id))}}
    kwargs: dict[str, Any] = {"name": image_id, "metadata": meta}
    if img.n_channels == 1:
        kwargs["contrast_limits"] = contrast_limits(img.pixels[0])
        return img.pixels[0], kwargs, "image"
    if img.channel_source == "S" and img.n_channels in (3, 4) and img.pixels.dtype == np.uint8:
        kwargs["rgb"] = True
        return np.moveaxis(img.pixels, 0, -1), kwargs, "image"
    kwargs["channel_axis"] = 0
    kwargs["name"] = [f"{image_id} [{n}]" for n in img.channel_names]
    kwargs["contrast_limits"] = [contrast_limits(c) for c in img.pixels]
    kwargs["colormap"] = _channel_colormaps(img.n_channels)
    kwargs["blending"] = "additive"
    kwargs["metadata"] = [meta] * img.n_channels
    return img.pixels, kwargs, "image"


def _channel_colormaps(n: int) -> list[str]:
    base = ["blue", "green", "magenta", "yellow", "cyan", "red", "gray"]
    if n == 2:
        return ["blue", "green"]
    return [base[i % len(base)] for i in range(n)]


def project_layer_data(project: Project, image_ids: Sequence[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data for several images; unreadable images are skipped (reported by the widget)."""
    out = []
    for iid in image_ids:
        try:
            out.append(image_layer_data(project, iid))
        except ImageReadError:
            continue
    return out
