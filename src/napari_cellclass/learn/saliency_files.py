"""Saliency maps as files: a float32 TIFF at the image's resolution and a PNG overlay, named from the image id.

``a/b.tif`` explained for class ``mitotic`` with Grad-CAM becomes ``a__b_gradcam_mitotic.tif`` and
``.png`` in the output folder (sub-folders flattened; other characters than letters, digits, ``.-_``
become ``_``; a clash gets ``-2``, ``-3``). Nothing is written outside that folder, the folder may not
lie inside the project (the maps would become project images), and an existing file is replaced only
when this program wrote it (its TIFF or PNG Software tag says so; see ``core.outputs``).
"""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.images import ImageData
from ..core.outputs import SOFTWARE, check_figure_folder, check_output_file
from .saliency import Saliency

#: The overlay's colormap (matplotlib) and the largest opacity of the map over the image.
COLORMAP = "inferno"
OVERLAY_ALPHA = 0.7
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SaliencyFiles:
    """The files written for one map."""

    tiff: Path
    png: Path


def safe_part(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``-``, ``_`` made ``_``."""
    return _UNSAFE.sub("_", text).strip("._") or "_"


def file_stem(image_id: str, method: str, class_name: str) -> str:
    """``a/b.tif`` -> ``a__b_<method>_<class>`` (no folder part can remain)."""
    p = PurePosixPath(image_id.replace("\\", "/"))
    parts = [x for x in p.parts if x not in ("/", "..", ".")]
    if parts:
        parts[-1] = PurePosixPath(parts[-1]).stem or parts[-1]
    return "__".join(safe_part(x) for x in parts or ["image"]) + f"_{safe_part(method)}_{safe_part(class_name)}"


def plan_files(out: str | os.PathLike, maps: Sequence[Saliency], project_root: str | os.PathLike | None = None,
               taken: set[str] | None = None) -> list[SaliencyFiles]:
    """The TIFF and PNG paths of each map in ``out``, all checked before any is written.

    ``taken``: names planned earlier in the same run (updated), so batches never clash.

    Raises
    ------
    ProjectError
        ``out`` lies inside the project or a project's own folders, is not a folder, or a file to
        write exists and was not written by an earlier explain.
    """
    folder = check_out_folder(out, project_root)
    taken = set() if taken is None else taken
    plan = []
    for m in maps:
        stem = file_stem(m.image_id, m.method, m.explained)
        name, k = stem, 1
        while name.casefold() in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name.casefold())
        files = SaliencyFiles(folder / f"{name}.tif", folder / f"{name}.png")
        for path in (files.tiff, files.png):
            check_output_file(path)  # nothing there yet, or an image this program wrote
        plan.append(files)
    return plan


def check_out_folder(out: str | os.PathLike, project_root: str | os.PathLike | None = None) -> Path:
    """The output folder (made later), when it may hold maps; :class:`ProjectError` otherwise."""
    return check_figure_folder(out, project_root, "--out", "the maps", "saliency")


def display_rgb(img: ImageData | np.ndarray) -> np.ndarray:
    """An image as float32 ``(Y, X, 3)`` in [0, 1] for the overlay: each channel contrast-stretched.

    One channel: grey; three: RGB; otherwise the brightest stretched channel per pixel (grey).
    """
    pix = img.pixels if isinstance(img, ImageData) else np.asarray(img)
    pix = pix[None] if pix.ndim == 2 else pix
    x = np.nan_to_num(pix.astype(np.float32))
    flat = x.reshape(x.shape[0], -1)
    step = max(1, flat.shape[1] // 65536)
    lo, hi = np.percentile(flat[:, ::step], (0.5, 99.8), axis=1)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    x = np.clip((x - lo[:, None, None]) / span[:, None, None], 0, 1)
    if x.shape[0] == 3:
        return np.moveaxis(x, 0, -1)
    grey = x[0] if x.shape[0] == 1 else x.max(0)
    return np.repeat(grey[..., None], 3, axis=-1)


def overlay(image_rgb: np.ndarray, saliency: np.ndarray, colormap: str = COLORMAP,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 ``(Y, X, 3)``: the map in ``colormap`` over the image, more opaque where the map is high."""
    import matplotlib

    colours = matplotlib.colormaps[colormap](np.clip(saliency, 0, 1))[..., :3].astype(np.float32)
    a = (alpha * np.clip(saliency, 0, 1))[..., None]
    return np.round(np.clip((1 - a) * image_rgb + a * colours, 0, 1) * 255).astype(np.uint8)


def write_maps(maps: Sequence[Saliency], images: Sequence[ImageData | np.ndarray], plan: Sequence[SaliencyFiles],
               model: str = "") -> None:
    """Write each map's TIFF (float32, the image's ``Y x X``) and PNG overlay to its planned paths."""
    import tifffile
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    for m, img, files in zip(maps, images, plan, strict=True):
        info: dict[str, Any] = {"software": SOFTWARE, **m.to_dict(), "model": model}
        description = json.dumps(info, ensure_ascii=False)
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ascontiguousarray(m.map, dtype=np.float32), description=description, metadata=None,
                         software=SOFTWARE)
        check_output_file(files.tiff)  # nothing there yet, or an image this program wrote
        atomic_write_bytes(files.tiff, buf.getvalue(), fsync=False)
        png = PngInfo()
        png.add_text("Software", SOFTWARE)
        png.add_text("Description", description)
        buf = io.BytesIO()
        Image.fromarray(overlay(display_rgb(img), m.map)).save(buf, format="PNG", pnginfo=png)
        check_output_file(files.png)
        atomic_write_bytes(files.png, buf.getvalue(), fsync=False)
