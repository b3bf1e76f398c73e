"""Saving in-memory images (a script's arrays, napari layers) into a project folder as TIFF files."""
from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .errors import ProjectError
from .images import is_image_file
from .project import Project

#: Folder (inside the project) for images that came from arrays, e.g. layers a script made.
ARRAY_IMAGE_FOLDER = "added_images"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _with_axes(pixels: Any, channel_axis: int | None, name: str) -> tuple[np.ndarray, str]:
    """The array to write and its TIFF axes (``YX``, ``YXS`` for RGB(A) last, or ``CYX``)."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and channel_axis is None and arr.shape[-1] in (3, 4):
        axes = "YXS"
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, 0 if channel_axis is None else channel_axis, 0)
        axes = "CYX"
    elif arr.ndim == 2:
        axes = "YX"
    else:
        raise ProjectError(f"'{name}': a {arr.ndim}-D array cannot be saved as one image; "
                           "give a 2-D image or channels with a 2-D plane")
    return (arr.astype(np.uint8) if arr.dtype == bool else arr), axes


def _free_id(project: Project, folder: str, name: str) -> str:
    """``<folder>/<safe name>.tif``, with ``-1``, ``-2``, ... added until no image or file has that name."""
    base = os.path.splitext(name)[0]
    stem = _UNSAFE.sub("_", base if is_image_file(name) else name).strip("._") or "image"
    taken = {i.casefold() for i in project.image_ids}
    k = 0
    while True:
        image_id = f"{folder}/{stem}{'' if k == 0 else f'-{k}'}.tif"
        if image_id.casefold() not in taken and not (project.root / image_id).exists():
            return image_id
        k += 1


def save_array_image(project: Project, pixels: Any, name: str, *, channel_axis: int | None = None,
                     folder: str = ARRAY_IMAGE_FOLDER) -> str:
    """Write an in-memory image into the project as a TIFF and return its new image id.

    ``pixels`` is 2-D ``(Y, X)``, or 3-D with the channels on ``channel_axis`` (RGB(A) last
    when ``channel_axis`` is None and the last axis has 3 or 4 samples). The file goes to
    ``<project>/<folder>/<name>.tif`` (a safe version of ``name``; never overwriting, a number
    is added instead), written atomically, and the project lists it at once.
    """
    import tifffile

    arr, axes = _with_axes(pixels, channel_axis, name)
    image_id = _free_id(project, folder, name)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, metadata={"axes": axes})
    atomic_write_bytes(project.root / image_id, buf.getvalue())
    project.rescan()
    return image_id
