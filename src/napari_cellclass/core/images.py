"""Reading microscopy images into ``(channels, y, x)`` arrays without losing channels.

TIFF goes through tifffile (8/16/32-bit integer and float, multi-page, multi-channel,
OME-TIFF); PNG, JPEG and BMP through Pillow. Channels are never averaged or dropped; the
only thing removed is a PNG alpha channel that is fully opaque (it carries no information).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageReadError

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
IMAGE_SUFFIXES = TIFF_SUFFIXES | PIL_SUFFIXES
_CHANNEL_AXES = ("C", "S")
_MAX_PAGE_CHANNELS = 64


@dataclass(frozen=True)
class ImageData:
    """Pixels of one image, channels first.

    Attributes
    ----------
    pixels : ndarray, shape (C, Y, X)
        The image data in its original dtype (bool becomes uint8).
    file_axes : str
        The axes as stored in the file (e.g. ``"YX"``, ``"YXS"``, ``"CYX"``, ``"QYX"``).
    channel_source : str
        Which file axis became the channel axis: ``"none"`` (single channel), ``"C"``,
        ``"S"`` (RGB samples) or another axis letter (pages read as channels).
    channel_names : tuple of str
        One name per channel (from OME metadata where present).
    """

    pixels: np.ndarray
    file_axes: str
    channel_source: str
    channel_names: tuple[str, ...] = field(default=())

    @property
    def n_channels(self) -> int:
        return int(self.pixels.shape[0])


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has a supported image suffix."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> ImageData:
    """Read one image as ``(C, Y, X)``.

    Raises
    ------
    ImageReadError
        With a one-line reason naming the file, for missing, empty, corrupt, truncated or
        unsupported images.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(
            f"{path}: unsupported file type '{suffix}'; use TIFF, PNG, JPEG or BMP"
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-export or remove it")
    try:
        data = _read_tiff(path) if suffix in TIFF_SUFFIXES else _read_pil(path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: too large to load into memory") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; report them all the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"{path}: unreadable or corrupt image ({reason})") from None
    px = data.pixels
    if px.ndim != 3 or 0 in px.shape:
        raise ImageReadError(f"{path}: image has an empty or invalid shape {px.shape}")
    return data


def _channels_first(arr: np.ndarray, axes: str, path: Path) -> tuple[np.ndarray, str]:
    """Move the channel axis first; return the array (C, Y, X) and which axis it came from."""
    axes = axes.upper()
    if arr.ndim != len(axes):
        raise ImageReadError(f"{path}: axes '{axes}' do not match the data shape {arr.shape}")
    # squeeze length-1 axes other than Y and X
    keep = [i for i, a in enumerate(axes) if a in "YX" or arr.shape[i] != 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{path}: no Y/X image plane found (axes '{axes}')")
    extra = [a for a in axes if a not in "YX"]
    if not extra:
        return arr[np.newaxis, :, :] if axes == "YX" else arr.T[np.newaxis], "none"
    if len(extra) > 1:
        raise ImageReadError(
            f"{path}: has axes '{axes}' with shape {arr.shape}; a classifier needs 2-D images "
            "with channels: save a projection (e.g. max over Z) or split the stack into files"
        )
    ch = extra[0]
    if ch not in _CHANNEL_AXES and arr.shape[axes.index(ch)] > _MAX_PAGE_CHANNELS:
        raise ImageReadError(
            f"{path}: {arr.shape[axes.index(ch)]} pages along axis '{ch}' are too many to read "
            f"as channels (at most {_MAX_PAGE_CHANNELS}); split the stack into files"
        )
    order = [axes.index(ch), axes.index("Y"), axes.index("X")]
    return np.ascontiguousarray(np.transpose(arr, order)), ch


def _ome_channel_names(tif, n: int) -> tuple[str, ...]:
    try:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(tif.ome_metadata)
        names = [el.get("Name") for el in root.iter() if el.tag.endswith("}Channel")]
        if len(names) == n and all(names):
            return tuple(str(x) for x in names)
    except Exception:  # noqa: BLE001 - channel names are a nicety, never a failure
        pass
    return ()


def _read_tiff(path: Path) -> ImageData:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: TIFF holds no image data")
        series = tif.series[0]
        arr = series.asarray()
        axes = series.axes
        data, source = _channels_first(np.asarray(arr), axes, path)
        names = _ome_channel_names(tif, data.shape[0]) if tif.is_ome else ()
    return ImageData(_usable(data, path), axes, source, names or _default_names(data.shape[0], source))


def _usable(data: np.ndarray, path: Path) -> np.ndarray:
    """bool as uint8, non-finite floats as 0; complex refused."""
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind == "c":
        raise ImageReadError(f"{path}: complex-valued images are not supported")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data


class TiffLayout:
    """Reads the pixels of TIFFs saved like one reference file, decoded by libtiff in C.

    tifffile parses every file's tags and metadata (OME-XML, ImageJ) in Python: about 0.2 ms
    for a small OME-TIFF, holding the GIL, more than the rest of preparing it for a network.
    imagecodecs' libtiff decodes all pages at once without that, releasing the GIL. A file is
    decoded this way only when its pages have exactly the reference's shape and type, and then
    takes the reference's axes (the pages of a file with two extra axes, which :func:`read_image`
    refuses, would be read as channels); anything else, including every error, goes through
    :func:`read_image`. Use :meth:`learn`, which checks that the reference decodes to the
    pixels :func:`read_image` gives.
    """

    MAX_BYTES = 256 * 2**20  # larger files: tifffile reads them as efficiently

    def __init__(self, raw_shape: tuple[int, ...], dtype: np.dtype, series_shape: tuple[int, ...],
                 axes: str) -> None:
        self.raw_shape = raw_shape
        self.dtype = dtype
        self.series_shape = series_shape
        self.axes = axes

    @classmethod
    def learn(cls, path: str | os.PathLike) -> TiffLayout | None:
        """The layout of ``path`` (a TIFF), or None when it cannot be decoded this way."""
        path = Path(path)
        if path.suffix.lower() not in TIFF_SUFFIXES:
            return None
        try:
            import tifffile

            raw = _libtiff_pages(path)
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = tuple(series.shape), series.axes
            layout = cls(raw.shape, raw.dtype, shape, axes)
            if not np.array_equal(layout._arrange(raw, path), read_image(path).pixels):
                return None
        except Exception:  # noqa: BLE001 - no imagecodecs, or a file libtiff reads otherwise: tifffile only
            return None
        return layout

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """``(C, Y, X)`` pixels of ``path`` as :func:`read_image` gives them (ImageReadError as there)."""
        path = Path(path)
        if path.suffix.lower() in TIFF_SUFFIXES:
            try:
                raw = _libtiff_pages(path)
            except Exception:  # noqa: BLE001 - read_image names the problem
                raw = None
            if raw is not None and raw.shape == self.raw_shape and raw.dtype == self.dtype:
                return self._arrange(raw, path)
        return read_image(path).pixels

    def _arrange(self, raw: np.ndarray, path: Path) -> np.ndarray:
        data, _ = _channels_first(raw.reshape(self.series_shape), self.axes, path)
        return _usable(data, path)


def _libtiff_pages(path: Path) -> np.ndarray:
    """Every page of the file's main image, decoded by libtiff (imagecodecs)."""
    import imagecodecs

    if path.stat().st_size > TiffLayout.MAX_BYTES:
        raise ValueError("large file")
    return imagecodecs.tiff_decode(path.read_bytes(), index=None)


def _default_names(n: int, source: str) -> tuple[str, ...]:
    if source == "S" and n in (3, 4):
        return ("red", "green", "blue", "alpha")[:n]
    return tuple(f"channel {i}" for i in range(n))


def _read_pil(path: Path) -> ImageData:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decodes now: truncated files raise here
        mode = img.mode
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("L" if mode == "1" else "RGB")
        elif mode.startswith("I;16"):
            arr = np.asarray(img).astype(np.uint16)
            return ImageData(arr[np.newaxis], "YX", "none", _default_names(1, "none"))
        arr = np.asarray(img)
    if arr.ndim == 2:
        return ImageData(arr[np.newaxis].copy(), "YX", "none", _default_names(1, "none"))
    # (Y, X, S): drop an alpha channel only when it is fully opaque
    n = arr.shape[2]
    if n in (2, 4):
        alpha = arr[..., -1]
        if alpha.min() == np.iinfo(arr.dtype).max:
            arr = arr[..., :-1]
    if arr.shape[2] == 1:
        return ImageData(arr[..., 0][np.newaxis].copy(), "YXS", "none", _default_names(1, "none"))
    data = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    return ImageData(data, "YXS", "S", _default_names(data.shape[0], "S"))
