"""A trained model as a BioImage Model Zoo package (model spec 0.5), tested by bioimageio.core before it is written."""
from __future__ import annotations

import getpass
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.errors import ModelError
from .backbones import resolve_backbone
from .data.pixels import PERCENTILES, resolve_scaling
from .export import (
    MIN_SIDE,
    ReferenceImages,
    onnx_bytes,
    onnx_logits,
    parity,
    pytorch_logits,
    torchscript_bytes,
    torchscript_logits,
)

if TYPE_CHECKING:
    from .checkpoint import TrainedModel

__all__ = ["package_input", "write_package"]

#: scale_range's epsilon (the spec's default): ``(x - lo) / (hi - lo + EPS)``.
EPS = 1e-6
TIMM_CITATION = ("Wightman, R. PyTorch Image Models (timm). GitHub (2019).", "10.5281/zenodo.4414861")
ARCHITECTURE_FILE = "cellclass_architecture.py"
ARCHITECTURE_SOURCE = '''"""A napari-cellclass network: a timm backbone, then dropout + linear."""
import timm
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """Dropout + linear layer on the pooled features (``drop`` holds no weights)."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x):
        return self.fc(self.drop(x))


class CellclassNet(nn.Module):
    """``timm_name`` with ``in_chans`` input channels and ``num_classes`` logits; images of any size
    are first resized to ``input_size`` (bilinear, antialiased, the whole field of view)."""

    def __init__(self, timm_name: str, in_chans: int, num_classes: int, num_features: int, input_size: int,
                 dropout: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.backbone = timm.create_model(timm_name, pretrained=False, in_chans=in_chans, num_classes=0)
        self.head = Head(num_features, num_classes, dropout)

    def forward(self, x):
        size = (self.input_size, self.input_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.backbone(x))
'''


def _spec() -> Any:
    from bioimageio.spec.model import v0_5

    return v0_5


def scaling_of(trained: TrainedModel, refs: ReferenceImages) -> tuple[str, float]:
    """The resolved intensity scaling and, for ``'dtype'``, the divisor of the pixel values."""
    dtype = np.dtype(refs.dtype)
    mode = resolve_scaling(trained.normalisation.scaling, dtype)
    return mode, float(np.iinfo(dtype).max) if mode == "dtype" and np.issubdtype(dtype, np.integer) else 1.0


def package_input(raw: np.ndarray, mode: str, divisor: float, mean: Sequence[float], std: Sequence[float]
                  ) -> np.ndarray:
    """The network input the package's pre-processing makes of ``raw`` ``(N, C, Y, X)`` float32."""
    x = raw.astype(np.float64)
    if mode == "percentile":
        lo, hi = np.percentile(x, PERCENTILES, axis=(2, 3), keepdims=True)
        x = (x - lo) / (hi - lo + EPS)
    m = np.asarray(mean, np.float64)[None, :, None, None] * divisor
    s = np.asarray(std, np.float64)[None, :, None, None] * divisor
    return ((x - m) / s).astype(np.float32)


def _preprocessing(v: Any, mode: str, divisor: float, mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    ops: list[Any] = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))]
    if mode == "percentile":
        ops.append(v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
            axes=[v.AxisId("y"), v.AxisId("x")], min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1],
            eps=EPS)))
    ops.append(v.FixedZeroMeanUnitVarianceDescr(kwargs=v.FixedZeroMeanUnitVarianceAlongAxisKwargs(
        mean=[float(m) * divisor for m in mean], std=[float(s) * divisor for s in std], axis=v.AxisId("channel"))))
    return ops


def _postprocessing(v: Any, temperature: float, multi_label: bool) -> list[Any]:
    ops: list[Any] = []
    if abs(temperature - 1.0) > 1e-9:
        ops.append(v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=1.0 / float(temperature))))
    ops.append(v.SigmoidDescr() if multi_label else v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=v.AxisId("channel"))))
    return ops


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "_", text).strip() or "cellclass"
    if len(name) < 5:
        name = f"{name} classifier"
    return name[:64]


def _identifiers(names: Sequence[str], bad: str, prefix: str, fallback: str) -> list[str]:
    """``names`` as distinct spec identifiers: ``bad`` characters become ``_``, a name that does not start
    with a letter gets ``prefix``, an empty one ``fallback<i>``."""
    out: list[str] = []
    for i, name in enumerate(names):
        ident = re.sub(bad, "_", str(name)).strip("_") or f"{fallback}{i}"
        if not ident[0].isalpha():
            ident = f"{prefix}{ident}"
        while ident in out:
            ident += "_"
        out.append(ident)
    return out


def _channel_names(trained: TrainedModel) -> list[str]:
    """The project's channel names as identifiers (``channel<i>`` when the model has none)."""
    names = trained.config.get("channel_names") or []
    if len(names) != trained.in_chans:
        names = [f"channel{i}" for i in range(trained.in_chans)]
    return _identifiers(names, r"[^A-Za-z0-9_]", "c", "channel")


def _class_identifiers(classes: Sequence[str]) -> list[str]:
    """Class names as the spec's channel identifiers allow them (letters, digits, ``_`` and ``-``)."""
    return _identifiers(classes, r"[^A-Za-z0-9_\-]", "c_", "class")


#: Papers of backbone families (timm name prefix -> citation), newest prefixes first where they overlap.
PAPERS = (
    ("mobilenetv3", "Howard, A. et al. Searching for MobileNetV3. ICCV (2019).", "https://arxiv.org/abs/1905.02244"),
    ("mobilenetv2", "Sandler, M. et al. MobileNetV2: Inverted residuals and linear bottlenecks. CVPR (2018).",
     "https://arxiv.org/abs/1801.04381"),
    ("efficientnet", "Tan, M., Le, Q. EfficientNet: Rethinking model scaling for convolutional neural networks. "
                     "ICML (2019).", "https://arxiv.org/abs/1905.11946"),
    ("tf_efficientnet", "Tan, M., Le, Q. EfficientNet: Rethinking model scaling for convolutional neural "
                        "networks. ICML (2019).", "https://arxiv.org/abs/1905.11946"),
    ("resnet", "He, K. et al. Deep residual learning for image recognition. CVPR (2016).",
     "https://arxiv.org/abs/1512.03385"),
    ("resnext", "Xie, S. et al. Aggregated residual transformations for deep neural networks. CVPR (2017).",
     "https://arxiv.org/abs/1611.05431"),
    ("convnext", "Liu, Z. et al. A ConvNet for the 2020s. CVPR (2022).", "https://arxiv.org/abs/2201.03545"),
    ("densenet", "Huang, G. et al. Densely connected convolutional networks. CVPR (2017).",
     "https://arxiv.org/abs/1608.06993"),
    ("vgg", "Simonyan, K., Zisserman, A. Very deep convolutional networks for large-scale image recognition. "
            "ICLR (2015).", "https://arxiv.org/abs/1409.1556"),
    ("regnet", "Radosavovic, I. et al. Designing network design spaces. CVPR (2020).",
     "https://arxiv.org/abs/2003.13678"),
    ("vit", "Dosovitskiy, A. et al. An image is worth 16x16 words: Transformers for image recognition at scale. "
            "ICLR (2021).", "https://arxiv.org/abs/2010.11929"),
    ("deit", "Touvron, H. et al. Training data-efficient image transformers & distillation through attention. "
             "ICML (2021).", "https://arxiv.org/abs/2012.12877"),
    ("inception_v3", "Szegedy, C. et al. Rethinking the Inception architecture for computer vision. CVPR (2016).",
     "https://arxiv.org/abs/1512.00567"),
    ("alexnet", "Krizhevsky, A., Sutskever, I., Hinton, G. E. ImageNet classification with deep convolutional "
                "neural networks. NeurIPS (2012).", "https://papers.nips.cc/paper/4824"),
)


def _citations(v: Any, trained: TrainedModel) -> list[Any]:
    """timm, and the backbone family's paper when it is known."""
    text, doi = TIMM_CITATION
    cites = [v.CiteEntry(text=text, doi=v.Doi(doi))]
    info = resolve_backbone(trained.backbone)
    name = (info.timm_name or info.name).split(".")[0].lower()
    for prefix, paper, url in PAPERS:
        if name.startswith(prefix):
            cites.append(v.CiteEntry(text=paper, url=v.HttpUrl(url)))
            break
    return cites


def _metrics_lines(trained: TrainedModel) -> list[str]:
    best = trained.config.get("best_metrics") or {}
    lines = [f"Measured by napari-cellclass on the model's validation images (n = {best.get('n', '?')}, "
             f"epoch {trained.config.get('best_epoch', '?')}), never used to fit the weights:", ""]
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"):
        if isinstance(best.get(key), (int, float)):
            lines.append(f"- {key.replace('_', ' ')}: {best[key]:.4f}")
    per_class = best.get("per_class") or {}
    if per_class:
        lines += ["", "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        for name, m in per_class.items():
            lines.append(f"| {name} | {m.get('precision', 0):.3f} | {m.get('recall', 0):.3f} | "
                         f"{m.get('f1', 0):.3f} | {m.get('support', 0)} |")
    cal = trained.calibration
    if cal:
        lines += ["", f"Calibration: temperature {cal.get('temperature', 1):.4g} fitted on {cal.get('n', '?')} "
                      f"validation images; expected calibration error {cal.get('ece_before', float('nan')):.3f} -> "
                      f"{cal.get('ece_after', float('nan')):.3f} ({cal.get('bins', 15)} bins)."]
    split = trained.split
    lines += ["", "Images per split: " + ", ".join(f"{k} {len(v)}" for k, v in split.items() if isinstance(v, list))]
    return lines


def _readme(trained: TrainedModel, classes: Sequence[str], idents: Sequence[str], channels: Sequence[str],
            mode: str, divisor: float) -> str:
    info = resolve_backbone(trained.backbone)
    scale = ("each channel's 0.5 and 99.8 percentiles of the image mapped to 0 and 1 (`scale_range`, per image)"
             if mode == "percentile" else f"pixel values divided by {divisor:g}")
    task = "multi-label (sigmoid per class)" if trained.multi_label else "single-label (softmax over the classes)"
    lines = [f"# {trained.name}", "",
             f"An image classifier trained with napari-cellclass: {info.name} ({info.timm_name}), {task}.", "",
             "## Input", "",
             f"One image of {trained.in_chans} channel(s) ({', '.join(channels)}) of any size (at least "
             f"{MIN_SIDE} x {MIN_SIDE} pixels). Pre-processing, on the image at its own resolution: {scale}, "
             "then each channel's training mean and standard deviation (`fixed_zero_mean_unit_variance`). "
             f"The network then resizes it to {trained.input_size} x {trained.input_size} pixels (bilinear, "
             "antialiased, the whole field of view), exactly as napari-cellclass does.", "",
             "## Output", "",
             "One probability per class (the output's channel names):", ""]
    lines += [f"- `{i}`: {c}" for c, i in zip(classes, idents, strict=True)]
    lines += ["", f"The weights give logits; the post-processing divides them by the calibration temperature "
                  f"{trained.temperature:.4g} and applies {'sigmoid' if trained.multi_label else 'softmax'}."]
    if trained.multi_label:
        th = ", ".join(f"{c} {t:.3f}" for c, t in zip(classes, np.atleast_1d(trained.thresholds), strict=False))
        lines.append(f"A class is present when its probability reaches its threshold: {th}.")
    lines += ["", "## Validation", ""] + _metrics_lines(trained)
    tc = trained.config.get("train_config", {})
    shown = ("backbone", "pretrained", "input_size", "epochs", "batch_size", "lr", "optimizer", "loss", "fine_tune")
    lines += ["", "## Training", "",
              f"Saved {trained.config.get('saved', '?')}; settings: "
              + ", ".join(f"{k} {json.dumps(tc[k])}" for k in shown if k in tc)
              + ". The full training record (every setting, the split's file lists, the metrics per epoch) "
                "is attached as `cellclass_config.json`."]
    return "\n".join(lines) + "\n"


CHANNEL_COLOURS = ((0.2, 0.4, 1.0), (0.1, 1.0, 0.2), (1.0, 0.2, 0.2), (1.0, 0.2, 1.0), (1.0, 1.0, 0.2), (0.2, 1.0, 1.0))


def composite(raw: np.ndarray) -> np.ndarray:
    """``(C, Y, X)`` -> ``(Y, X, 3)`` in [0, 1]: grey, RGB, or each channel stretched and coloured
    (blue, green, red, ...) and added."""
    from .saliency_files import display_rgb

    if raw.shape[0] in (1, 3):
        return display_rgb(raw)
    out = np.zeros((*raw.shape[1:], 3), np.float32)
    for c in range(raw.shape[0]):
        out += display_rgb(raw[c:c + 1]) * np.asarray(CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)], np.float32)
    return np.clip(out, 0, 1)


def _covers(refs: ReferenceImages, probs: np.ndarray, classes: Sequence[str], folder: Path) -> Path:
    """A 2:1 PNG of up to eight reference images (two rows), each titled with its predicted class."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.size": 8}):
        fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
        axes = np.atleast_1d(fig.subplots(2, 4)).ravel()
        for ax in axes:
            ax.axis("off")
        for i in range(min(8, len(refs.ids))):
            axes[i].imshow(composite(refs.raw[i]), interpolation="nearest")
            top = int(np.argmax(probs[i]))
            axes[i].set_title(f"{classes[top]} ({probs[i, top]:.2f})")
    path = folder / "cover.png"
    fig.savefig(path, format="png", metadata={"Software": "napari-cellclass"})
    return path


def _weights(v: Any, trained: TrainedModel, files: dict[str, Path], folder: Path) -> tuple[Any, list[str]]:
    notes: list[str] = []
    version = v.Version(torch.__version__.split("+")[0])
    info = resolve_backbone(trained.backbone)
    head = trained.config.get("train_config", {}).get("head", "pool")
    state = None
    if info.source == "timm" and head == "pool":
        (folder / ARCHITECTURE_FILE).write_text(ARCHITECTURE_SOURCE, encoding="utf-8")
        env = folder / "environment.yaml"
        import timm

        env.write_text("name: cellclass\nchannels: [conda-forge]\ndependencies:\n"
                       f"  - pytorch>={version}\n  - pip\n  - pip:\n    - timm=={timm.__version__}\n", encoding="utf-8")
        torch.save(trained.model.to("cpu").state_dict(), folder / "weights.pt")
        state = v.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", pytorch_version=version, dependencies=v.FileDescr(source=env),
            architecture=v.ArchitectureFromFileDescr(
                source=folder / ARCHITECTURE_FILE, callable=v.Identifier("CellclassNet"),
                kwargs={"timm_name": info.timm_name, "in_chans": trained.in_chans,
                        "num_classes": len(trained.classes),
                        "num_features": int(trained.model.head.fc.in_features),
                        "input_size": int(trained.input_size),
                        "dropout": float(trained.config.get("train_config", {}).get("dropout", 0.0))}))
    else:
        notes.append(f"no pytorch_state_dict weights: the {info.name} network with the '{head}' head has no "
                     "stand-alone source; TorchScript and ONNX hold it")
    parent = "pytorch_state_dict" if state is not None else None
    weights = v.WeightsDescr(
        pytorch_state_dict=state,
        torchscript=v.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=version, parent=parent),
        onnx=v.OnnxWeightsDescr(source=files["onnx"], opset_version=18, parent=parent or "torchscript"))
    return weights, notes


def _described(make: Any, target: Path, **fields: Any) -> Any:
    """``make(**fields)``; a description the spec refuses is one :class:`ModelError` line, not pydantic's report."""
    from pydantic import ValidationError

    try:
        return make(**fields)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "description"
        raise ModelError(f"{target}: the zoo's model spec refuses the package's {where} "
                         f"({str(first.get('msg', exc))[:200]}); nothing was written") from None


def _test_package(path: Path) -> None:
    """Run bioimageio.core's model test (test tensors reproduced by every weight format); ModelError if not."""
    from bioimageio.core import test_model

    summary = test_model(path, devices=["cpu"])
    if summary.status != "passed":
        failed = [d for d in summary.details if d.status == "failed"]
        first = failed[0] if failed else None
        why = f"{first.name}: {'; '.join(str(e.msg) for e in first.errors)[:300]}" if first else summary.status
        raise ModelError(f"{path}: bioimageio.core's model test failed ({why}); nothing was written")


def write_package(trained: TrainedModel, refs: ReferenceImages, target: Path, folder: Path, *,
                  author: str | None = None, license: str = "CC-BY-4.0",
                  progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], list[str]]:
    """Build, test and write the package ``target`` (a zip); returns ``(parity per weights format, notes)``.

    ``folder`` is scratch space.
    """
    from bioimageio.spec import save_bioimageio_package

    step = progress or (lambda _d, _t: None)
    step(0, 4)
    v = _spec()
    mode, divisor = scaling_of(trained, refs)
    mean, std = trained.normalisation.mean, trained.normalisation.std
    files = {"torchscript": folder / "weights.torchscript.pt", "onnx": folder / "weights.onnx"}
    ts, ox = torchscript_bytes(trained, refs), onnx_bytes(trained, refs)
    files["torchscript"].write_bytes(ts)
    files["onnx"].write_bytes(ox)
    step(1, 4)
    checks = {"torchscript": parity(trained, refs, lambda x: torchscript_logits(ts, x), "TorchScript", target),
              "onnx": parity(trained, refs, lambda x: onnx_logits(ox, x), "ONNX", target)}

    def probabilities_of(raw: np.ndarray) -> np.ndarray:  # what the package must answer for raw (N, C, H, W)
        x = package_input(raw, mode, divisor, mean, std)
        return pytorch_logits(trained, x, probabilities=True)

    # The test tensors: one real image, at its own size, as the package receives it, and the answer.
    test_input = refs.raw[0][None].astype(np.float32)
    probs = probabilities_of(test_input)
    np.save(folder / "test_input.npy", test_input, allow_pickle=False)
    np.save(folder / "test_output.npy", probs.astype(np.float32), allow_pickle=False)
    classes = list(trained.classes)
    idents, channels = _class_identifiers(classes), _channel_names(trained)
    cover = _covers(refs, np.concatenate([probabilities_of(r[None]) for r in refs.raw]), classes, folder)
    (folder / "README.md").write_text(_readme(trained, classes, idents, channels, mode, divisor), encoding="utf-8")
    shutil.copyfile(trained.path / "config.json", folder / "cellclass_config.json")
    size = trained.input_size
    inputs = [v.InputTensorDescr(
        id=v.TensorId("input"),
        description=f"{trained.in_chans}-channel image of any size (the network resizes it to {size} x {size})",
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in channels]),
              v.SpaceInputAxis(id=v.AxisId("y"), size=v.ParameterizedSize(min=MIN_SIDE, step=1)),
              v.SpaceInputAxis(id=v.AxisId("x"), size=v.ParameterizedSize(min=MIN_SIDE, step=1))],
        test_tensor=v.FileDescr(source=folder / "test_input.npy"),
        data=v.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_preprocessing(v, mode, divisor, mean, std))]
    outputs = [v.OutputTensorDescr(
        id=v.TensorId("probabilities"), description="one probability per class: " + ", ".join(classes),
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(i) for i in idents])],
        test_tensor=v.FileDescr(source=folder / "test_output.npy"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=_postprocessing(v, trained.temperature, trained.multi_label))]
    weights, notes = _weights(v, trained, files, folder)
    info = resolve_backbone(trained.backbone)
    descr = _described(v.ModelDescr, target,
        name=_safe_name(trained.name),
        description=(f"Classifies {trained.in_chans}-channel microscopy images into {len(classes)} classes "
                     f"({', '.join(classes)})"[:500] + f" with a {info.name} network trained in napari-cellclass."),
        authors=[v.Author(name=(author or _login()).replace("/", "-"))],  # the spec allows no slash
        cite=_citations(v, trained),
        license=v.LicenseId(license),
        tags=["classification", "image-classification", "2d", "microscopy", "napari-cellclass", info.name,
              "pytorch", "onnx"],
        documentation=v.FileDescr(source=folder / "README.md"),
        covers=[v.FileDescr(source=cover)],
        attachments=[v.FileDescr(source=folder / "cellclass_config.json")],
        inputs=inputs, outputs=outputs, weights=weights,
        config=v.Config(bioimageio=v.BioimageioConfig(), **{"napari-cellclass": {
            "classes": classes, "multi_label": trained.multi_label, "temperature": trained.temperature,
            "thresholds": np.atleast_1d(trained.thresholds).tolist(), "input_size": size,
            "normalisation": trained.normalisation.to_json()}}))
    scratch = folder / "package.zip"
    save_bioimageio_package(descr, output_path=scratch)
    step(2, 4)
    _test_package(scratch)
    step(3, 4)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(scratch, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    step(4, 4)
    return checks, notes


def _login() -> str:
    try:
        return getpass.getuser() or "napari-cellclass user"
    except Exception:  # noqa: BLE001 - no login name (a container): a placeholder the user can change
        return "napari-cellclass user"
