"""The image files that folders, files and glob patterns name (what ``predict`` reads outside a project)."""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import CellclassError
from .images import IMAGE_SUFFIXES
from .scan import SKIP_DIRS, natural_key, scan_images

_MAGIC = frozenset("*?[")


def is_pattern(text: str) -> bool:
    """Whether ``text`` holds glob wildcards (``*``, ``?``, ``[``)."""
    return not _MAGIC.isdisjoint(text)


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by ``paths``, in their order, each once.

    A folder gives every image below it (as a project lists them: natural order, hidden files,
    label, model and cache folders left out); a file gives itself; a glob pattern (``**`` goes
    down any number of folders) gives the image files and the images below the folders it
    matches. A missing path, or a pattern that matches no image, is a :class:`CellclassError`
    naming it.
    """
    out: dict[str, Path] = {}
    for given in paths:
        for p in _expand_one(str(given)):
            out.setdefault(os.path.abspath(p), p)
    return list(out.values())


def _expand_one(text: str) -> list[Path]:
    p = Path(text).expanduser()
    if p.is_dir():
        return [p / r for r in scan_images(p)]
    if p.exists():
        return [p]
    if not is_pattern(text):
        raise CellclassError(f"{text}: no such image or folder; check the path")
    found: list[Path] = []
    for m in sorted(glob.glob(str(p), recursive=True), key=natural_key):
        q = Path(m)
        if q.is_dir():
            found.extend(q / r for r in scan_images(q))
        elif q.suffix.lower() in IMAGE_SUFFIXES and SKIP_DIRS.isdisjoint(q.parts[:-1]) and q.is_file():
            found.append(q)
    if not found:
        raise CellclassError(f"{text}: the pattern matches no image; check it (and quote it, e.g. "
                             "'plate*/**/*.tif', so that the shell does not expand it)")
    return found
