"""Classification models: a backbone (image -> pooled features) and a small head (-> logits).

``build_model`` makes one from any backbone name of :mod:`.backbones`, for any number of input
channels, with random, ImageNet or local-file weights, and returns a :class:`LoadReport` that
says exactly what was loaded.

Freezing: ``set_backbone_trainable(model, False)`` stops gradients in the backbone *and* keeps its
BatchNorm layers in eval mode (running statistics frozen) for as long as it is frozen, also
across later ``model.train()`` calls (:meth:`CellClassifier.train` takes care of it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelError, WeightsError
from .backbones import BackboneInfo, resolve_backbone
from .pretrained import LoadReport, adapt_stem, load_into, match_state_dict, read_state_dict

HEADS = ("pool", "classic")


class LinearHead(nn.Module):
    """Dropout + linear layer on a pooled feature vector."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of pooled features."""
        return self.fc(self.drop(x))


class AlexNetBackbone(nn.Module):
    """torchvision's AlexNet up to its pooled features (``pool``) or its fc7 (``classic``).

    Attribute names follow torchvision, so its state dicts load by name.
    """

    def __init__(self, in_chans: int = 3, classic: bool = False) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.alexnet(weights=None)
        if in_chans != 3:
            old = net.features[0]
            net.features[0] = nn.Conv2d(in_chans, old.out_channels, old.kernel_size,
                                        old.stride, old.padding)
        self.features = net.features
        self.classic = classic
        if classic:
            self.avgpool = net.avgpool
            self.classifier = nn.Sequential(*list(net.classifier.children())[:-1])
            self.num_features = 4096
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.num_features = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of a batch."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x) if self.classic else x


class CellClassifier(nn.Module):
    """``backbone`` (image -> feature vector) followed by ``head`` (features -> logits).

    Attributes
    ----------
    info : the resolved :class:`BackboneInfo`.
    num_features, num_classes, in_chans, head_kind, dropout : as built.
    backbone_frozen : set by :func:`set_backbone_trainable`; while True, ``train()`` keeps the
        backbone's BatchNorm layers in eval mode.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, info: BackboneInfo,
                 num_features: int, num_classes: int, in_chans: int, head_kind: str,
                 dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.info = info
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.head_kind = head_kind
        self.dropout = dropout
        self.backbone_frozen = False

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """Arguments that rebuild this architecture with ``build_model`` (for config.json)."""
        return {"backbone": self.info.name, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "head": self.head_kind, "dropout": self.dropout}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vectors, shape ``(batch, num_features)``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(batch, num_classes)``."""
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> CellClassifier:
        """Like ``nn.Module.train``, but a frozen backbone's BatchNorm stays in eval mode."""
        super().train(mode)
        if mode and self.backbone_frozen:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def backbone_parameters(model: CellClassifier) -> list[nn.Parameter]:
    """The backbone's parameters (for a lower learning rate or freezing)."""
    return list(model.backbone.parameters())


def head_parameters(model: CellClassifier) -> list[nn.Parameter]:
    """The head's parameters."""
    return list(model.head.parameters())


def set_backbone_trainable(model: CellClassifier, flag: bool) -> None:
    """Freeze (``False``) or unfreeze (``True``) the backbone, for head-then-all fine-tuning.

    Frozen: no gradients, and BatchNorm running statistics are kept (eval mode), also after
    ``model.train()``. Optimisers should be given only parameters with ``requires_grad``.
    """
    for param in model.backbone.parameters():
        param.requires_grad_(flag)
    model.backbone_frozen = not flag
    model.train(model.training)


def build_model(
    backbone: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: str | Path | None = None,
    head: str = "pool",
    dropout: float = 0.2,
    keep_classifier: bool = False,
) -> tuple[CellClassifier, LoadReport]:
    """Build a classifier for ``num_classes`` classes on images with ``in_chans`` channels.

    Parameters
    ----------
    backbone : MIA name, ``alexnet`` or timm model name (see :func:`list_backbones`).
    num_classes : number of outputs (>= 1).
    in_chans : image channels; pretrained RGB input kernels are adapted (1: summed; N > 3:
        repeated and scaled by 3/N). No channel is ever dropped.
    pretrained : None or ``'none'`` (random init), ``'imagenet'`` (timm / torchvision
        download; offline this fails with a message naming the fix) or a local weights file
        (``.pth``/``.pt``/``.bin``/``.safetensors``) of the same architecture.
    head : ``'pool'`` (global average pooling + dropout + linear, no fully connected stack) or
        ``'classic'`` (AlexNet/VGG only: the original fc6/fc7 kept, the 1000-way layer replaced).
    dropout : dropout before the linear layer of the ``pool`` head.
    keep_classifier : also load the weights' classifier into the head (needs
        ``num_classes`` to equal its outputs, e.g. 1000 for ImageNet).

    Returns
    -------
    (CellClassifier, LoadReport)

    Raises
    ------
    ModelError, WeightsError
        Bad settings; weights that cannot be fetched or do not fully fit the backbone.
    """
    info = resolve_backbone(backbone)
    _check_args(info, num_classes, in_chans, head, dropout)
    mode = _pretrained_mode(pretrained)
    classic = head == "classic"
    imagenet = mode == "imagenet"
    if imagenet and not info.imagenet:
        raise WeightsError(f"no ImageNet weights exist for '{info.name}' ({info.timm_name}); "
                           "use pretrained=None or a local weights file")
    if info.source == "torchvision":
        net, cls, report = _build_alexnet(info, in_chans, classic, imagenet)
        stem_key, cls_prefix, discard = "features.0.weight", "classifier.6", ()
    else:
        net, cls, report = _build_timm(info, in_chans, classic, imagenet, keep_classifier)
        stem_key = net.pretrained_cfg.get("first_conv", "") + ".weight"
        cls_prefix = net.pretrained_cfg.get("classifier") or None
        discard = ("pre_logits.",) if _is_vgg(info) and not classic else ()
    num_features = int(net.num_features)
    model_head = LinearHead(num_features, num_classes, 0.0 if classic else dropout)
    model = CellClassifier(net, model_head, info=info, num_features=num_features,
                           num_classes=num_classes, in_chans=in_chans,
                           head_kind=head, dropout=dropout)
    if imagenet and keep_classifier:
        report = _load_classifier(model, cls, report)
    if mode == "file":
        report = _load_file(model, Path(str(pretrained)), stem_key, cls_prefix, discard,
                            keep_classifier)
    if keep_classifier and mode == "none":
        raise ModelError("keep_classifier needs pretrained weights (a file or 'imagenet')")
    return model, report


def _check_args(info: BackboneInfo, num_classes: int, in_chans: int, head: str,
                dropout: float) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(f"num_classes must be a whole number >= 1, not {num_classes!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ModelError(f"in_chans must be a whole number >= 1, not {in_chans!r}")
    if head not in HEADS:
        raise ModelError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    if head == "classic" and not (info.source == "torchvision" or _is_vgg(info)):
        raise ModelError(f"head='classic' needs alexnet or a VGG backbone, not '{info.name}'; "
                         "use head='pool'")
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(f"dropout must be in [0, 1), not {dropout!r}")


def _is_vgg(info: BackboneInfo) -> bool:
    return info.source == "timm" and info.timm_name.split(".")[0].startswith("vgg")


def _pretrained_mode(pretrained: str | Path | None) -> str:
    if pretrained is None or pretrained is False:
        return "none"
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none", "random"):
        return "none"
    if isinstance(pretrained, str) and pretrained.strip().lower() == "imagenet":
        return "imagenet"
    if isinstance(pretrained, (str, Path)):
        return "file"
    raise ModelError(f"pretrained must be None, 'imagenet' or a weights file path, "
                     f"not {pretrained!r}")


def _offline_error(info: BackboneInfo, exc: Exception) -> WeightsError:
    return WeightsError(
        f"could not fetch ImageNet weights for '{info.name}' ({type(exc).__name__}; offline?): "
        f"download them on a connected computer and pass the file, "
        f"e.g. pretrained='/path/to/{info.timm_name}.safetensors'")


def _build_timm(info: BackboneInfo, in_chans: int, classic: bool, imagenet: bool,
                keep_classifier: bool) -> tuple[nn.Module, nn.Module | None, LoadReport]:
    import timm

    kwargs: dict[str, Any] = {"in_chans": in_chans}
    if not (imagenet and keep_classifier):
        kwargs["num_classes"] = 0
    try:
        net = timm.create_model(info.timm_name, pretrained=imagenet, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if imagenet:
            raise _offline_error(info, exc) from exc
        raise ModelError(f"cannot build '{info.name}' ({info.timm_name}): {exc}") from exc
    cls = None
    if imagenet and keep_classifier:
        cls = net.get_classifier()
        net.reset_classifier(0)
    if _is_vgg(info) and not classic:
        net.pre_logits = nn.Identity()  # MIA: no fully connected layers; pool conv5 features
    else:
        net.num_features = int(getattr(net, "head_hidden_size", None) or net.num_features)
    report = LoadReport(0, 0, 0, "none", "random")
    if imagenet:
        count = sum(1 for _ in net.state_dict())
        tag = net.pretrained_cfg.get("tag") or "default"
        stem = net.pretrained_cfg.get("first_conv", "") + ".weight"
        report = LoadReport(count, 0, 0, "timm", f"imagenet:{info.timm_name}.{tag}",
                            (stem,) if in_chans != 3 else ())
    return net, cls, report


def _build_alexnet(info: BackboneInfo, in_chans: int, classic: bool,
                   imagenet: bool) -> tuple[nn.Module, nn.Module | None, LoadReport]:
    net = AlexNetBackbone(in_chans, classic)
    if not imagenet:
        return net, None, LoadReport(0, 0, 0, "none", "random")
    import torchvision

    try:
        ref = torchvision.models.alexnet(weights="IMAGENET1K_V1")
    except Exception as exc:  # noqa: BLE001 - urllib raises many types when offline
        raise _offline_error(info, exc) from exc
    source = ref.state_dict()
    mapped, _by, adapted, _left = match_state_dict(
        source, net.state_dict(), stem_key="features.0.weight", classifier_prefix="classifier.6",
        label="torchvision's AlexNet weights", model_name="alexnet")
    loaded = load_into(net, mapped)
    report = LoadReport(loaded, 0, 0, "torchvision", "imagenet:alexnet.IMAGENET1K_V1",
                        tuple(adapted))
    return net, ref.classifier[6], report


def _load_classifier(model: CellClassifier, cls: nn.Module | None,
                     report: LoadReport) -> LoadReport:
    fc = model.head.fc
    if not isinstance(cls, nn.Linear) or cls.weight.shape != fc.weight.shape:
        shape = list(cls.weight.shape) if isinstance(cls, nn.Linear) else type(cls).__name__
        raise WeightsError(f"the pretrained classifier ({shape}) does not fit a head with "
                           f"{model.num_classes} outputs; use keep_classifier=False")
    with torch.no_grad():
        fc.weight.copy_(cls.weight)
        fc.bias.copy_(cls.bias)
    return LoadReport(report.loaded + 2, 0, 0, report.mapped_by, report.source, report.adapted)


def _load_file(model: CellClassifier, path: Path, stem_key: str, cls_prefix: str | None,
               discard: tuple[str, ...], keep_classifier: bool) -> LoadReport:
    source = read_state_dict(path)
    try:
        mapped, mapped_by, adapted, leftovers = match_state_dict(
            source, model.backbone.state_dict(), stem_key=stem_key, classifier_prefix=cls_prefix,
            discard_prefixes=discard, label=f"weights file '{path.name}'",
            model_name=f"backbone '{model.info.name}' ({model.info.timm_name})")
    except WeightsError as exc:
        if path.suffix.lower() != ".safetensors":
            raise
        raise WeightsError(f"{exc} (.safetensors files keep no tensor order, so only matching "
                           "names can be used)") from exc
    loaded = load_into(model.backbone, mapped)
    used: set[str] = set()
    if keep_classifier:
        used = _load_file_classifier(model, leftovers, cls_prefix, path.name)
        loaded += len(used)
    unexpected = [k for k, _v in leftovers if k not in used]
    return LoadReport(loaded, 0, len(unexpected), mapped_by, str(path), tuple(adapted),
                      (), tuple(unexpected[:20]))


def _load_file_classifier(model: CellClassifier, leftovers: list[tuple[str, torch.Tensor]],
                          cls_prefix: str | None, label: str) -> set[str]:
    fc = model.head.fc
    named = dict(leftovers)
    keys = [f"{cls_prefix}.weight", f"{cls_prefix}.bias"] if cls_prefix else []
    if not keys or keys[0] not in named:  # foreign names: the file's last weight/bias pair
        keys = [k for k, _v in leftovers[-2:]]
    weight, bias = (named[keys[0]], named.get(keys[1])) if len(keys) == 2 else (None, None)
    if weight is None or bias is None or weight.shape != fc.weight.shape \
            or bias.shape != fc.bias.shape:
        got = list(weight.shape) if weight is not None else "none"
        raise WeightsError(f"{label}: its classifier ({got}) does not fit a head with "
                           f"{model.num_classes} outputs on {model.num_features} features; "
                           "use keep_classifier=False")
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    return set(keys)


def data_config(backbone: str, pretrained: bool, in_chans: int) -> dict[str, Any]:
    """Input size, normalisation and resize interpolation for a backbone.

    Returns
    -------
    dict
        ``input_size`` (side length the weights were trained at), ``mean``/``std`` (the
        weights' statistics for a pretrained 3-channel stem, e.g. ImageNet's or Inception's
        0.5; ``None`` means: use the dataset's own per-channel statistics), ``interpolation``
        and ``crop_pct``.
    """
    info = resolve_backbone(backbone)
    mean = std = None
    interpolation, crop_pct = "bilinear", 0.875
    if info.source == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(info.timm_name)
        if cfg is not None:
            interpolation = cfg.interpolation or interpolation
            crop_pct = float(cfg.crop_pct or crop_pct)
            if pretrained and in_chans == 3:
                mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif pretrained and in_chans == 3:
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return {"input_size": info.default_input_size, "mean": mean, "std": std,
            "interpolation": interpolation, "crop_pct": crop_pct}


__all__ = [
    "AlexNetBackbone", "CellClassifier", "LinearHead", "adapt_stem", "backbone_parameters",
    "build_model", "data_config", "head_parameters", "set_backbone_trainable",
]
