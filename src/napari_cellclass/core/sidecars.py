"""The ``.npz`` label sidecar: one per labelled image, class *names* inside, no pickles.

Layout: ``<image folder>/cellclass_labels/<image stem>.npz`` with arrays

- ``format_version``: int, currently 1
- ``classes``: unicode array of class names (one for single-label, any number for multi-label)
- ``image``: the image's file name (a check that the sidecar belongs to it)
- ``timestamp``: ISO-8601 UTC time of the change
- ``source``: who set the label: ``"human"`` (labelling), ``"import"`` or ``"prediction"`` (an
  accepted prediction)
"""
from __future__ import annotations

import datetime as _dt
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import SidecarCorruptError, SidecarUnreadableError

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


_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': False, 'shape': \((\d*),?\), \}"
)


def _read_npy(raw: bytes) -> np.ndarray:
    """Parse a small ``.npy`` (0-d or 1-d, no objects) quickly; anything else goes to numpy's reader."""
    if raw[:6] == b"\x93NUMPY" and raw[6] == 1:
        hlen = int.from_bytes(raw[8:10], "little")
        m = _NPY_HEADER.match(raw[10:10 + hlen].decode("latin1"))
        if m and "O" not in m.group(1):
            dtype = np.dtype(m.group(1))
            n = int(m.group(2)) if m.group(2) else 1
            arr = np.frombuffer(raw, dtype=dtype, count=n, offset=10 + hlen)
            return arr if m.group(2) else arr.reshape(())
    return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)


def _read_members(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read some arrays of an ``.npz`` (no pickles) with one file read; a missing optional member is skipped."""
    data = path.read_bytes()
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = set(z.namelist())
        for name in names:
            if f"{name}.npy" in members:
                out[name] = _read_npy(z.read(f"{name}.npy"))
    return out


def read_sidecar(path: str | os.PathLike, full: bool = True) -> dict[str, object]:
    """Read a sidecar; raise :class:`SidecarCorruptError` (damaged) or :class:`SidecarUnreadableError`.

    ``full=False`` reads only the version and the class names (fast path used when opening).
    """
    path = Path(path)
    names = ("format_version", "classes", "image", "timestamp", "source") if full else ("format_version", "classes")
    try:
        z = _read_members(path, names)
        version = int(z["format_version"])
        classes = tuple(str(c) for c in np.atleast_1d(z["classes"]))
    except OSError as exc:
        raise SidecarUnreadableError(f"{path}: cannot read the label file ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise SidecarCorruptError(f"{path}: corrupt label sidecar ({exc})") from None
    if version > SIDECAR_VERSION:
        raise SidecarUnreadableError(
            f"{path}: label format version {version} is newer than this napari-cellclass "
            f"understands ({SIDECAR_VERSION}); upgrade napari-cellclass"
        )
    return {"classes": classes, "format_version": version,
            "image": str(z["image"]) if "image" in z else "",
            "timestamp": str(z["timestamp"]) if "timestamp" in z else "",
            "source": str(z["source"]) if "source" in z else "human"}
