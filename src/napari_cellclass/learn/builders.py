"""Typed builders of a training run (timm's ``create_*`` factories), each returning a frozen dataclass.

- :func:`build_hardware` -> :class:`Hardware`: process group, device, precision, memory layout;
- :func:`open_out_dir` -> :class:`Resume` or None: the model folder checked, a resumed run's state;
- :func:`build_run_data` -> :class:`~.rundata.RunData`: classes and split;
- :func:`build_images` -> :class:`ImageSet`: the decoded, cached images (a generator of progress events);
- :func:`build_network` -> :class:`Network`: the model and what its pretrained weights loaded;
- :func:`build_optimization` -> :class:`Optimization`: loss, optimizer, schedule, monitored metric.

:class:`RunParts` holds them all; the :class:`~.engine.Trainer` receives it from its ``setup``.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.duplicates import GRID, duplicate_leak_note, fingerprints
from ..core.errors import ImageReadError, ModelFolderError, TrainingError
from ..core.project import Project
from . import checkpoint as ckpt
from . import distributed as ddp
from . import models
from .config import IMBALANCE_RATIO, TrainConfig
from .data import (
    BatchAugment,
    Batcher,
    ImageStore,
    Normalisation,
    balanced_weights,
    cache_dir_for,
    choose_normalisation,
    epoch_batches,
)
from .device import resolve_device, resolve_precision, use_channels_last
from .events import BatchProgress, CancelToken, Event, Log, WarningEvent
from .losses import balanced_class_weights, build_loss
from .rundata import RunData, run_data
from .schedule import LRSchedule

__all__ = ["Hardware", "ImageSet", "Network", "Optimization", "Resume", "RunParts", "build_hardware",
           "build_images", "build_network", "build_optimization", "build_optimizer", "build_run_data",
           "open_out_dir", "probe_out_dir", "train_batches"]


@dataclass(frozen=True)
class Hardware:
    """Where a run computes: its place in the process group, device, precision and memory layout."""

    dist: ddp.DistInfo
    device: torch.device
    precision: str
    channels_last: bool


def build_hardware(cfg: TrainConfig) -> Hardware:
    """Join torchrun's process group (if any) and resolve the device settings."""
    dist, device = ddp.join(resolve_device(cfg.device))
    return Hardware(dist, device, resolve_precision(cfg.precision, device),
                    use_channels_last(cfg.channels_last, device))


@dataclass(frozen=True)
class Resume:
    """The state of a run to continue: ``checkpoint/last.json`` and the tensors saved with it."""

    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def open_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> Resume | None:
    """Check the model folder: a new run needs it empty, a resumed one its saved state (same model)."""
    if resume:
        state, tensors = ckpt.read_training_state(out_dir)
        saved = state.get("train_config", {})
        for key in ("backbone", "head", "pretrained"):
            if saved.get(key) != getattr(cfg, key):
                raise ModelFolderError(f"{out_dir}: cannot resume with {key}={getattr(cfg, key)!r}; the "
                                       f"checkpoint was trained with {saved.get(key)!r}")
        return Resume(state, tensors)
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"{out_dir}: is a file, not a folder; choose another --out (a new or empty folder "
                            "for the model)")
    if _holds_files(out_dir):
        if (out_dir / ckpt.CONFIG_NAME).exists():
            raise TrainingError(f"{out_dir}: already holds a model; pass --resume to continue it, "
                                "or choose another --out (or delete the folder)")
        raise TrainingError(f"{out_dir}: folder exists and is not a model folder; choose another --out")
    return None


#: the name start of the file :func:`probe_out_dir` writes and removes again
_PROBE_PREFIX = ".cellclass-probe-"


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` exists and holds anything but a write probe (of this or another process).

    Under ``torchrun`` rank 0 probes the folder while the other ranks check it: the probe (and
    the folder made only for it, which may vanish meanwhile) does not count.
    """
    try:
        return any(not p.name.startswith(_PROBE_PREFIX) for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


#: Project folders no model folder may go into (labels; a cache that may be deleted at any time).
_NO_MODELS_IN = ("cellclass_labels", "cellclass_cache")


def probe_out_dir(out_dir: Path) -> None:
    """Check that the model folder can be created and written, before an epoch is spent.

    The folder (and missing parents) is created, a probe file written and removed; folders
    made for the check are removed again, so a run that ends before its first save leaves
    nothing. Raises :class:`ModelFolderError` (one line naming the folder and the fix) for a
    read-only project or parent, a path through a file, or a folder inside a project's label
    or cache folder.
    """
    for name in _NO_MODELS_IN:
        if name in Path(os.path.realpath(out_dir)).parts:
            raise ModelFolderError(f"{out_dir}: is inside a project's {name} folder; choose another --out")
    missing = []
    p = out_dir
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
        probe = out_dir / f"{_PROBE_PREFIX}{secrets.token_hex(6)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))
        os.unlink(probe)
    except OSError as exc:
        if isinstance(exc, (NotADirectoryError, FileExistsError)):
            raise ModelFolderError(f"{out_dir}: cannot create the model folder (a part of the path is a file); "
                                   "choose another --out") from None
        raise ckpt.save_error(out_dir, exc) from None
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def build_run_data(project: Project, cfg: TrainConfig, resume: Resume | None, out_dir: Path) -> RunData:
    """The run's classes and split (a resumed run keeps its split and must keep its classes)."""
    data = run_data(project, cfg, resume.state["split"] if resume else None)
    saved_classes = resume.state.get("classes") if resume else None
    if saved_classes is not None and list(saved_classes) != list(data.classes):
        raise TrainingError(f"{out_dir}: cannot resume, the classes changed since the checkpoint "
                            f"({', '.join(saved_classes)} -> {', '.join(data.classes)}); train a new model")
    return data


@dataclass(frozen=True)
class ImageSet:
    """The decoded images of a run: the readable ids of each split, their store positions and targets."""

    store: ImageStore
    ids: dict[str, list[str]]             # 'train', 'val', 'test' -> readable image ids
    index: dict[str, np.ndarray]          # their positions in ``store``
    targets: dict[str, np.ndarray]
    targets_dev: dict[str, torch.Tensor]  # the targets on the training device
    in_chans: int
    input_size: int
    channel_names: list[str]
    norm: Normalisation
    near_duplicates: int = 0              # validation/test images with a near-copy in training


def build_images(project: Project, data: RunData, cfg: TrainConfig, hw: Hardware, resume: Resume | None,
                 cancel: CancelToken, cancelled: Callable[[], bool]) -> Generator[Event, None, ImageSet | None]:
    """Decode and cache the run's images at the input size; yields progress and log events.

    Returns None when ``cancelled()`` says so after decoding (the store is then closed).
    """
    pretrained = cfg.pretrained not in ("none", "")
    sp = data.split
    if resume:
        first, channel_names = int(resume.state["in_chans"]), list(resume.state.get("channel_names", []))
    else:
        first, channel_names = first_channels(project, sp.train)
    size = models.data_config(cfg.backbone, pretrained, first)["input_size"]
    input_size = int(cfg.input_size or (size[-1] if isinstance(size, (tuple, list)) else size))
    ids = [*sp.train, *sp.val, *sp.test]
    store = ImageStore([project.path(i) for i in ids], input_size, cfg.scaling, first, keys=ids,
                       cache_dir=cache_dir_for(project.root), memory_mb=cfg.cache_memory_mb)
    yield from _decode(store, hw, cancel)
    if cancelled():  # before any epoch: no model folder
        store.close()
        yield Log("cancelled while decoding the images")
        return None
    yield Log(f"{len(ids)} images decoded at {input_size} px "
              f"({store.location} cache{f', {store.reused} reused' if store.reused else ''})")
    for key, reason in store.problems.items():
        yield WarningEvent(f"{key}: skipped, cannot be read ({reason})", key)
    pos = {k: n for n, k in enumerate(ids)}
    readable = {name: [i for i in part if i not in store.problems]
                for name, part in (("train", sp.train), ("val", sp.val), ("test", sp.test))}
    if not readable["train"] or not readable["val"]:
        raise TrainingError("no readable training or validation images left; check the warnings")
    index = {k: np.array([pos[i] for i in v], dtype=np.int64) for k, v in readable.items()}
    targets = {k: data.targets(v) for k, v in readable.items()}
    in_chans = int(store.in_chans)
    if resume:
        norm = Normalisation.from_json(resume.state["normalisation"])
    else:  # ImageNet statistics for pretrained RGB stems, the training split's otherwise
        dc = models.data_config(cfg.backbone, pretrained, in_chans)
        norm = choose_normalisation(store, index["train"], cfg.scaling, dc.get("mean"), dc.get("std"))
    targets_dev = {k: torch.from_numpy(v).to(hw.device) for k, v in targets.items()}
    leaks, note = duplicate_leaks(store, readable, index)
    if note:
        yield WarningEvent(note)
    return ImageSet(store, readable, index, targets, targets_dev, in_chans, input_size, channel_names, norm, leaks)


def duplicate_leaks(store: ImageStore, ids: dict[str, list[str]], index: dict[str, np.ndarray],
                    chunk: int = 512) -> tuple[int, str | None]:
    """Validation/test images with a near-copy in training (see :mod:`...core.duplicates`): count and warning."""
    def prints(pos: np.ndarray) -> np.ndarray:
        parts = [fingerprints(store.gather(pos[k:k + chunk])) for k in range(0, len(pos), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, GRID * GRID), np.float32)

    others = [(name, ids[name], prints(index[name])) for name in ("val", "test") if ids[name]]
    if not others or not ids["train"]:
        return 0, None
    return duplicate_leak_note(ids["train"], prints(index["train"]), others)


def first_channels(project: Project, ids: Sequence[str]) -> tuple[int, list[str]]:
    """Channel count and names of the first readable image of ``ids``."""
    for iid in ids:
        try:
            img = project.read_image(iid)
        except ImageReadError:
            continue
        return img.n_channels, list(img.channel_names)
    raise TrainingError(f"{project.root}: none of the training images can be read")


def _decode(store: ImageStore, hw: Hardware, cancel: CancelToken) -> Generator[Event, None, None]:
    """Build the store; under torchrun rank 0 writes the disk cache and the others reuse it."""
    first_builder = hw.dist.is_main or not store.needs_disk()
    stop = False
    if not first_builder:  # waits for rank 0 (a barrier that hears its cancel)
        stop = ddp.any_rank(hw.dist, False, hw.device)
    if not stop:
        notes: list[str] = []
        for done, total in store.build(cancel=cancel, log=notes.append):
            while notes:
                yield Log(notes.pop(0))
            yield BatchProgress("cache", 0, done, total)
    if first_builder and store.needs_disk():
        ddp.any_rank(hw.dist, store.cancelled, hw.device)


@dataclass(frozen=True)
class Network:
    """The model on its device and what its pretrained weights loaded (``note``: a line for the log)."""

    model: nn.Module
    load_report: dict[str, Any]
    note: str | None


def build_network(cfg: TrainConfig, num_classes: int, in_chans: int, hw: Hardware) -> Network:
    """The classifier the settings describe (seeded), on the device in its memory layout."""
    pretrained = cfg.pretrained not in ("none", "")
    torch.manual_seed(cfg.seed)
    model, report = models.build_model(cfg.backbone, num_classes, in_chans=in_chans,
                                       pretrained=cfg.pretrained if pretrained else None, head=cfg.head,
                                       dropout=cfg.dropout)
    load_report = report.to_dict() if hasattr(report, "to_dict") else {"report": str(report)}
    model = model.to(hw.device)
    if hw.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Network(model, load_report, f"pretrained weights: {report}" if pretrained else None)


@dataclass(frozen=True)
class Optimization:
    """Loss, optimizer and learning-rate schedule, and the validation metric that picks the best epoch."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    steps_per_epoch: int
    monitor: str
    mode: str  # 'max' or 'min'
    note: str | None = None  # what was done about class imbalance, for the run's log


def build_optimization(cfg: TrainConfig, data: RunData, images: ImageSet, model: nn.Module,
                       hw: Hardware) -> Optimization:
    """The loss (class weights), optimizer (parameter groups) and schedule (steps per epoch) of a run."""
    weights, note = class_weighting(cfg, data, images)
    criterion = build_loss(cfg.loss, multi_label=data.multi_label, class_weights=weights,
                           label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma).to(hw.device)
    optimizer = build_optimizer(cfg, model)
    steps = len(ddp.shard_batches(hw.dist, train_batches(cfg, data, images, np.random.default_rng(0))))
    monitor, mode = cfg.monitor_for(data.multi_label)
    schedule = LRSchedule(optimizer, cfg.schedule, cfg.epochs * steps, int(round(cfg.warmup_epochs * steps)), mode,
                          cfg.plateau_patience, cfg.plateau_factor)
    return Optimization(criterion, optimizer, schedule, steps, monitor, mode, note)


def class_weighting(cfg: TrainConfig, data: RunData, images: ImageSet) -> tuple[np.ndarray | None, str | None]:
    """The loss's class weights (or None) and a line saying why, from ``class_weights``.

    ``auto`` weighs single-label classes by rarity when the largest training class has more than
    :data:`~.config.IMBALANCE_RATIO` times the images of the smallest (unless the sampler balances).
    """
    targets = images.targets["train"]
    k = len(data.classes)
    if cfg.class_weights == "balanced":
        return balanced_class_weights(targets, k, data.multi_label), "the loss weighs each class by its rarity"
    if cfg.class_weights != "auto" or data.multi_label or cfg.balanced_sampler or not len(targets):
        return None, None
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=k)
    present = counts[counts > 0]
    ratio = present.max() / present.min() if len(present) > 1 else 1.0
    if ratio <= IMBALANCE_RATIO:
        return None, None
    largest = data.classes[int(np.argmax(counts))]
    smallest = data.classes[int(np.argmin(np.where(counts > 0, counts, counts.max() + 1)))]
    return (balanced_class_weights(targets, k),
            f"classes are imbalanced ({largest} {counts.max()} vs {smallest} {present.min()} training images, "
            f"{ratio:.1f}x): the loss weighs each class by its rarity (class_weights=auto)")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW over a ``backbone`` group (unless frozen) and a ``head`` group."""
    head = list(models.head_parameters(model))
    head_ids = {id(p) for p in head}
    body = [p for p in models.backbone_parameters(model) if id(p) not in head_ids]
    groups = []
    if cfg.fine_tune_mode != "head":
        groups.append({"params": body, "lr": cfg.lr, "lr_scale": 1.0, "name": "backbone"})
    groups.append({"params": head, "lr": cfg.lr, "lr_scale": 1.0, "name": "head"})
    fast = fused_kwargs(head + body)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0, **fast)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def fused_kwargs(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a float32/bf16/fp16 tensor on the CPU or a CUDA GPU: one
    kernel per step instead of a loop over the tensors (on the CPU the optimizer step of a resnet18
    went from about 260 ms to 4 ms); ``{}`` elsewhere (torch's default)."""
    ok = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
             for p in params)
    return {"fused": True} if ok and params else {}


def train_batches(cfg: TrainConfig, data: RunData, images: ImageSet, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's training batches (positions into the training split), class-balanced when asked."""
    weights = None
    if cfg.balanced_sampler:
        weights = balanced_weights(images.targets["train"], len(data.classes), data.multi_label)
    return epoch_batches(len(images.index["train"]), cfg.batch_size, rng, weights)


@dataclass(frozen=True)
class RunParts:
    """Everything a built run is made of (what the trainer's epochs work on)."""

    hardware: Hardware
    data: RunData
    images: ImageSet
    network: Network
    optimization: Optimization
    batcher: Batcher
    augment: BatchAugment

    @property
    def model(self) -> nn.Module:
        """The model (``network.model``)."""
        return self.network.model
