"""Export a trained model as ONNX, TorchScript or a BioImage Model Zoo package, checked on real images.

Every format holds :class:`ExportNet`: the trained network behind a resize of its input (any
height and width) to the model's input size, bilinear and antialiased as predict resizes. So an
image is scaled and normalised at its own resolution, as here, and the export resizes it. ONNX and
TorchScript files end with the calibration temperature and softmax (sigmoid for multi-label) and
give probabilities; the zoo package's weights give logits and its post-processing does the rest.
Parity is checked on probabilities, the numbers a user reads.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.atomic import atomic_write_bytes
from ..core.errors import ConfigError, ModelError
from ..core.images import read_image
from ..core.outputs import SOFTWARE, TORCHSCRIPT_MARK, check_output_file
from ..core.project import Project
from .checkpoint import TrainedModel, load_model
from .data.pixels import resize_image, resolve_scaling, scale_intensity

__all__ = ["FORMATS", "ExportNet", "ExportResult", "ReferenceImages", "default_output", "export_model",
           "reference_images"]

#: Export formats and the file name ending each one gets by default.
FORMATS = {"bioimageio": ".bioimageio.zip", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
#: ONNX operator set (the dynamo exporter needs >= 18; the zoo needs >= 7).
ONNX_OPSET = 18
#: Largest difference allowed between an export's probabilities and PyTorch's on the reference images.
PARITY_TOLERANCE = 1e-4
#: The TorchScript archive's extra file that marks it as written by this program (see core.outputs).
MARKER = TORCHSCRIPT_MARK.split("/", 1)[1]
INPUT_NAME = "input"
OUTPUT_NAMES = {False: "logits", True: "probabilities"}


#: The smallest image side an export takes (it resizes any larger or smaller image to its input size).
MIN_SIDE = 16


class ExportNet(torch.nn.Module):
    """``net`` behind a resize of ``(N, C, H, W)`` input to ``size`` x ``size`` (bilinear, antialiased,
    the whole field of view, as predict resizes; antialiasing changes nothing when enlarging)."""

    def __init__(self, net: torch.nn.Module, size: int, temperature: float | None = None,
                 multi_label: bool = False) -> None:
        super().__init__()
        self.net = net
        self.size = int(size)
        self.temperature = temperature  # None: logits out; else probabilities of logits / temperature
        self.multi_label = multi_label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or probabilities) of images of any size."""
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                            antialias=True)
        z = self.net(x)
        if self.temperature is None:
            return z
        z = z / self.temperature
        return torch.sigmoid(z) if self.multi_label else torch.softmax(z, dim=1)


@dataclass
class ReferenceImages:
    """Real images to check an export with, at their own size: raw, and scaled + normalised."""

    ids: list[str]
    raw: list[np.ndarray]  # (C, H, W) float32 each: intensities untouched
    dtype: str  # the images' pixel type (decides the 'auto' intensity scaling)
    network_input: list[np.ndarray]  # (C, H, W) float32 each: scaled and normalised, not resized


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely the export matches the PyTorch model."""

    path: Path
    format: str
    model: Path
    parity: dict[str, float] = field(default_factory=dict)  # weights format -> largest |probability difference|
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


def check_license(license: str) -> str:
    """``license`` if it is an SPDX licence id the zoo accepts; one-line :class:`ConfigError` otherwise."""
    from bioimageio.spec.model.v0_5 import LicenseId
    from pydantic import ValidationError

    try:
        LicenseId(license)
    except ValidationError:
        raise ConfigError(f"licence {license!r} is not an SPDX licence id; use e.g. CC-BY-4.0, CC0-1.0, MIT or "
                          "BSD-3-Clause (https://spdx.org/licenses)") from None
    return license


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
    norm = trained.normalisation
    mean = np.asarray(norm.mean, np.float32)[:, None, None]
    std = np.asarray(norm.std, np.float32)[:, None, None]
    ids, raw, net, dtypes = [], [], [], []
    for image_id in _reference_ids(trained, proj, 4 * n):
        try:
            pix = read_image(proj.path(image_id)).pixels
        except Exception:  # noqa: BLE001 - an unreadable image is skipped, another one is taken
            continue
        pix = pix[None] if pix.ndim == 2 else pix
        if pix.shape[0] != trained.in_chans or min(pix.shape[1:]) < MIN_SIDE:
            continue
        raw.append(np.nan_to_num(pix.astype(np.float32)))
        net.append(((scale_intensity(pix, norm.scaling) - mean) / std).astype(np.float32))
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
    return ReferenceImages(ids, raw, dtypes[0], net)


def export_net(trained: TrainedModel, probabilities: bool = False) -> ExportNet:
    """The exported module of ``trained`` (CPU, eval mode): logits, or calibrated probabilities."""
    return ExportNet(trained.model.to("cpu").eval(), trained.input_size,
                     trained.temperature if probabilities else None, trained.multi_label).eval()


def pytorch_logits(trained: TrainedModel, x: np.ndarray, probabilities: bool = False) -> np.ndarray:
    """Outputs of :class:`ExportNet` for scaled, normalised images ``x`` ``(N, C, H, W)`` of any size."""
    with torch.inference_mode():
        net = export_net(trained, probabilities)
        return net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).float().numpy()


def calibrated(trained: TrainedModel, logits: np.ndarray) -> np.ndarray:
    """Probabilities of ``logits``: divided by the temperature, then softmax (sigmoid for multi-label)."""
    z = torch.from_numpy(np.asarray(logits, np.float32)) / float(trained.temperature)
    return (torch.sigmoid(z) if trained.multi_label else torch.softmax(z, dim=1)).numpy()


def _metadata(trained: TrainedModel, probabilities: bool) -> dict[str, Any]:
    """What a user of the file needs: classes, output kind, calibration, how to prepare the input."""
    return {"model": trained.name, "classes": list(trained.classes), "output": OUTPUT_NAMES[probabilities],
            "multi_label": trained.multi_label, "temperature": trained.temperature,
            "thresholds": np.atleast_1d(trained.thresholds).tolist(), "input_size": trained.input_size,
            "normalisation": trained.normalisation.to_json()}


def _example(refs: ReferenceImages) -> torch.Tensor:
    """A batch of two copies of the first reference image (the batch axis stays symbolic)."""
    return torch.from_numpy(np.stack([refs.network_input[0]] * 2))


def torchscript_bytes(trained: TrainedModel, refs: ReferenceImages, probabilities: bool = False) -> bytes:
    """The traced :class:`ExportNet` as a TorchScript archive (any batch and image size), marked as written here."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(export_net(trained, probabilities), _example(refs), check_trace=False)
    buf = io.BytesIO()
    marker = json.dumps({"software": SOFTWARE, **_metadata(trained, probabilities)})
    torch.jit.save(traced, buf, _extra_files={MARKER: marker})
    return buf.getvalue()


def onnx_bytes(trained: TrainedModel, refs: ReferenceImages, probabilities: bool = False) -> bytes:
    """:class:`ExportNet` as an ONNX model (opset 18) with dynamic batch, height and width axes."""
    import onnx

    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=MIN_SIDE, max=1 << 16),
            3: torch.export.Dim("width", min=MIN_SIDE, max=1 << 16)}
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(export_net(trained, probabilities), (_example(refs),), input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAMES[probabilities]], dynamic_shapes=(dims,),
                                    opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    proto = program.model_proto
    proto.producer_name = SOFTWARE
    for key, value in _metadata(trained, probabilities).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what the ONNX exporter prints on stdout (the CLI's stdout is JSON)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


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


def parity(trained: TrainedModel, refs: ReferenceImages, run: Callable[[np.ndarray], np.ndarray], what: str,
           where: Path, probabilities: bool = False) -> float:
    """The largest difference of probabilities between ``run`` (giving probabilities, or logits that are
    calibrated first) and PyTorch over the reference images, one by one (each at its own size) and as
    one batch at the input size; :class:`ModelError` over the tolerance."""
    size = trained.input_size
    inputs = [x[None] for x in refs.network_input]
    inputs.append(np.stack([resize_image(x, size) for x in refs.network_input]))
    prob = (lambda z: z) if probabilities else (lambda z: calibrated(trained, z))  # noqa: E731
    diff = max(float(np.max(np.abs(prob(pytorch_logits(trained, x, probabilities)) - prob(run(x)))))
               for x in inputs)
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
    if fmt == "bioimageio":
        check_license(license)
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
    result = ExportResult(target, fmt, trained.path, images=list(refs.ids))
    if fmt == "bioimageio":
        from .bioimageio_export import write_package

        with tempfile.TemporaryDirectory(prefix="cellclass-export-") as tmp:
            result.parity, result.notes = write_package(trained, refs, target, Path(tmp),
                                                        author=author, license=license, progress=progress)
        return result
    progress(0, 2)
    if fmt == "onnx":
        data = onnx_bytes(trained, refs, probabilities=True)
        result.parity["onnx"] = parity(trained, refs, lambda x: onnx_logits(data, x), "ONNX", target, True)
    else:
        data = torchscript_bytes(trained, refs, probabilities=True)
        result.parity["torchscript"] = parity(trained, refs, lambda x: torchscript_logits(data, x), "TorchScript",
                                              target, True)
    progress(1, 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    progress(2, 2)
    result.notes.append(f"input: images of any size >= {MIN_SIDE} px, scaled and normalised as the model's "
                        f"config.json says (resized to {trained.input_size} px inside); output: probabilities "
                        f"({'sigmoid per class' if trained.multi_label else 'softmax'} of the logits / temperature "
                        f"{trained.temperature:.4g})")
    return result
