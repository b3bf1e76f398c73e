"""The ``.npz`` label sidecar: one per labelled image, class *names* inside, no pickles.

Layout: ``<image folder>/cellclass_labels/<image stem>.npz`` with arrays

- ``format_version``: int, currently 1
- ``classes``: unicode array of class names (one for single-label, any number for multi-label)
- ``image``: the image's file name (a check that the sidecar belongs to it)
- ``timestamp``: ISO-8601 UTC time of the change
- ``source``: who set the label, ``"human"`` (labelling) or ``"import"``
"""
from __future__ import annotations

import datetime as _dt
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import ProjectError

LABEL_DIR = "cellclass_labels"
SIDECAR_VERSION = 1


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """Where the label sidecar of ``image_path`` lives."""
    p = Path(image_path)
    return p.parent / LABEL_DIR / (p.stem + ".npz")


def encode_sidecar(image_name: str, classes: tuple[str, ...], source: str = "human") -> bytes:
    """The bytes of a sidecar holding ``classes`` for the image file ``image_name``."""
    buf = io.BytesIO()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
    np.savez(
        buf,
        format_version=np.array(SIDECAR_VERSION, dtype=np.int32),
        classes=np.array(list(classes), dtype=np.str_) if classes else np.zeros(0, dtype="<U1"),
        image=np.array(image_name, dtype=np.str_),
        timestamp=np.array(now, dtype=np.str_),
        source=np.array(source, dtype=np.str_),
    )
    return buf.getvalue()


def write_sidecar(path: Path, image_name: str, classes: tuple[str, ...], source: str = "human",
                  fsync: bool = True) -> None:
    """Atomically write a sidecar."""
    atomic_write_bytes(path, encode_sidecar(image_name, classes, source), fsync=fsync)


def read_sidecar(path: str | os.PathLike) -> dict[str, object]:
    """Read a sidecar; raise :class:`ProjectError` when it is corrupt or not ours."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            classes = tuple(str(c) for c in np.atleast_1d(z["classes"]))
            image = str(z["image"]) if "image" in z.files else ""
            timestamp = str(z["timestamp"]) if "timestamp" in z.files else ""
            source = str(z["source"]) if "source" in z.files else "human"
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise ProjectError(f"{path}: corrupt label sidecar ({exc})") from None
    if version > SIDECAR_VERSION:
        raise ProjectError(
            f"{path}: label format version {version} is newer than this napari-cellclass "
            f"understands ({SIDECAR_VERSION}); upgrade napari-cellclass"
        )
    return {"classes": classes, "image": image, "timestamp": timestamp, "source": source,
            "format_version": version}
