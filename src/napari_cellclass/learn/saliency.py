"""What a trained model looked at: saliency maps (Grad-CAM, integrated gradients) at each image's own resolution.

- ``gradcam`` (captum's ``LayerGradCam``): the gradient-weighted activations of the backbone's last
  convolutional stage (timm's ``feature_info``; AlexNet's last convolution; otherwise the last
  ``Conv2d``). When that stage's map is smaller than :data:`MIN_GRID` pixels a side at the model's
  input size (small inputs), the deepest stage with a map at least that big is used instead.
  Backbones without a spatial feature map (vision transformers) are refused with one line.
- ``integrated-gradients`` (captum's ``IntegratedGradients``): per-pixel attributions from a
  black image to the image, summed over channels in absolute value. Works for every backbone.

Images are prepared exactly as for prediction (:func:`~.data.pixels.prepare_pixels`, the model's
normalisation), explained in float32 (no autocast) and every map is resized from the model's
input size back to the image's ``Y x X`` and scaled to [0, 1].
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ChannelMismatchError, ConfigError, ImageReadError, ModelError
from ..core.saliency_names import METHODS
from .checkpoint import TrainedModel
from .data.pixels import prepare_pixels
from .device import resolve_device
from .events import CancelToken
from .predict import Progress, as_trained_model, prediction_inputs

#: Grad-CAM steps back to an earlier stage when the last one is smaller than this a side.
MIN_GRID = 4
#: Integrated gradients: interpolation steps from the black image to the image.
IG_STEPS = 32
#: Integrated gradients: the map is divided by this percentile of its values (then clipped to 1).
IG_PERCENTILE = 99.5
_BATCH = 16


@dataclass(frozen=True)
class Saliency:
    """One image's saliency map.

    Attributes
    ----------
    image_id : the project image id (or the file path / ``array:<i>``).
    explained : the class the map explains.
    predicted : the model's top class for the image.
    probability : the model's probability of the explained class.
    method : ``gradcam`` or ``integrated-gradients``.
    map : float32 ``(Y, X)`` in [0, 1], the image's own size (1: looked at most).
    layer : the backbone layer Grad-CAM used (empty for integrated gradients).
    """

    image_id: str
    explained: str
    predicted: str
    probability: float
    method: str
    map: np.ndarray = field(repr=False)
    layer: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"image_id", "class", "predicted", "probability", "method", "layer", "shape"}`` (no pixels)."""
        return {"image_id": self.image_id, "class": self.explained, "predicted": self.predicted,
                "probability": round(float(self.probability), 6), "method": self.method, "layer": self.layer,
                "shape": list(self.map.shape)}


@dataclass
class ExplainResult:
    """The maps of :func:`explain` (iterate or index it like a list) and the images it skipped."""

    maps: list[Saliency]
    model: str
    method: str
    skipped: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Saliency]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, k: int) -> Saliency:
        return self.maps[k]


# ---------------------------------------------------------------------------- the target layer
def _candidates(net: nn.Module) -> list[str]:
    """Module names of the backbone's feature stages, shallow to deep."""
    from .models import AlexNetBackbone

    if isinstance(net, AlexNetBackbone):
        return [f"features.{i}" for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)]
    info = getattr(net, "feature_info", None)
    names = []
    if info:
        for entry in info:
            name = entry.get("module") if isinstance(entry, dict) else None
            if name:
                names.append(str(name))
    if not names:
        names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    return names


def find_target_layer(model: nn.Module, input_size: int, in_chans: int) -> tuple[str, nn.Module]:
    """The backbone layer Grad-CAM uses: ``(name, module)`` (see the module doc).

    Raises
    ------
    ModelError
        When no stage gives a ``(batch, channels, y, x)`` map (e.g. a vision transformer).
    """
    net = getattr(model, "backbone", model)
    names = _candidates(net)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if torch.is_tensor(out):
                shapes[name] = tuple(out.shape)
        hooks.append(net.get_submodule(name).register_forward_hook(hook))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    chans = {str(e["module"]): int(e["num_chs"]) for e in (getattr(net, "feature_info", None) or [])
             if isinstance(e, dict) and "module" in e and "num_chs" in e}
    spatial = [n for n in names if len(shapes.get(n, ())) == 4 and shapes[n][1] == chans.get(n, shapes[n][1])]
    if not spatial:
        label = getattr(getattr(model, "info", None), "name", type(net).__name__)
        raise ModelError(f"backbone '{label}' has no convolutional feature map for Grad-CAM (its stages give "
                         "tokens, not images); use method 'integrated-gradients' (--method integrated-gradients)")
    big = [n for n in spatial if min(shapes[n][2:]) >= MIN_GRID]
    name = big[-1] if big else spatial[-1]
    return name, net.get_submodule(name)


# ---------------------------------------------------------------------------- the maps
def _unit(m: torch.Tensor) -> torch.Tensor:
    """Each ``(B, 1, Y, X)`` map divided by its maximum (a map without signal stays 0)."""
    m = torch.nan_to_num(m.clamp_min(0), nan=0.0, posinf=0.0)
    top = m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    return (m / top).clamp(0, 1)


def gradcam_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps ``(B, 1, h, w)`` at the layer's resolution, each in [0, 1]."""
    from captum.attr import LayerGradCam

    attr = LayerGradCam(model, layer).attribute(x, target=targets.tolist(), relu_attributions=True)
    return _unit(attr.detach().float())


def integrated_gradient_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                             baseline: torch.Tensor) -> torch.Tensor:
    """Integrated-gradient maps ``(B, 1, S, S)``: |attribution| summed over channels, in [0, 1]."""
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(x, baselines=baseline.expand_as(x), target=targets.tolist(),
                                                n_steps=IG_STEPS, internal_batch_size=max(1, _BATCH * 2))
    m = attr.detach().float().abs().sum(1, keepdim=True)
    flat = m.flatten(1)
    top = torch.quantile(flat, IG_PERCENTILE / 100, dim=1).clamp_min(1e-12)
    return (m / top[:, None, None, None]).clamp(0, 1)


def to_image_size(m: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """One ``(1, 1, h, w)`` map resized to the image's ``(Y, X)``: float32 in [0, 1]."""
    from captum.attr import LayerAttribution

    shrink = m.shape[-2] > shape[0] or m.shape[-1] > shape[1]
    if shrink:
        out = F.interpolate(m, size=shape, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = LayerAttribution.interpolate(m, shape, interpolate_mode="bilinear")
    out = np.nan_to_num(out[0, 0].detach().cpu().numpy().astype(np.float32))
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------------------- explaining images
def check_method(method: str) -> str:
    """``method`` when known; a :class:`ConfigError` naming the choices otherwise."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is unknown; use one of {', '.join(METHODS)}")
    return method


def check_class(trained: TrainedModel, class_name: str | None) -> int | None:
    """The output index of ``class_name`` (None: each image's predicted class)."""
    if class_name is None:
        return None
    if class_name not in trained.classes:
        raise ConfigError(f"--class {class_name!r} is not a class of the model {trained.name}; "
                          f"use one of {', '.join(trained.classes)} (or leave it out: the predicted class)")
    return trained.classes.index(class_name)


def _prepared(items: Sequence[Any], keys: Sequence[str], trained: TrainedModel
              ) -> Iterator[tuple[str, tuple[int, int], np.ndarray | None, str]]:
    """``(key, (Y, X), row or None, reason)`` per image: the model's input, or why it could not be read."""
    scaling = trained.normalisation.scaling
    for item, key in zip(items, keys, strict=True):
        try:
            pix = item if isinstance(item, np.ndarray) else _read(item)
        except ImageReadError as exc:
            yield key, (0, 0), None, str(exc).split(": ", 1)[-1]
            continue
        pix = pix[None] if pix.ndim == 2 else pix
        if pix.ndim != 3:
            yield key, (0, 0), None, f"array of shape {pix.shape}: expected (C, Y, X) or (Y, X)"
            continue
        if pix.shape[0] != trained.in_chans:
            raise ChannelMismatchError(f"{key}: has {pix.shape[0]} channel(s) but the model takes {trained.in_chans}; "
                                       "convert the image or use a model trained on such images")
        yield key, (int(pix.shape[1]), int(pix.shape[2])), prepare_pixels(pix, trained.input_size, scaling), ""


def _read(path: Any) -> np.ndarray:
    from ..core.images import read_image

    return read_image(path).pixels


def explain(model: TrainedModel | str | os.PathLike, images: Any, *, ids: Sequence[str] | None = None,
            class_name: str | None = None, method: str = "gradcam", device: str = "auto",
            progress: Progress | None = None, cancel: CancelToken | None = None) -> ExplainResult:
    """Saliency maps: where the model looked to give (or not give) a class.

    Parameters
    ----------
    model
        A :class:`TrainedModel` or a model folder.
    images
        A :class:`~napari_cellclass.core.project.Project` or project folder (its images ``ids``,
        default all), a folder of images, an image file, a ``(C, Y, X)`` array, an
        ``(N, C, Y, X)`` stack, or a list of files/arrays.
    class_name
        The class to explain; None: each image's predicted (top) class. Multi-label models
        work the same way (the class's own sigmoid output is explained).
    method
        ``gradcam`` or ``integrated-gradients`` (see the module doc).
    progress
        ``progress(done, total)`` after each batch.

    Returns
    -------
    ExplainResult
        One :class:`Saliency` per readable image, in the given order; unreadable images in ``skipped``.

    Raises
    ------
    ConfigError
        An unknown method or class.
    ModelError
        Grad-CAM on a backbone without a spatial feature map.
    ProjectError, ChannelMismatchError
        An id that is not an image of the project; an image with another channel count.
    """
    check_method(method)
    trained = as_trained_model(model)
    wanted = check_class(trained, class_name)
    items, keys, _project = prediction_inputs(images, ids, True)
    dev = resolve_device(device)
    net = trained.model.to(dev).eval()
    layer_name, layer = find_target_layer(net, trained.input_size, trained.in_chans) if method == "gradcam" \
        else ("", None)
    mean, std = trained.normalisation.tensors(dev)  # (1, C, 1, 1)
    out: list[Saliency] = []
    skipped: dict[str, str] = {}
    batch: list[tuple[str, tuple[int, int], np.ndarray]] = []
    total = len(items)
    seen = 0

    def flush() -> None:
        x = (torch.from_numpy(np.stack([b[2] for b in batch])).to(dev).float() - mean) / std
        with torch.autocast(dev.type, enabled=False):
            with torch.no_grad():
                logits = net(x).float() / trained.temperature  # calibrated, as predict gives them
            probs = torch.sigmoid(logits) if trained.multi_label else torch.softmax(logits, 1)
            top = probs.argmax(1)
            targets = top if wanted is None else torch.full_like(top, wanted)
            if layer is not None:
                maps = gradcam_maps(net, layer, x, targets)
            else:
                maps = integrated_gradient_maps(net, x, targets, (-mean / std).float())
        for k, (key, shape, _row) in enumerate(batch):
            t = int(targets[k])
            out.append(Saliency(key, trained.classes[t], trained.classes[int(top[k])], float(probs[k, t]), method,
                                to_image_size(maps[k:k + 1], shape), layer_name))
        batch.clear()

    for key, shape, row, reason in _prepared(items, keys, trained):
        if cancel is not None and cancel.is_set():
            break
        seen += 1
        if row is None:
            skipped[key] = reason
        else:
            batch.append((key, shape, row))
        if len(batch) == _BATCH:
            flush()
            if progress is not None:
                progress(seen, total)
    if batch and not (cancel is not None and cancel.is_set()):
        flush()
    if progress is not None:
        progress(seen, total)
    return ExplainResult(out, trained.name, method, skipped)


__all__ = ["METHODS", "ExplainResult", "Saliency", "explain", "find_target_layer"]
