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
from .textfiles import read_regular_bounded

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
# A sidecar holds a few short strings (a couple of kB). These bounds stop a hostile or foreign
# file (a header that claims a huge array, a zip bomb) from making an open allocate gigabytes.
MAX_SIDECAR_BYTES = 4 * 2 ** 20
MAX_MEMBER_BYTES = 4 * 2 ** 20


def _read_npy(raw: bytes) -> np.ndarray:
    """Parse an ``.npy`` held in memory (no objects), never allocating more than ``raw`` holds."""
    if raw[:6] == b"\x93NUMPY" and len(raw) > 10 and raw[6] == 1:
        hlen = int.from_bytes(raw[8:10], "little")
        m = _NPY_HEADER.match(raw[10:10 + hlen].decode("latin1"))
        if m and "O" not in m.group(1):
            dtype = np.dtype(m.group(1))
            n = int(m.group(2)) if m.group(2) else 1
            _check_fits(n * dtype.itemsize, len(raw) - 10 - hlen)
            arr = np.frombuffer(raw, dtype=dtype, count=n, offset=10 + hlen)
            return arr if m.group(2) else arr.reshape(())
    fh = io.BytesIO(raw)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("holds Python objects (pickles are never loaded)")
    count = 1
    for dim in shape:
        count *= int(dim)
    _check_fits(count * dtype.itemsize, len(raw) - fh.tell())
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=fh.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def _check_fits(claimed: int, held: int) -> None:
    if claimed > held or claimed > MAX_MEMBER_BYTES:
        raise ValueError(f"an array claims {claimed} bytes but the file holds {held}")


class _TooLarge(ValueError):
    pass


def _read_members(data: bytes, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read some arrays of an ``.npz`` held in memory (no pickles, bounded sizes)."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = {i.filename: i for i in z.infolist()}
        for name in names:
            info = infos.get(f"{name}.npy")
            if info is None:
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                raise _TooLarge(f"member {info.filename} is too large ({info.file_size} bytes unpacked)")
            with z.open(info) as fh:
                raw = fh.read(MAX_MEMBER_BYTES + 1)
            if len(raw) > MAX_MEMBER_BYTES:
                raise _TooLarge(f"member {info.filename} unpacks to more than it declares")
            out[name] = _read_npy(raw)
    return out


def read_sidecar(path: str | os.PathLike, full: bool = True) -> dict[str, object]:
    """Read a sidecar; raise :class:`SidecarCorruptError` (damaged) or :class:`SidecarUnreadableError`.

    ``full=False`` reads only the version and the class names (fast path used when opening).
    What a read may allocate is bounded: a FIFO, a device, a file over 4 MiB, an array
    header claiming more than the file holds or a zip bomb is reported as corrupt.
    """
    path = Path(path)
    names = ("format_version", "classes", "image", "timestamp", "source") if full else ("format_version", "classes")
    try:
        z = _read_members(read_regular_bounded(path, MAX_SIDECAR_BYTES)[0], names)
        version = int(z["format_version"])
        cls_arr = np.atleast_1d(z["classes"])
        if cls_arr.ndim != 1 or (cls_arr.size and cls_arr.dtype.kind not in "U"):
            raise ValueError("'classes' is not a list of names")
        classes = tuple(str(c) for c in cls_arr)
    except OSError as exc:
        raise SidecarUnreadableError(f"{path}: cannot read the label file ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError, OverflowError,
            NotImplementedError, RuntimeError, SyntaxError, MemoryError) as exc:
        raise SidecarCorruptError(f"{path}: corrupt label sidecar ({' '.join(str(exc).split())})") from None
    if version > SIDECAR_VERSION:
        raise SidecarUnreadableError(
            f"{path}: label format version {version} is newer than this napari-cellclass "
            f"understands ({SIDECAR_VERSION}); upgrade napari-cellclass"
        )
    return {"classes": classes, "format_version": version,
            "image": str(z["image"]) if "image" in z else "",
            "timestamp": str(z["timestamp"]) if "timestamp" in z else "",
            "source": str(z["source"]) if "source" in z else "human"}


def sidecar_source(raw: bytes) -> str:
    """The ``source`` recorded in a sidecar's bytes (``"human"`` when absent or unreadable)."""
    try:
        z = _read_members(raw, ("source",))
        return str(z["source"]) if "source" in z else "human"
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        return "human"
