"""Every training setting declared once (default, limits, choices, help), saved with the model.

Each field of :class:`TrainConfig` is made with :func:`~.settings.setting`: its metadata (in
magicgui's ``UiField`` vocabulary) generates :meth:`TrainConfig.validate`, the flags of
``napari-cellclass train`` and the Training dock's widgets. Adding a setting is one line here.

The defaults fit a laptop CPU on the sample data (a small MobileNetV3 at 96 px, about a
minute); on a GPU raise ``input_size``, ``batch_size`` and pick a bigger backbone.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.groups import parse_group_spec
from .settings import Setting, setting, settings_of

__all__ = ["TrainConfig", "ConfigError", "MONITORS", "SEED_MAX"]

MONITORS = ("auto", "loss", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "f1_micro", "exact_match")
#: The largest seed: what ``numpy.random.seed`` accepts (``torch.manual_seed`` takes up to 2**64 - 1).
SEED_MAX = 2**32 - 1
_PERCENT = {"maximum": 100, "step": 5}
#: class_weights=auto weighs the classes when the largest has more than this many times the smallest's images.
IMBALANCE_RATIO = 1.5
#: The largest settings file read (settings are a few kB; a bigger file is a mistake).
MAX_CONFIG_BYTES = 4 * 2**20


@dataclass
class TrainConfig:
    """All settings of a training run.

    Groups: model (``backbone`` .. ``backbone_lr_factor``), loss, optimisation, data split,
    augmentation (``aug_*``), stopping, hardware. ``TrainConfig.from_file(path)`` reads a
    JSON or YAML mapping of any subset of the fields; unknown names are an error.
    """

    # model
    backbone: str = setting("mobilenetv3_small_100", "the backbone: MIA's names, AlexNet or any timm model "
                            "(see `napari-cellclass backbones`)", min_length=1, basic=1, cli=True)
    pretrained: str = setting("none", "initial weights: none, imagenet or the path of a weights file",
                              min_length=1, examples=("none", "imagenet"), metavar="none|imagenet|PATH", basic=2,
                              cli=True)
    head: str = setting("pool", "pool: global pool + dropout + linear; classic: AlexNet/VGG fully connected head",
                        enum=("pool", "classic"))
    dropout: float = setting(0.2, "dropout before the last layer", minimum=0, exclusive_maximum=1, step=0.05)
    fine_tune: str = setting("auto", "full: train everything; head: frozen backbone; head-then-all: the head "
                             "first, then everything; auto: head-then-all with pretrained weights, else full",
                             enum=("auto", "full", "head", "head-then-all"),
                             value_aliases={"none": "full", "all": "full", "freeze": "head"}, basic=3)
    freeze_epochs: int = setting(2, "head-then-all: epochs with the backbone frozen", minimum=0, maximum=100_000)
    backbone_lr_factor: float = setting(1.0, "head-then-all: backbone learning rate = lr x factor after "
                                        "unfreezing (1: measured best, benchmarks/bench_imbalance.py)", minimum=0,
                                        maximum=10, step=0.05)
    # loss
    loss: str = setting("ce", "ce: cross entropy; focal; kl: Kullback-Leibler divergence; bce: multi-label",
                        enum=("ce", "focal", "kl", "bce"), basic=4, cli=True)
    label_smoothing: float = setting(0.0, "share of each target spread over all classes", minimum=0,
                                     exclusive_maximum=1, step=0.05)
    focal_gamma: float = setting(2.0, "focal loss: the focusing exponent", minimum=0, maximum=10, step=0.5)
    class_weights: str = setting("auto", "balanced: weigh each class by its rarity; auto: balanced when the "
                                 f"largest class has over {IMBALANCE_RATIO:g}x the images of the smallest "
                                 "(single-label)", enum=("auto", "none", "balanced"), basic=15)
    balanced_sampler: bool = setting(False, "draw training images so that every class is seen equally often",
                                     basic=16)
    # optimisation
    optimizer: str = setting("adamw", "the optimizer", enum=("sgd", "adam", "adamw"), basic=5, cli=True)
    lr: float = setting(2e-3, "learning rate (auto: found by a range test before training)", exclusive_minimum=0,
                        maximum=10, step=1e-4, basic=6, cli=True, auto="lr_find", metavar="LR|auto")
    lr_find: bool = setting(False, "find the learning rate with a range test before training (--lr auto)")
    momentum: float = setting(0.9, "SGD momentum (Nesterov when above 0)", minimum=0, maximum=1, step=0.05)
    weight_decay: float = setting(1e-4, "weight decay", minimum=0, maximum=1, step=1e-4)
    schedule: str = setting("cosine", "learning-rate schedule after the warm-up",
                            enum=("none", "plateau", "onecycle", "cosine"), basic=7)
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warm-up", minimum=0, maximum=100_000,
                                   step=0.5)
    plateau_patience: int = setting(2, "plateau: epochs without improvement before the lr drops", minimum=0,
                                    maximum=1000)
    plateau_factor: float = setting(0.3, "plateau: lr multiplier at each drop", exclusive_minimum=0,
                                    exclusive_maximum=1, step=0.05)
    grad_clip: float = setting(0.0, "largest gradient norm; 0 = off", minimum=0, maximum=1e9, step=0.5)
    epochs: int = setting(12, "training epochs", minimum=1, maximum=100_000, basic=8, cli=True)
    batch_size: int = setting(32, "images per training batch", minimum=1, maximum=65_536, basic=9, cli=True)
    input_size: int | None = setting(96, "input size in pixels (0 or null: the backbone's default)", minimum=16,
                                     maximum=2048, step=16, none_value=0, basic=10, cli=True)
    # data split
    train_percent: float = setting(80.0, "share of labelled images for training (rest: validation)",
                                   exclusive_minimum=0, **_PERCENT, basic=11, cli=True)
    val_percent: float | None = setting(None, "share of labelled images for validation (null, -1 in the widget: "
                                        "what is left after train and test)", minimum=0, **_PERCENT,
                                        none_value=-1.0)
    test_percent: float = setting(0.0, "share of labelled images held out for testing", minimum=0, **_PERCENT,
                                  basic=12, cli=True)
    split: str = setting("auto", "auto: the project's predefined split when it has one, else random",
                         enum=("auto", "random", "predefined"))
    split_seed: int | None = setting(None, "seed of the random split (null, -1 in the widget: seed)", minimum=0,
                                     maximum=SEED_MAX, none_value=-1)
    group_by: str = setting("", "keep each group of images (specimen, video, well) inside one split: a regex with a "
                            "named group searched in the image id, e.g. (?P<well>[A-P][0-9]{2}); folder, folder:N; "
                            "or column:NAME of cellclass_groups.csv (empty: no groups)", cli=True,
                            metavar="REGEX|folder[:N]|column:NAME")
    scaling: str = setting("auto", "intensity scaling to [0, 1]: the dtype's range or per-image percentiles "
                           "(auto: dtype for 8-bit, else percentile)", enum=("auto", "dtype", "percentile"))
    # augmentation (batched tensor ops on the training device)
    aug_flips: bool = setting(True, "random horizontal and vertical flips", basic=13)
    aug_rot90: bool = setting(True, "random 90 degree rotations", basic=14)
    aug_affine_degrees: float = setting(0.0, "random rotation range (+-degrees); 0 = off", minimum=0, maximum=180,
                                        step=5)
    aug_affine_translate: float = setting(0.0, "random shift, as a fraction of the image size", minimum=0,
                                          maximum=0.5, step=0.05)
    aug_affine_scale: float = setting(0.0, "random zoom (+- relative)", minimum=0, maximum=0.9, step=0.05)
    aug_crop_scale: float = setting(1.0, "random resized crop: smallest area fraction; 1 = off",
                                    exclusive_minimum=0, maximum=1, step=0.05)
    aug_brightness: float = setting(0.1, "random brightness change (+-, in scaled intensity units)", minimum=0,
                                    maximum=1, step=0.05)
    aug_contrast: float = setting(0.1, "random contrast change (+- relative)", minimum=0, maximum=0.99, step=0.05)
    aug_gamma: float = setting(0.0, "random gamma change (+- relative)", minimum=0, maximum=0.99, step=0.05)
    aug_blur_prob: float = setting(0.0, "share of images blurred", minimum=0, maximum=1, step=0.05)
    aug_blur_sigma: float = setting(1.0, "largest blur sigma in pixels", minimum=0, maximum=20, step=0.5)
    aug_noise_std: float = setting(0.0, "largest Gaussian noise level", minimum=0, maximum=1, step=0.01)
    # stopping and selection
    early_stopping: int = setting(0, "stop after this many epochs without improvement; 0 = off", minimum=0,
                                  maximum=100_000)
    monitor: str = setting("auto", "validation metric that picks the best epoch and stops early (auto: "
                           "balanced accuracy, multi-label f1_macro)", enum=MONITORS)
    threshold: float = setting(0.5, "multi-label decision threshold", exclusive_minimum=0, exclusive_maximum=1,
                               step=0.05)
    bn_statistics: str = setting("epoch", "batch-norm statistics used for validation and prediction: epoch = "
                                 "averaged over the second half of each epoch's training batches (no extra pass; "
                                 "epochs under 4 batches get the pass); "
                                 "pass = a forward pass over up to bn_recalibrate training images after each epoch "
                                 "(precise BN, about a third of an epoch's compute); running = PyTorch's running "
                                 "average", enum=("epoch", "pass", "running"))
    bn_recalibrate: int = setting(2048, "with bn_statistics=pass: re-estimate batch-norm statistics on up to N "
                                  "training images after each epoch (precise BN); 0 = off", minimum=0,
                                  maximum=10_000_000)
    # hardware
    device: str = setting("auto", "auto: CUDA, then Apple MPS, then CPU", enum=("auto", "cpu", "cuda", "mps"),
                          basic=17, cli=True)
    precision: str = setting("auto", "auto: bf16 on CUDA, fp32 elsewhere", enum=("auto", "fp32", "bf16"))
    channels_last: bool | None = setting(None, "channels-last memory layout (null, auto in the widget: on CUDA "
                                         "only)", none_value="auto")
    num_workers: int = setting(0, "background batch-assembly threads (CUDA prefetch)", minimum=0, maximum=64)
    cache_memory_mb: int = setting(2048, "decoded-image cache in RAM (MB); beyond it a memory map on disk",
                                   minimum=0, maximum=10_000_000, step=256)
    seed: int = setting(0, "random seed", minimum=0, maximum=SEED_MAX, cli=True)
    extra: dict[str, Any] = setting(None, "free-form notes, saved as they are", factory=dict, visible=False)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def settings(cls) -> tuple[Setting, ...]:
        """Every setting's declaration (limits, choices, help, hints), in field order."""
        return settings_of(cls)

    def validate(self) -> TrainConfig:
        """Check every field against its declaration, then the split shares.

        Values are normalised on the way (old names such as ``fine_tune='none'`` resolved,
        numbers of float settings stored as float).

        Raises
        ------
        ConfigError
            One line naming the first bad field and the values it allows.
        """
        for s in settings_of(type(self)):
            if s.auto and getattr(self, s.name) == "auto":  # lr="auto": lr_find on, lr its default
                setattr(self, s.auto, True)
                setattr(self, s.name, s.default)
            setattr(self, s.name, s.check(getattr(self, s.name)))
        parse_group_spec(self.group_by)  # a bad regex or folder level: one line now, not at training time
        total = self.train_percent + self.test_percent
        if self.val_fraction < -1e-9 or total > 100 + 1e-9:
            raise ConfigError(f"train_percent={self.train_percent} + test_percent={self.test_percent} "
                              "exceed 100; lower one of them")
        if self.val_percent is not None and abs(total + self.val_percent - 100) > 1e-6:
            raise ConfigError(f"train_percent + val_percent + test_percent = {total + self.val_percent}, must be 100")
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
        """Test share of the labelled images (0-1)."""
        return self.test_percent / 100.0

    @property
    def fine_tune_mode(self) -> str:
        """``fine_tune`` with ``auto`` resolved: head-then-all from pretrained weights, else full."""
        if self.fine_tune != "auto":
            return self.fine_tune
        return "full" if self.pretrained in ("none", "") else "head-then-all"

    def monitor_for(self, multi_label: bool) -> tuple[str, str]:
        """The monitored validation metric and its direction (``'max'`` or ``'min'``)."""
        name = self.monitor
        if name == "auto":
            name = "f1_macro" if multi_label else "balanced_accuracy"
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
        data = _read_mapping(path)
        if isinstance(data, dict) and isinstance(data.get("train_config"), dict):
            data = data["train_config"]
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the settings as JSON or YAML (by suffix).

        Raises
        ------
        ProjectError
            When ``path`` (or the file a link names) is a project's settings, lock, split or
            predictions file, an image, a label sidecar, or lies in a label, model or cache
            folder: one line, nothing written (see :mod:`napari_cellclass.core.outputs`).
        """
        from ..core.atomic import atomic_write_text
        from ..core.outputs import check_output_file

        path = check_output_file(path)
        if _is_yaml(path):
            import yaml

            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def _read_mapping(path: Path) -> Any:
    """The parsed content of a JSON or YAML settings file; ConfigError when unreadable or invalid.

    The read never blocks and is bounded: a FIFO, a device (``/dev/zero``), a folder or a file
    over :data:`MAX_CONFIG_BYTES` is refused with one line.
    """
    from ..core.textfiles import decode_text, read_bytes_bounded

    fix = "give a JSON or YAML file of settings"
    try:
        raw, _ = read_bytes_bounded(path, MAX_CONFIG_BYTES, "config file", fix=fix, error=ConfigError)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    text = decode_text(raw, path, "config file", fix="save it as UTF-8 text", error=ConfigError)
    import yaml

    try:
        data = (yaml.safe_load(text) or {}) if _is_yaml(path) else json.loads(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid {'YAML' if _is_yaml(path) else 'JSON'} ({msg})") from None
    try:  # a YAML anchor inside itself (``a: &x {b: *x}``) makes a value without end
        json.dumps(data, default=str)
    except (ValueError, RecursionError):
        raise ConfigError(f"{path}: a value refers to itself (a YAML anchor used inside itself); write the "
                          "values out") from None
    return data
