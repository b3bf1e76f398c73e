"""Backbone registry: MIA's backbone names mapped onto timm (and torchvision's AlexNet).

Every backbone that MIA (Microscopy Image Analyzer) offers is accepted by its MIA name and
resolved to a timm model; where timm has no exact counterpart the nearest one is used and the
``note`` says so. Any other timm model name is passed through unchanged.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import ModelError


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone name resolves to.

    Attributes
    ----------
    name : the name as asked for (MIA name or timm name), lower case.
    timm_name : the model built (timm name, or the torchvision name when ``source`` is that).
    source : ``'timm'`` or ``'torchvision'``.
    exact : True when the architecture is the one the name stands for.
    note : how the mapping differs, or where the ImageNet weights come from.
    default_input_size : the side length the ImageNet weights were trained at.
    family : the architecture family (``'ResNet'``, ``'EfficientNet'``, ...).
    imagenet : whether ImageNet weights can be fetched for it (``pretrained='imagenet'``).
    """

    name: str
    timm_name: str
    source: str
    exact: bool
    note: str
    default_input_size: int
    family: str
    imagenet: bool = True


# MIA name -> (timm name, exact, note, family). Order is MIA's documentation order.
_MIA: dict[str, tuple[str, bool, str, str]] = {
    "densenet121": ("densenet121", True, "", "DenseNet"),
    "densenet169": ("densenet169", True, "", "DenseNet"),
    "densenet201": ("densenet201", True, "", "DenseNet"),
    **{
        f"efficientnetb{i}": (
            f"tf_efficientnet_b{i}", True,
            "timm's TensorFlow port (same padding and weights as Keras)", "EfficientNet",
        )
        for i in range(8)
    },
    "inceptionv3": ("inception_v3", True, "", "Inception"),
    "inceptionresnetv2": ("inception_resnet_v2", True, "", "Inception"),
    "mobilenet": (
        "mobilenetv1_100", True, "MobileNet v1 (width 1.0); ImageNet weights trained by timm",
        "MobileNet",
    ),
    "mobilenetv2": ("mobilenetv2_100", True, "MobileNet v2 (width 1.0)", "MobileNet"),
    "nasnetlarge": ("nasnetalarge", True, "", "NasNet"),
    "nasnetmobile": (
        "mnasnet_100", False,
        "timm has no NASNet-A Mobile: uses MnasNet-B1 1.0, also a searched mobile network "
        "(4.4 M vs 5.3 M parameters)", "NasNet",
    ),
    "resnet18": ("resnet18", True, "", "ResNet"),
    "resnet34": ("resnet34", True, "", "ResNet"),
    "resnet50": ("resnet50", True, "", "ResNet"),
    "resnet101": ("resnet101", True, "", "ResNet"),
    "resnet152": ("resnet152", True, "", "ResNet"),
    "resnet50v2": (
        "resnetv2_50", False,
        "timm pre-activation ResNet v2: strides in the first block of a stage (Keras: the last)",
        "ResNet",
    ),
    "resnet101v2": (
        "resnetv2_101", False,
        "timm pre-activation ResNet v2: strides in the first block of a stage (Keras: the last)",
        "ResNet",
    ),
    "resnet152v2": (
        "resnetv2_152", False,
        "timm pre-activation ResNet v2: strides in the first block of a stage (Keras: the last); "
        "timm has no ImageNet weights for it (use a local weights file or random init)",
        "ResNet",
    ),
    "resnext50": ("resnext50_32x4d", True, "ResNeXt-50 32x4d", "ResNeXt"),
    "resnext101": ("resnext101_32x4d", True, "ResNeXt-101 32x4d", "ResNeXt"),
    "seresnet18": (
        "legacy_seresnet18", True, "original SENet implementation (the one with ImageNet weights)",
        "SE-ResNet",
    ),
    "seresnet34": (
        "legacy_seresnet34", True, "original SENet implementation (the one with ImageNet weights)",
        "SE-ResNet",
    ),
    "seresnet50": ("seresnet50", True, "", "SE-ResNet"),
    "seresnet101": (
        "legacy_seresnet101", True,
        "original SENet implementation (the one with ImageNet weights)", "SE-ResNet",
    ),
    "seresnet152": (
        "legacy_seresnet152", True,
        "original SENet implementation (the one with ImageNet weights)", "SE-ResNet",
    ),
    "seresnext50": ("seresnext50_32x4d", True, "SE-ResNeXt-50 32x4d", "SE-ResNeXt"),
    "seresnext101": ("seresnext101_32x4d", True, "SE-ResNeXt-101 32x4d", "SE-ResNeXt"),
    "senet154": ("senet154", True, "", "SENet"),
    "vgg16": ("vgg16", True, "", "VGG"),
    "vgg19": ("vgg19", True, "", "VGG"),
    "xception": ("legacy_xception", True, "Chollet's Xception as in Keras", "Xception"),
}

#: MIA's backbone names, in its documentation order.
MIA_BACKBONES: tuple[str, ...] = tuple(_MIA)

#: Listed after MIA's names: small, CPU-friendly models and the HEp-2 recipe's AlexNet.
EXTRA_BACKBONES: tuple[str, ...] = (
    "alexnet", "efficientnet_lite0", "mobilenetv3_small_100", "mobilenetv3_large_100",
    "convnext_tiny",
)

_TORCHVISION = {"alexnet": ("alexnet", 224, "AlexNet")}


def resolve_backbone(name: str) -> BackboneInfo:
    """Resolve a backbone name (MIA name, ``alexnet`` or any timm model name).

    Parameters
    ----------
    name : backbone name, case-insensitive; a timm ``name.tag`` is accepted too.

    Returns
    -------
    BackboneInfo

    Raises
    ------
    ModelError
        Unknown name; the message suggests close matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError("backbone name is empty; run 'napari-cellclass backbones' for the list")
    key = name.strip().lower()
    return _resolve(key)


@functools.cache
def _resolve(key: str) -> BackboneInfo:
    import timm

    if key in _TORCHVISION:
        tv_name, size, family = _TORCHVISION[key]
        return BackboneInfo(key, tv_name, "torchvision", True,
                            "torchvision AlexNet (HEp-2 fine-tuning recipe)", size, family)
    if key in _MIA:
        timm_name, exact, note, family = _MIA[key]
    elif timm.is_model(key):
        timm_name, exact, note, family = key, True, "timm model", _timm_family(key)
    else:
        raise ModelError(f"unknown backbone '{key}'{_suggest(key)}")
    cfg = _pretrained_cfg(timm_name)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    has_weights = bool(cfg is not None and (cfg.hf_hub_id or cfg.url))
    return BackboneInfo(key, timm_name, "timm", exact, note, size, family, has_weights)


def _pretrained_cfg(timm_name: str) -> Any:
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(timm_name)
    except Exception:  # noqa: BLE001 - timm raises different errors across versions
        return None


def _timm_family(timm_name: str) -> str:
    try:
        from timm.models._registry import _model_to_module, get_arch_name

        return str(_model_to_module.get(get_arch_name(timm_name), "timm"))
    except Exception:  # noqa: BLE001 - private timm API; the family is only informative
        return "timm"


def _suggest(key: str) -> str:
    import timm

    known = list(_MIA) + list(_TORCHVISION)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if len(close) < 3:
        more = difflib.get_close_matches(key, timm.list_models(), n=3 - len(close), cutoff=0.75)
        close += [m for m in more if m not in close]
    if close:
        return f"; did you mean {', '.join(close)}?"
    return "; run 'napari-cellclass backbones' for the list"


@functools.cache
def parameter_count(name: str) -> float:
    """Number of parameters of the backbone with a 1000-way classifier, in millions.

    Built on PyTorch's ``meta`` device: no memory, no weights, a fraction of a second.
    """
    import torch

    info = resolve_backbone(name)
    with torch.device("meta"):
        if info.source == "torchvision":
            import torchvision

            net = getattr(torchvision.models, info.timm_name)(weights=None)
        else:
            import timm

            net = timm.create_model(info.timm_name, pretrained=False)
    return round(sum(p.numel() for p in net.parameters()) / 1e6, 2)


def list_backbones(params: bool = True) -> list[dict[str, Any]]:
    """MIA's backbones first, then a few extras; one dict per backbone.

    Parameters
    ----------
    params : also count parameters (millions; a few seconds the first time, then cached).

    Returns
    -------
    list of dict
        Keys: name, timm_name, source, exact, note, family, default_input_size, imagenet,
        mia (bool) and, with ``params``, params_m.
    """
    rows = []
    for name in MIA_BACKBONES + EXTRA_BACKBONES:
        info = resolve_backbone(name)
        row = asdict(info)
        row["mia"] = name in _MIA
        if params:
            row["params_m"] = parameter_count(name)
        rows.append(row)
    return rows


def backbones_command_result() -> dict[str, Any]:
    """What the ``backbones`` command prints with ``--json``."""
    return {"ok": True, "backbones": list_backbones(params=True)}


def backbones_human(result: dict[str, Any]) -> str:
    """The ``backbones`` table for people."""
    lines = [f"{'name':<22}{'timm model':<24}{'params (M)':>11}{'size':>6}  note"]
    for row in result["backbones"]:
        mark = "" if row["exact"] else "≈ "
        note = mark + row["note"] + ("" if row["imagenet"] else " [no ImageNet weights]")
        lines.append(f"{row['name']:<22}{row['timm_name']:<24}{row.get('params_m', ''):>11}"
                     f"{row['default_input_size']:>6}  {note}")
    lines.append("Any other timm model name works too (timm.list_models()).")
    return "\n".join(lines)
