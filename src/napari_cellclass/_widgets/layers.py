"""Turning project images into napari layer data (napari-free: plain tuples)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import ImageReadError
from ..core.images import ImageData
from ..core.project import Project

PAGE_SIZE = 16
METADATA_KEY = "cellclass"
#: ``layer.metadata`` key of a saliency layer: ``{"image_id", "class", "method", "project"}`` (not an image to label).
SALIENCY_KEY = "cellclass_saliency"
COMPOSITE = "composite"
BLEND = "RGB blend"


def short_names(image_ids: Sequence[str]) -> dict[str, str]:
    """Layer names that show what tells images apart: the ids without their common folders and extension.

    ``images/u2os_0002.tif`` on a page of ``images/`` gives ``u2os_0002``; fields of several
    wells keep the well (``A01/f1``, ``A02/f1``).
    """
    parts = [iid.split("/") for iid in image_ids]
    common = 0
    if parts:
        shortest = min(len(p) for p in parts) - 1  # never the file name itself
        while common < shortest and len({p[common] for p in parts}) == 1:
            common += 1
    out = {}
    for iid, p in zip(image_ids, parts, strict=True):
        name = "/".join(p[common:])
        stem, dot, _ = name.rpartition(".")
        out[iid] = stem if dot and stem and not stem.endswith("/") else name
    return out


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
    return layer_data_from_image(img, layer_metadata(project, image_id), image_id)


def layer_metadata(project: Project, image_id: str) -> dict[str, Any]:
    """The ``layer.metadata`` that ties a layer to a project image."""
    return {METADATA_KEY: {"project": str(project.root), "image_id": image_id,
                           "labels": list(project.labels(image_id))}}


def natural_layer_count(img: ImageData) -> int:
    """How many layers an image makes as a composite (1 for grey or 8-bit RGB)."""
    if img.n_channels == 1 or _is_rgb(img):
        return 1
    return img.n_channels


def _is_rgb(img: ImageData) -> bool:
    return img.channel_source == "S" and img.n_channels in (3, 4) and img.pixels.dtype == np.uint8


def layer_data_from_image(img: ImageData, meta: dict[str, Any], name: str,
                          mode: str | int = "composite") -> tuple[Any, dict[str, Any], str]:
    """Layer data for an image already read.

    ``mode``: ``"composite"`` (one layer per channel, additive; 8-bit RGB stays RGB),
    ``"RGB blend"`` (the composite rendered into one RGB layer, so the image fills one grid cell
    whatever its channel count) or a channel index (that channel only; clipped to the last).
    """
    kwargs: dict[str, Any] = {"name": name, "metadata": meta}
    if isinstance(mode, int) and img.n_channels > 1:
        k = min(max(0, mode), img.n_channels - 1)
        kwargs["contrast_limits"] = contrast_limits(img.pixels[k])
        kwargs["name"] = f"{name} [{img.channel_names[k]}]" if k < len(img.channel_names) else name
        return img.pixels[k], kwargs, "image"
    if img.n_channels == 1:
        kwargs["contrast_limits"] = contrast_limits(img.pixels[0])
        return img.pixels[0], kwargs, "image"
    if _is_rgb(img):
        kwargs["rgb"] = True
        return np.moveaxis(img.pixels, 0, -1), kwargs, "image"
    if mode == BLEND:
        kwargs["rgb"] = True
        return blend_channels(img.pixels), kwargs, "image"
    kwargs["channel_axis"] = 0
    kwargs["name"] = [f"{name} [{n}]" for n in img.channel_names]
    kwargs["contrast_limits"] = [contrast_limits(c) for c in img.pixels]
    kwargs["colormap"] = _channel_colormaps(img.n_channels)
    kwargs["blending"] = "additive"
    kwargs["metadata"] = [meta] * img.n_channels
    return img.pixels, kwargs, "image"


_RGB = {"blue": (0.0, 0.0, 1.0), "green": (0.0, 1.0, 0.0), "magenta": (1.0, 0.0, 1.0),
        "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "red": (1.0, 0.0, 0.0),
        "gray": (1.0, 1.0, 1.0)}


def blend_channels(pixels: np.ndarray, limits: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Channels ``(C, Y, X)`` as one additive RGB ``float32`` image ``(Y, X, 3)`` in 0-1.

    ``limits``: each channel's display range (default: its own percentile contrast).
    """
    out = np.zeros(pixels.shape[1:] + (3,), dtype=np.float32)
    for k, (c, cmap) in enumerate(zip(pixels, _channel_colormaps(pixels.shape[0]), strict=True)):
        lo, hi = limits[k] if limits is not None else contrast_limits(c)
        norm = np.clip((c.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        out += norm[..., None] * np.asarray(_RGB[cmap], dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


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
