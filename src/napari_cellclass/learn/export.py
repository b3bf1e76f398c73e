"""Export a trained model as ONNX, TorchScript or a BioImage Model Zoo package, checked on real images.

Every format holds the network as trained (logits); the calibration temperature and the
softmax/sigmoid are applied by the package's post-processing (BioImage Model Zoo) or by the
caller (ONNX, TorchScript: the docs and the package README say how).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.atomic import atomic_write_bytes
from ..core.errors import ConfigError, ModelError
from ..core.images import read_image
from ..core.outputs import SOFTWARE, check_output_file
from ..core.project import Project
from .checkpoint import TrainedModel, load_model
from .data.pixels import prepare_pixels, resize_image, resolve_scaling

__all__ = ["FORMATS", "ExportResult", "ReferenceImages", "default_output", "export_model", "reference_images"]

#: Export formats and the file name ending each one gets by default.
FORMATS = {"bioimageio": ".bioimageio.zip", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
#: ONNX operator set (the dynamo exporter needs >= 18; the zoo needs >= 7).
ONNX_OPSET = 18
#: Largest difference allowed between an export's logits and PyTorch's on the reference images.
PARITY_TOLERANCE = 1e-4
#: The TorchScript archive's extra file that marks it as written by this program.
MARKER = "napari-cellclass.json"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ReferenceImages:
    """Real images to check an export with: raw pixels at the input size and the network input."""

    ids: list[str]
    raw: np.ndarray  # (N, C, S, S) float32: the image resized, intensities untouched
    dtype: str  # the images' pixel type (decides the 'auto' intensity scaling)
    network_input: np.ndarray  # (N, C, S, S) float32, scaled and normalised as predict does


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely the export matches the PyTorch model."""

    path: Path
    format: str
    model: Path
    parity: dict[str, float] = field(default_factory=dict)  # weights format -> largest |logit difference|
    images: list[str] = field(default_factory=list)  # the reference images' ids
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the CLI prints."""
        return {"ok": True, "path": str(self.path), "format": self.format, "model": str(self.model),
                "parity": self.parity, "tolerance": PARITY_TOLERANCE, "images": self.images, "notes": self.notes}


#: Where exports of a project's own models go by default (never scanned for images).
EXPORTS_DIR = "cellclass_exports"


def default_output(model_dir: str | os.PathLike, fmt: str) -> Path:
    """``<project>/cellclass_exports/<model><ending>`` for a model of a project's ``cellclass_models``
    folder (nothing may be written there), else ``<model folder><ending>`` beside the model folder."""
    folder = Path(model_dir).expanduser().resolve()
    name = folder.name + FORMATS[fmt]
    if folder.parent.name == "cellclass_models" and (folder.parent.parent / "cellclass.json").is_file():
        return folder.parent.parent / EXPORTS_DIR / name
    return folder.parent / name


def check_format(fmt: str) -> str:
    """``fmt`` if it is a known export format; one-line :class:`ConfigError` otherwise."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    return fmt


def _reference_ids(trained: TrainedModel, project: Project, n: int) -> list[str]:
    """Test-split images first, then validation, then any: the images the model did not learn from."""
    split = trained.split
    known = set(project.image_ids)
    chosen: list[str] = []
    for part in ("test", "val", "train"):
        chosen += [i for i in split.get(part, []) if i in known and i not in chosen]
    chosen += [i for i in project.image_ids if i not in chosen]
    return chosen[:n]


def reference_images(trained: TrainedModel, project: str | os.PathLike | Project | None = None,
                     n: int = 8) -> ReferenceImages:
    """Up to ``n`` real images of the model's project (or ``project``), prepared two ways.

    Raises
    ------
    ConfigError
        When the project cannot be found or none of its images can be read.
    """
    where = project if project is not None else trained.config.get("project")
    if isinstance(where, Project):
        proj = where
    else:
        if not where or not (Path(str(where)) / "cellclass.json").is_file():
            raise ConfigError(f"{trained.path}: its project {where or '(unknown)'} is not here; give the folder "
                              "of images it was trained on with --project DIR (real images check the export)")
        proj = Project.open(where, create=False)
    size, mean, std = trained.input_size, *trained.normalisation.tensors(torch.device("cpu"))
    ids, raw, net, dtypes = [], [], [], []
    for image_id in _reference_ids(trained, proj, 4 * n):
        try:
            pix = read_image(proj.path(image_id)).pixels
        except Exception:  # noqa: BLE001 - an unreadable image is skipped, another one is taken
            continue
        pix = pix[None] if pix.ndim == 2 else pix
        if pix.shape[0] != trained.in_chans:
            continue
        raw.append(resize_image(np.nan_to_num(pix.astype(np.float32)), size))
        row = prepare_pixels(pix, size, trained.normalisation.scaling)  # exactly what predict feeds
        net.append(((torch.from_numpy(row).float()[None] - mean) / std)[0].numpy())
        ids.append(image_id)
        dtypes.append(str(pix.dtype))
        if len(ids) == n:
            break
    if not ids:
        raise ConfigError(f"{proj.root}: no image with {trained.in_chans} channel(s) could be read to check the "
                          "export; give another project with --project DIR")
    if len(set(dtypes)) > 1 and resolve_scaling(trained.normalisation.scaling, np.dtype(dtypes[0])) == "dtype":
        raise ConfigError(f"{proj.root}: the images mix pixel types ({', '.join(sorted(set(dtypes)))}); the export "
                          "needs one intensity scaling; train with --scaling percentile")
    return ReferenceImages(ids, np.stack(raw), dtypes[0], np.stack(net).astype(np.float32))


def pytorch_logits(trained: TrainedModel, x: np.ndarray) -> np.ndarray:
    """The model's logits for network input ``x`` (float32, CPU, eval mode)."""
    model = trained.model.to("cpu").eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def torchscript_bytes(trained: TrainedModel, example: np.ndarray) -> bytes:
    """The traced network as a TorchScript archive (any batch size), marked as written here."""
    model = trained.model.to("cpu").eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.from_numpy(example[:1]), check_trace=False)
    buf = io.BytesIO()
    marker = json.dumps({"software": SOFTWARE, "model": trained.name, "classes": list(trained.classes)})
    torch.jit.save(traced, buf, _extra_files={MARKER: marker})
    return buf.getvalue()


def onnx_bytes(trained: TrainedModel, example: np.ndarray) -> bytes:
    """The network as an ONNX model (opset 18) with a dynamic batch axis."""
    import onnx

    model = trained.model.to("cpu").eval()
    x = torch.from_numpy(np.concatenate([example[:1]] * 2))  # a batch of 2: the batch axis stays symbolic
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=ONNX_OPSET,
                                    dynamo=True, verbose=False)
    proto = program.model_proto
    proto.producer_name = SOFTWARE
    meta = {"classes": json.dumps(list(trained.classes)), "model": trained.name,
            "temperature": str(trained.temperature), "multi_label": str(trained.multi_label).lower()}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class _quiet:
    """Silence what the ONNX exporter prints on stdout (the CLI's stdout is JSON)."""

    def __enter__(self) -> None:
        import contextlib

        self._stack = contextlib.ExitStack()
        sink = self._stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        self._stack.enter_context(contextlib.redirect_stdout(sink))

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def onnx_logits(data: bytes | str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model through onnxruntime (CPU)."""
    import onnxruntime as ort

    source = data if isinstance(data, bytes) else str(data)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def torchscript_logits(data: bytes | str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Logits of a TorchScript archive."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    module = torch.jit.load(source, map_location="cpu").eval()
    with torch.inference_mode():
        return module(torch.from_numpy(x)).float().numpy()


def parity(reference: np.ndarray, other: np.ndarray, what: str, where: Path) -> float:
    """The largest |difference|; :class:`ModelError` when over :data:`PARITY_TOLERANCE`."""
    diff = float(np.max(np.abs(reference - other))) if reference.size else 0.0
    if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
        raise ModelError(f"{where}: the {what} export differs from the PyTorch model by {diff:.2g} on real "
                         f"images (allowed {PARITY_TOLERANCE:g}); nothing was written")
    return diff


def export_model(model: TrainedModel | str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, *,
                 project: str | os.PathLike | Project | None = None, author: str | None = None,
                 license: str = "CC-BY-4.0", progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Export ``model`` as ``'bioimageio'``, ``'onnx'`` or ``'torchscript'`` and check it on real images.

    Parameters
    ----------
    model
        A :class:`TrainedModel` or a model folder.
    out
        The file to write (default :func:`default_output`: beside the model folder).
    project
        Where the reference images come from (default: the project the model was trained on).
    author, license
        For the BioImage Model Zoo description (default author: the user's login name).
    progress
        ``progress(step, steps)`` as the export goes (tracing, ONNX, the package test).

    Raises
    ------
    ConfigError
        An unknown format, or no project images to check the export with.
    ModelError
        An export whose outputs differ from PyTorch's by more than :data:`PARITY_TOLERANCE`.
    ProjectError
        ``out`` would replace a project's file, an image or a weights file not written here.
    """
    fmt = check_format(fmt)
    with warnings.catch_warnings():  # torch.jit's deprecation notes: TorchScript is what the zoo runs
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _export(model, fmt, out, project, author, license, progress or (lambda _d, _t: None))


def _export(model: TrainedModel | str | os.PathLike, fmt: str, out: str | os.PathLike | None,
            project: str | os.PathLike | Project | None, author: str | None, license: str,
            progress: Callable[[int, int], None]) -> ExportResult:
    trained = model if isinstance(model, TrainedModel) else load_model(model)
    target = check_output_file(out if out is not None else default_output(trained.path, fmt))
    refs = reference_images(trained, project)
    expected = pytorch_logits(trained, refs.network_input)
    result = ExportResult(target, fmt, trained.path, images=list(refs.ids))
    if fmt == "bioimageio":
        from .bioimageio_export import write_package

        with tempfile.TemporaryDirectory(prefix="cellclass-export-") as tmp:
            result.parity, result.notes = write_package(trained, refs, expected, target, Path(tmp),
                                                        author=author, license=license, progress=progress)
        return result
    progress(0, 2)
    if fmt == "onnx":
        data = onnx_bytes(trained, refs.network_input)
        result.parity["onnx"] = parity(expected, onnx_logits(data, refs.network_input), "ONNX", target)
    else:
        data = torchscript_bytes(trained, refs.network_input)
        result.parity["torchscript"] = parity(expected, torchscript_logits(data, refs.network_input),
                                              "TorchScript", target)
    progress(1, 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    progress(2, 2)
    result.notes.append("the outputs are logits: divide by the temperature "
                        f"{trained.temperature:.4g}, then apply {'sigmoid' if trained.multi_label else 'softmax'}")
    return result
