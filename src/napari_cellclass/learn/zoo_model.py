"""Run a BioImage Model Zoo classifier package (zip or folder, model spec 0.5 or older) on image files.

Any package runs through bioimageio.core's pipeline (its own pre- and post-processing). An image
is resized only where the input size is fixed (or to the nearest size a free axis allows); a
package exported here takes any size and resizes inside its network, so it sees each image as
its model did. Its original class names and per-class thresholds come from its config.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ChannelMismatchError, ImageReadError, ModelError
from ..core.images import read_image
from .data.pixels import resize_image
from .events import CancelToken

__all__ = ["ZooModel", "is_zoo_package", "load_zoo_model", "zoo_probabilities"]

#: The description file names a zoo package folder may hold.
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Weight formats run here, in order of preference (ONNX runs no code from the package).
RUNNABLE = ("onnx", "torchscript")


@dataclass
class ZooModel:
    """A zoo classifier ready to run: its classes, input shape and prediction pipeline."""

    path: Path
    name: str
    classes: tuple[str, ...]
    multi_label: bool
    in_chans: int
    sizes: tuple[tuple[int, int], tuple[int, int]]  # per space axis (y, x): (size, 0) fixed, (min, step) free
    weights_format: str
    descr: Any = field(repr=False)
    dims: tuple[str, ...] = ("batch", "channel", "y", "x")
    own: dict[str, Any] | None = None  # an export of this program: its class names and thresholds
    _pipeline: Any = field(default=None, repr=False)

    @property
    def thresholds(self) -> np.ndarray:
        """Per-class decision thresholds (0.5 unless the package is an export of this program)."""
        given = (self.own or {}).get("thresholds")
        if given is not None and len(given) == len(self.classes):
            return np.asarray(given, np.float64)
        return np.full(len(self.classes), 0.5)

    @property
    def batched(self) -> bool:
        """Whether the input has a batch axis (else images go one at a time)."""
        return "batch" in self.dims

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height`` x ``width`` is given to the model at."""
        out = []
        for n, (first, step) in zip((height, width), self.sizes, strict=True):
            out.append(first if step == 0 else max(first, first + int(round((n - first) / step)) * step))
        return out[0], out[1]

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """``(N, K)`` class probabilities of raw ``(N, C, H, W)`` float32 images from :func:`_prepared`."""
        from bioimageio.core import Tensor
        from bioimageio.core.digest_spec import create_sample_for_model

        if self._pipeline is None:
            from bioimageio.core import create_prediction_pipeline

            self._pipeline = create_prediction_pipeline(self.descr, weights_format=self.weights_format,
                                                        devices=["cpu"])
        out_id = self._pipeline.output_ids[0]
        parts = [raw] if self.batched else [raw[i:i + 1] for i in range(len(raw))]
        probs = []
        for part in parts:
            data = part if self.batched else part[0]
            dims = self.dims if self.batched else tuple(d for d in self.dims if d != "batch")
            sample = create_sample_for_model(self.descr, inputs=Tensor.from_numpy(data, dims=dims), sample_id="x")
            result = self._pipeline.predict_sample_without_blocking(sample).members[out_id]
            arr = result.data.transpose(*[d for d in ("batch", "channel") if d in result.dims]).values
            probs.append(np.asarray(arr, np.float32).reshape(len(part), len(self.classes)))
        return np.concatenate(probs)


def is_zoo_package(path: str | os.PathLike) -> bool:
    """True for a ``.zip`` file or a folder holding a zoo description (``rdf.yaml``, ``*bioimageio.yaml``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.suffix.lower() == ".zip"
    if p.is_dir():
        return any((p / n).is_file() for n in DESCRIPTION_NAMES) or any(p.glob("*.bioimageio.yaml"))
    return False


def _load_description(path: Path) -> Any:
    from bioimageio.spec import InvalidDescr, load_model_description

    source = path
    if path.is_dir():
        found = [path / n for n in DESCRIPTION_NAMES if (path / n).is_file()] or sorted(path.glob("*.bioimageio.yaml"))
        source = found[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            descr = load_model_description(source, format_version="latest")
        except Exception as exc:  # noqa: BLE001 - a damaged zip, YAML or a description of something else
            raise ModelError(f"{path}: not a BioImage Model Zoo model package ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); give a model folder or a zoo model .zip") from None
    if isinstance(descr, InvalidDescr):
        errors = getattr(descr.validation_summary, "errors", [])
        first = f"{'.'.join(str(x) for x in errors[0].loc)}: {errors[0].msg}" if errors else "invalid description"
        raise ModelError(f"{path}: the zoo package does not validate ({first}); fix or re-export it")
    return descr


def _axis_id(axis: Any) -> str:
    return str(getattr(axis, "id", None) or axis.type)


def _input_shape(path: Path, descr: Any) -> tuple[tuple[str, ...], int, tuple[tuple[int, int], tuple[int, int]]]:
    """(axis ids in order, channels, per space axis y, x: (size, 0) when fixed, (min, step) when free)."""
    if len(descr.inputs) != 1:
        raise ModelError(f"{path}: the model takes {len(descr.inputs)} inputs; predict runs classifiers of one "
                         "image input")
    axes = descr.inputs[0].axes
    types = [a.type for a in axes]
    space = [a for a in axes if a.type == "space"]
    if len(space) != 2 or any(t not in ("batch", "channel", "space") for t in types):
        raise ModelError(f"{path}: its input has axes {', '.join(_axis_id(a) for a in axes)}; predict runs "
                         "classifiers of 2D images (batch, channel, y, x)")
    chans = [a for a in axes if a.type == "channel"]
    in_chans = len(chans[0].channel_names) if chans else 1
    sizes: dict[str, tuple[int, int]] = {}
    for a in space:
        s = a.size
        if isinstance(s, int):
            sizes[_axis_id(a)] = (int(s), 0)
        elif hasattr(s, "min") and hasattr(s, "step"):
            sizes[_axis_id(a)] = (int(s.min), int(s.step))
        else:
            raise ModelError(f"{path}: its input axis {_axis_id(a)} has a size set by another tensor; predict runs "
                             "classifiers whose input size is fixed or free")
    dims = tuple(_axis_id(a) if a.type == "space" else a.type for a in axes)
    ordered = list(sizes.values())
    return dims, in_chans, (sizes.get("y", ordered[0]), sizes.get("x", ordered[1]))


def _classes(path: Path, descr: Any) -> tuple[tuple[str, ...], bool]:
    """(class names, multi-label) from the single batch x channel output; ModelError for anything else."""
    if len(descr.outputs) != 1:
        raise ModelError(f"{path}: the model has {len(descr.outputs)} outputs; predict runs classifiers whose one "
                         "output is batch x channel (one value per class)")
    out = descr.outputs[0]
    kinds = [a.type for a in out.axes]
    if sorted(set(kinds) - {"batch"}) != ["channel"] or kinds.count("channel") != 1:
        shape = ", ".join(_axis_id(a) for a in out.axes)
        raise ModelError(f"{path}: this zoo model is not a classifier: its output has axes {shape}; predict runs "
                         "models whose output is batch x channel, with the class names as channel names")
    channel = next(a for a in out.axes if a.type == "channel")
    names = tuple(str(n) for n in channel.channel_names)
    ours = (getattr(descr.config, "model_extra", None) or {}).get("napari-cellclass") or {}
    if isinstance(ours, dict) and len(ours.get("classes") or ()) == len(names):
        names = tuple(str(c) for c in ours["classes"])  # our own export: the names with their spaces
    post = [p.id for p in (out.postprocessing or [])]
    return names, "sigmoid" in post and "softmax" not in post


def load_zoo_model(path: str | os.PathLike) -> ZooModel:
    """Open a zoo classifier package; one-line :class:`ModelError` for anything predict cannot run."""
    p = Path(path).expanduser().resolve()
    descr = _load_description(p)
    if getattr(descr, "type", "") != "model":
        raise ModelError(f"{p}: the zoo package describes a {getattr(descr, 'type', '?')}, not a model")
    classes, multi = _classes(p, descr)
    dims, in_chans, sizes = _input_shape(p, descr)
    present = [f for f in RUNNABLE if getattr(descr.weights, f, None) is not None]
    if not present:
        have = [k for k, v in descr.weights if v is not None]
        raise ModelError(f"{p}: the package holds only {', '.join(have)} weights; predict runs its ONNX or "
                         "TorchScript weights (other formats would run code from the package); ask for an "
                         "export with one of those")
    name = str(descr.name) if getattr(descr, "name", None) else p.stem
    ours = (getattr(descr.config, "model_extra", None) or {}).get("napari-cellclass")
    return ZooModel(p, name, classes, multi, in_chans, sizes, present[0], descr, dims,
                    own=ours if isinstance(ours, dict) else None)


def _prepared(path: Any, zoo: ZooModel) -> np.ndarray | str:
    """An image as raw float32 ``(C, H, W)`` at the size the model takes it, or the reason it cannot be used."""
    try:
        pix = np.asarray(path) if isinstance(path, np.ndarray) else read_image(path).pixels
    except ImageReadError as exc:
        return str(exc).split(": ", 1)[-1]
    pix = pix[None] if pix.ndim == 2 else pix
    if pix.shape[0] != zoo.in_chans:
        raise ChannelMismatchError(f"{path}: has {pix.shape[0]} channel(s) but the model {zoo.path.name} takes "
                                   f"{zoo.in_chans}; convert the image or use another model")
    x = np.nan_to_num(pix.astype(np.float32))
    return resize_image(x, zoo.target_size(int(x.shape[-2]), int(x.shape[-1])))


def _decoded(paths: Sequence[Any], zoo: ZooModel, batch: int, threads: int) -> Iterator[list[np.ndarray | str]]:
    with ThreadPoolExecutor(threads) as pool:
        ahead = None
        for start in range(0, len(paths), batch):
            nxt = pool.map(lambda q: _prepared(q, zoo), paths[start:start + batch])
            if ahead is not None:
                yield list(ahead)
            ahead = nxt
        if ahead is not None:
            yield list(ahead)


def zoo_probabilities(zoo: ZooModel, paths: Sequence[Any], keys: Sequence[str], *, batch_size: int = 64,
                      progress: Callable[[int, int], None] | None = None, cancel: CancelToken | None = None
                      ) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """``(keys predicted, probabilities, {key: why skipped})`` for image files, decoded by threads."""
    done_keys: list[str] = []
    probs: list[np.ndarray] = []
    problems: dict[str, str] = {}
    threads = max(1, min(8, os.cpu_count() or 1))
    done = 0
    for start, rows in zip(range(0, len(paths), batch_size), _decoded(paths, zoo, batch_size, threads),
                           strict=False):
        if cancel is not None and cancel.is_set():
            break
        good = []
        for k, row in zip(keys[start:start + batch_size], rows, strict=True):
            if isinstance(row, str):
                problems[k] = row
            else:
                good.append((k, row))
        for shape in dict.fromkeys(r.shape for _, r in good):  # one call per image size
            same = [(k, r) for k, r in good if r.shape == shape]
            p = zoo.probabilities(np.stack([r for _, r in same]))
            if not np.isfinite(p).all():
                raise ModelError(f"{zoo.path}: the model gives non-finite outputs (NaN or infinity); nothing was "
                                 "stored")
            probs.append(p)
            done_keys += [k for k, _ in same]
        done += len(rows)
        if progress is not None:
            progress(done, len(paths))
    return done_keys, (np.concatenate(probs) if probs else np.zeros((0, len(zoo.classes)), np.float32)), problems
