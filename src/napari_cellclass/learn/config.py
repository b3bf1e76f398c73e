"""Every training setting in one dataclass, saved with the model and loadable from JSON/YAML.

The defaults fit a laptop CPU on the sample data (a small MobileNetV3 at 96 px, about a
minute); on a GPU raise ``input_size``, ``batch_size`` and pick a bigger backbone.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

__all__ = ["TrainConfig", "ConfigError", "CHOICES", "MONITORS"]

CHOICES: dict[str, tuple[str, ...]] = {
    "head": ("pool", "classic"),
    "fine_tune": ("full", "head", "head-then-all"),
    "loss": ("ce", "focal", "kl", "bce"),
    "class_weights": ("none", "balanced"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("none", "plateau", "onecycle", "cosine"),
    "split": ("auto", "random", "predefined"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("auto", "fp32", "bf16"),
    "scaling": ("auto", "dtype", "percentile"),
}
MONITORS = ("auto", "loss", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted",
            "f1_micro", "exact_match")
FINE_TUNE_ALIASES = {"none": "full", "all": "full", "freeze": "head"}


@dataclass
class TrainConfig:
    """All settings of a training run.

    Groups: model (``backbone`` .. ``backbone_lr_factor``), loss, optimisation, data split,
    augmentation (``aug_*``), stopping, hardware. ``TrainConfig.from_file(path)`` reads a
    JSON or YAML mapping of any subset of the fields; unknown names are an error.
    """

    # model
    backbone: str = "mobilenetv3_small_100"
    pretrained: str = "none"            # none | imagenet | path to a weights file
    head: str = "pool"                  # pool: global pool + dropout + linear; classic: AlexNet/VGG FC head
    dropout: float = 0.2
    fine_tune: str = "full"             # full | head (frozen backbone) | head-then-all
    freeze_epochs: int = 2              # head-then-all: epochs with the backbone frozen
    backbone_lr_factor: float = 0.1     # head-then-all: backbone lr = lr * factor after unfreezing
    # loss
    loss: str = "ce"                    # ce | focal | kl | bce (multi-label)
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: str = "none"         # none | balanced
    balanced_sampler: bool = False
    # optimisation
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    plateau_patience: int = 2
    plateau_factor: float = 0.3
    grad_clip: float = 0.0              # max gradient norm; 0 = off
    epochs: int = 12
    batch_size: int = 32
    input_size: int | None = 96         # None = the backbone's default input size
    # data split
    train_percent: float = 80.0
    val_percent: float | None = None    # None = what is left after train and test
    test_percent: float = 0.0
    split: str = "auto"                 # auto: predefined when the project has one, else random
    split_seed: int | None = None       # None = seed
    scaling: str = "auto"               # intensity scaling to [0, 1]: dtype range or per-image percentiles
    # augmentation (batched tensor ops on the training device)
    aug_flips: bool = True
    aug_rot90: bool = True
    aug_affine_degrees: float = 0.0     # random rotation range (+-); 0 = off
    aug_affine_translate: float = 0.0   # fraction of the image size
    aug_affine_scale: float = 0.0       # +- relative zoom
    aug_crop_scale: float = 1.0         # random resized crop: min area fraction; 1 = off
    aug_brightness: float = 0.1         # +- additive, in units of the scaled intensity
    aug_contrast: float = 0.1           # +- relative
    aug_gamma: float = 0.0              # +- relative gamma change
    aug_blur_prob: float = 0.0
    aug_blur_sigma: float = 1.0
    aug_noise_std: float = 0.0
    # stopping and selection
    early_stopping: int = 0             # patience in epochs; 0 = off
    monitor: str = "auto"               # validation metric that picks the best epoch
    threshold: float = 0.5              # multi-label decision threshold
    bn_recalibrate: int = 2048          # re-estimate batch-norm statistics on up to N training images
                                        # after each epoch (precise BN; 0 = off)
    # hardware
    device: str = "auto"
    precision: str = "auto"             # auto: bf16 on CUDA, fp32 elsewhere
    channels_last: bool | None = None   # None: on CUDA only
    num_workers: int = 0                # background batch-assembly threads (CUDA prefetch)
    cache_memory_mb: int = 2048         # decoded-image cache in RAM; beyond it a memory map on disk
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, saved as is

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.fine_tune = FINE_TUNE_ALIASES.get(str(self.fine_tune), self.fine_tune)
        self.validate()

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not allowed; use one of {', '.join(allowed)}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor={self.monitor!r} is not allowed; use one of {', '.join(MONITORS)}")
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ConfigError("backbone must be a backbone name (see `napari-cellclass backbones`)")
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ConfigError("pretrained must be 'none', 'imagenet' or the path of a weights file")
        _int(self, "epochs", 1, 100_000)
        _int(self, "batch_size", 1, 65_536)
        _int(self, "freeze_epochs", 0, 100_000)
        _int(self, "plateau_patience", 0, 1000)
        _int(self, "early_stopping", 0, 100_000)
        _int(self, "num_workers", 0, 64)
        _int(self, "cache_memory_mb", 0, 10_000_000)
        _int(self, "bn_recalibrate", 0, 10_000_000)
        _int(self, "seed", 0, 2**32 - 1)
        if self.split_seed is not None:
            _int(self, "split_seed", 0, 2**32 - 1)
        if self.input_size is not None:
            _int(self, "input_size", 16, 2048)
        _num(self, "lr", 0, 10, low_open=True)
        _num(self, "momentum", 0, 1)
        _num(self, "weight_decay", 0, 1)
        _num(self, "dropout", 0, 1, high_open=True)
        _num(self, "backbone_lr_factor", 0, 10)
        _num(self, "label_smoothing", 0, 1, high_open=True)
        _num(self, "focal_gamma", 0, 10)
        _num(self, "warmup_epochs", 0, 100_000)
        _num(self, "plateau_factor", 0, 1, low_open=True, high_open=True)
        _num(self, "grad_clip", 0, 1e9)
        _num(self, "threshold", 0, 1, low_open=True, high_open=True)
        _num(self, "train_percent", 0, 100, low_open=True)
        _num(self, "test_percent", 0, 100)
        if self.val_percent is not None:
            _num(self, "val_percent", 0, 100)
        if self.val_fraction < -1e-9 or self.train_percent + self.test_percent > 100 + 1e-9:
            raise ConfigError(f"train_percent={self.train_percent} + test_percent={self.test_percent} "
                              "exceed 100; lower one of them")
        if self.val_percent is not None and abs(self.train_percent + self.val_percent + self.test_percent - 100) > 1e-6:
            raise ConfigError(f"train_percent + val_percent + test_percent = "
                              f"{self.train_percent + self.val_percent + self.test_percent}, must be 100")
        _num(self, "aug_affine_degrees", 0, 180)
        _num(self, "aug_affine_translate", 0, 0.5)
        _num(self, "aug_affine_scale", 0, 0.9)
        _num(self, "aug_crop_scale", 0, 1, low_open=True)
        _num(self, "aug_brightness", 0, 1)
        _num(self, "aug_contrast", 0, 0.99)
        _num(self, "aug_gamma", 0, 0.99)
        _num(self, "aug_blur_prob", 0, 1)
        _num(self, "aug_blur_sigma", 0, 20)
        _num(self, "aug_noise_std", 0, 1)
        for name in ("aug_flips", "aug_rot90", "balanced_sampler"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed; use true or false")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last={self.channels_last!r} is not allowed; use true, false or null")
        if not isinstance(self.extra, dict):
            raise ConfigError("extra must be a mapping")
        self.extra = _plain(self.extra, "extra")
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def val_fraction(self) -> float:
        """Validation share of the labelled images (0-1)."""
        if self.val_percent is not None:
            return self.val_percent / 100.0
        return (100.0 - self.train_percent - self.test_percent) / 100.0

    @property
    def test_fraction(self) -> float:
        return self.test_percent / 100.0

    def monitor_for(self, multi_label: bool) -> tuple[str, str]:
        """The monitored validation metric and its direction (``'max'`` or ``'min'``)."""
        name = self.monitor
        if name == "auto":
            name = "f1_macro" if multi_label else "accuracy"
        return name, ("min" if name == "loss" else "max")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training configuration must be a mapping of settings, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(names))}")
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) file of settings.

        A model folder's ``config.json`` also works: its ``train_config`` section is used.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        import yaml

        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            msg = " ".join(str(exc).split())
            kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
            raise ConfigError(f"{path}: not valid {kind} ({msg})") from None
        if isinstance(data, dict) and isinstance(data.get("train_config"), dict):
            data = data["train_config"]
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the settings as JSON or YAML (by suffix)."""
        from ..core.atomic import atomic_write_text

        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (dates and times become ISO-8601 text); ConfigError otherwise.

    The settings are saved in the model's ``config.json``: a value JSON cannot hold would
    otherwise only fail after the first epoch.
    """
    if isinstance(value, (_dt.date, _dt.time)):  # YAML reads 2020-01-01 as a date
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} cannot be saved with the model; use a finite number or text")
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where}={value!r} cannot be saved with the model ({type(value).__name__}); "
                      "use text, numbers, lists or mappings")


def _int(cfg: TrainConfig, name: str, lo: int, hi: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{name}={v!r} is not allowed; use a whole number from {lo} to {hi}")


def _num(cfg: TrainConfig, name: str, lo: float, hi: float, *, low_open: bool = False,
         high_open: bool = False) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if low_open else v >= lo) and (v < hi if high_open else v <= hi)
    if not ok:
        lb, hb = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{name}={v!r} is not allowed; use a number in {lb}{lo}, {hi}{hb}")
    setattr(cfg, name, float(v))
