"""Finding image files below a project folder, without reading pixels."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .images import IMAGE_SUFFIXES
from .sidecars import LABEL_DIR

# folders that never hold project images
SKIP_DIRS = frozenset({LABEL_DIR, "cellclass_models", "cellclass_cache", "__pycache__", "__MACOSX"})
_NUM = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10``; total order, stable across runs."""
    parts = _NUM.split(text.casefold())
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts) + ((2, 0, text),)


def scan_images(root: Path) -> list[str]:
    """Relative POSIX paths of all image files below ``root``, naturally sorted.

    Hidden files and folders, label folders and model folders are skipped.
    """
    found: list[str] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            name = e.name
            if name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            if is_dir:
                if name not in SKIP_DIRS and not os.path.exists(os.path.join(e.path, "model.safetensors")):
                    stack.append((Path(e.path), f"{prefix}{name}/"))
            elif os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(prefix + name)
    found.sort(key=natural_key)
    return found
