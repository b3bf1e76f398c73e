"""The trainer: builds a run from typed parts and runs its epochs as one stream of typed events.

>>> for ev in run_training("my_project", TrainConfig(epochs=5)):      # doctest: +SKIP
...     print(ev)

:class:`Trainer` receives its parts from :mod:`.builders`, trains and validates with
:mod:`.steps` (timm-style ``train_one_epoch`` / ``validate`` returning ordered metric dicts),
keeps its :class:`~.record.RunRecord` and writes the model folder (:mod:`.checkpoint`);
:mod:`.loop` runs its epochs. :func:`run_training` (a generator of events) and :func:`train`
(blocking) are the entry points.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import ModelFolderError, TrainingError
from ..core.project import Project
from . import checkpoint as ckpt
from . import distributed as ddp
from . import loop, steps
from .builders import (
    Hardware,
    Resume,
    RunParts,
    build_hardware,
    build_images,
    build_network,
    build_optimization,
    build_run_data,
    open_out_dir,
    probe_out_dir,
)
from .config import TrainConfig
from .data import BatchAugment, Batcher, balanced_weights, epoch_batches
from .device import autocast, resolve_device, resolve_precision
from .events import (
    CancelToken,
    Event,
    Finished,
    Log,
    WarningEvent,
)
from .lr_find import LrFindResult, find_lr
from .metrics import compute_metrics
from .record import RunRecord
from .rundata import MODELS_DIR, RunData, default_out_dir, make_split, open_project, run_data
from .startup import StartupClock

__all__ = ["MODELS_DIR", "RunData", "TrainResult", "Trainer", "autocast", "default_out_dir", "make_split",
           "open_project", "resolve_device", "resolve_precision", "run_data", "run_training", "train"]


def _view(*path: str) -> property:
    """A read-only attribute of the built run (``parts.<path>``), for scripts, tests and benchmarks."""
    def get(self: Trainer) -> Any:
        obj: Any = self.built
        for name in path:
            obj = getattr(obj, name)
        return obj

    return property(get, doc=f"``parts.{'.'.join(path)}`` of the built run.")


class Trainer:
    """One training run: its parts (data, model, optimizer, schedule) built by :meth:`setup`.

    Parameters
    ----------
    data
        A :class:`Project` or its folder.
    config
        The settings (default :class:`TrainConfig`).
    out_dir
        The model folder to write (default ``<project>/cellclass_models/<backbone>-<time>``).
    cancel
        Token checked between batches (and between images while decoding them).
    resume
        Continue from ``out_dir/checkpoint`` (same data split, optimizer and schedule state).
    """

    def __init__(self, data: Project | str | os.PathLike, config: TrainConfig | None = None,
                 out_dir: str | os.PathLike | None = None, *, cancel: CancelToken | None = None,
                 resume: bool = False) -> None:
        self.project = open_project(data)
        self.cfg = (config or TrainConfig()).validate()
        self.out_dir = (Path(out_dir).expanduser().resolve() if out_dir
                        else default_out_dir(self.project, self.cfg.backbone))
        self.cancel = cancel if cancel is not None else CancelToken()
        self.resume = resume
        self.hardware: Hardware | None = None
        self.parts: RunParts | None = None
        self.record = RunRecord()
        self.net: nn.Module | None = None  # what the training step calls (DistributedDataParallel when distributed)
        self._net_frozen: bool | None = None
        self.lr_found: LrFindResult | None = None
        self.probabilities: dict[str, np.ndarray] = {}  # of the last validation, by subset
        self.best_probabilities: np.ndarray | None = None  # the best epoch's on the validation images
        self.calibration: dict[str, Any] | None = None  # fitted after the last epoch
        self.startup = StartupClock()  # laps up to the first training batch (see loop.run_events)

    @property
    def built(self) -> RunParts:
        """The parts of the run (after :meth:`setup`)."""
        if self.parts is None:
            raise TrainingError("the trainer is not set up; iterate setup() first")
        return self.parts

    @property
    def dist(self) -> ddp.DistInfo:
        """This process's place in torchrun's process group (single until :meth:`setup`)."""
        return self.hardware.dist if self.hardware is not None else ddp.SINGLE

    device = _view("hardware", "device")
    precision = _view("hardware", "precision")
    channels_last = _view("hardware", "channels_last")
    data = _view("data")
    store = _view("images", "store")
    ids = _view("images", "ids")
    index = _view("images", "index")
    targets_dev = _view("images", "targets_dev")
    in_chans = _view("images", "in_chans")
    input_size = _view("images", "input_size")
    model = _view("network", "model")
    criterion = _view("optimization", "criterion")
    optimizer = _view("optimization", "optimizer")
    schedule = _view("optimization", "schedule")
    steps_per_epoch = _view("optimization", "steps_per_epoch")

    # -------------------------------------------------------------- setup
    def setup(self) -> Iterator[Event]:
        """Split, decode and cache the images, build the model; yields progress and log events.

        A cancel while the images are decoded ends it early, leaving the trainer not set up.
        """
        cfg = self.cfg
        hw = self.hardware = build_hardware(cfg)
        self.out_dir = Path(ddp.broadcast_object(hw.dist, str(self.out_dir)))
        resume = open_out_dir(self.out_dir, cfg, self.resume)
        if hw.dist.is_main:  # rank 0 writes the model folder: an unwritable one fails before any work
            probe_out_dir(self.out_dir)
        data = build_run_data(self.project, cfg, resume, self.out_dir)
        for note in data.notes:
            yield WarningEvent(note)
        self.startup.lap("project and split")
        sp = data.split
        groups = data.group_meta(sp.as_dict()).get("groups")
        in_groups = f" in {groups['train']}/{groups['val']}/{groups['test']} groups" if groups else ""
        yield Log(f"{len(sp.train)} training, {len(sp.val)} validation, {len(sp.test)} test images{in_groups} "
                  f"({sp.source} split); classes: {', '.join(data.classes)}")
        import timm  # noqa: F401 - the backbone library (the normalisation and the model need it), timed apart

        self.startup.lap("timm import")
        images = yield from build_images(self.project, data, cfg, hw, resume, self.cancel,
                                         lambda: self._cancelled(0, 1))
        if images is None:  # cancelled: no model folder, Finished(cancelled=True)
            return
        self.startup.lap("images")
        network = build_network(cfg, len(data.classes), images.in_chans, hw)
        self.startup.lap("model")
        if network.note:
            yield Log(network.note)
        optimization = build_optimization(cfg, data, images, network.model, hw)
        if optimization.note:
            yield Log(optimization.note)
        self.parts = RunParts(hw, data, images, network, optimization, Batcher(images.store, hw.device),
                              BatchAugment(cfg, images.norm, hw.device))
        if cfg.lr_find and not resume:
            found = find_lr(self.parts, cfg)
            found = ddp.broadcast_object(hw.dist, found)  # under torchrun every rank trains with rank 0's rate
            yield Log(found.note)
            self.lr_found = found
            self.cfg = cfg = cfg.replace(lr=found.lr)
            self.parts = dataclasses.replace(self.parts, optimization=build_optimization(cfg, data, images,
                                                                                       network.model, hw))
            optimization = self.parts.optimization
        self.net = network.model
        self.startup.lap("optimizer")
        self.record = RunRecord(optimization.monitor, optimization.mode)
        if resume:
            self._restore(resume)
            yield Log(f"resumed after epoch {self.record.start_epoch - 1} from {self.out_dir / ckpt.STATE_DIR}")
        try:  # what config.json will hold must be writable before an epoch is spent on it
            ckpt.to_json_text(self._meta())
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"the settings cannot be saved in {ckpt.CONFIG_NAME} ({exc}); use plain values "
                                "(text, numbers, lists) in the settings") from None

    def _restore(self, resume: Resume) -> None:
        opt = self.built.optimization
        try:
            ckpt.restore_training_state(self.model, opt.optimizer, resume.state, resume.tensors, self.out_dir)
            for g in opt.optimizer.param_groups:  # the new settings' learning rate wins
                g["base_lr"] = self.cfg.lr
            opt.schedule.load_state_dict(resume.state["schedule"])
            self.record.restore(resume.state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFolderError(f"{self.out_dir / ckpt.STATE_DIR / ckpt.STATE_JSON}: damaged resume state "
                                   f"({type(exc).__name__}: {exc}); train without resume") from None

    # -------------------------------------------------------------- one epoch
    def _batches(self, index: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's batches of the positions ``0..len(index)-1`` (class-balanced when asked)."""
        data, images = self.built.data, self.built.images
        weights = (balanced_weights(images.targets["train"], len(data.classes), data.multi_label)
                   if self.cfg.balanced_sampler else None)
        return epoch_batches(len(index), self.cfg.batch_size, rng, weights)

    def train_epoch_events(self, epoch: int) -> Generator[Event, None, OrderedDict]:
        """Train one epoch, yielding :class:`BatchProgress`; returns the train metrics.

        Raises ``steps.Cancelled`` (internal) when the cancel token is set between batches.
        """
        parts = self.built
        frozen = steps.set_backbone_phase(self.cfg, parts, epoch)
        if self.dist.enabled and self._net_frozen != frozen:  # DDP syncs the parameters trainable when wrapped
            self.net = ddp.wrap(self.dist, parts.model, parts.hardware.device)
            self._net_frozen = frozen
        rng, gen = steps.epoch_generators(self.cfg.seed, epoch, parts.hardware.device, self.dist.rank)
        batches = ddp.shard_batches(self.dist, self._batches(parts.images.index["train"], rng))
        net = self.net if self.net is not None else parts.model
        return (yield from steps.train_one_epoch(parts, net, self.cfg, epoch, batches, gen, self._cancelled))

    def validate_events(self, subset: str, epoch: int) -> Generator[Event, None, OrderedDict]:
        """Validate on ``subset`` (``'train'``, ``'val'`` or ``'test'``), yielding progress; returns the metrics.

        The probabilities of the last validation stay in :attr:`probabilities` (by subset).
        """
        parts = self.built
        probs, loss = yield from steps.subset_probabilities(parts, self.cfg, subset, epoch)
        self.probabilities[subset] = probs
        return compute_metrics(parts.images.targets[subset], probs, multi_label=parts.data.multi_label,
                               class_names=parts.data.classes, loss=loss, threshold=self.cfg.threshold)

    def best_val_probabilities(self) -> Generator[Event, None, np.ndarray]:
        """The best model's probabilities on the validation images: kept from its epoch, or (the best
        epoch was before a resume) predicted again with the saved weights, which then stay loaded."""
        if self.best_probabilities is not None:
            return self.best_probabilities
        path = ckpt.weights_path(self.out_dir, ckpt.read_model_config(self.out_dir))
        ckpt.load_state_checked(self.model, ckpt.read_safetensors(path), path)
        probs, _loss = yield from steps.subset_probabilities(self.built, self.cfg, "val", self.record.best_epoch or 0)
        self.best_probabilities = probs
        return probs

    def recalibrate_batch_norm(self, epoch: int) -> None:
        """Precise batch norm after ``epoch`` (see :func:`.steps.recalibrate_batch_norm`)."""
        steps.recalibrate_batch_norm(self.built, self.cfg, epoch)

    def train_one_epoch(self, epoch: int) -> OrderedDict:
        """Train one epoch (blocking) and return its ordered metric dict."""
        return _drain(self.train_epoch_events(epoch))

    def validate(self, subset: str = "val") -> OrderedDict:
        """Metrics of the current model on ``'train'``, ``'val'`` or ``'test'`` (no augmentation)."""
        return _drain(self.validate_events(subset, 0))

    def _cancelled(self, batch: int, num_batches: int) -> bool:
        """The cancel token; when distributed, agreed by all ranks every 10 batches and at the end."""
        if not self.dist.enabled:
            return self.cancel.is_set()
        if batch % 10 and batch != num_batches - 1:
            return False
        return ddp.any_rank(self.dist, self.cancel.is_set(), self.hardware.device)

    # -------------------------------------------------------------- checkpoints
    def _meta(self) -> dict[str, Any]:
        parts, rec = self.built, self.record
        images, hw = parts.images, parts.hardware
        return {
            "backbone": self.cfg.backbone,
            "classes": list(parts.data.classes),
            "multi_label": parts.data.multi_label,
            "in_chans": images.in_chans,
            "channel_names": images.channel_names,
            "input_size": images.input_size,
            "normalisation": images.norm.to_json(),
            "train_config": self.cfg.to_dict(),
            "seed": self.cfg.seed,
            "monitor": {"metric": rec.monitor, "mode": rec.mode},
            "split": {"source": parts.data.split.source, "ids": images.ids, "skipped": sorted(images.store.problems),
                      "near_duplicates": images.near_duplicates, **parts.data.group_meta(images.ids)},
            "project": str(self.project.root),
            "pretrained": {"source": self.cfg.pretrained, "report": parts.network.load_report},
            "device": str(hw.device),
            "precision": hw.precision,
            **({"distributed": {"world_size": self.dist.world_size,
                                "backend": torch.distributed.get_backend()}} if self.dist.enabled else {}),
            **({"lr_find": {"lr": self.lr_found.lr, "lrs": list(self.lr_found.lrs),
                            "losses": list(self.lr_found.losses)}} if self.lr_found else {}),
            **({"calibration": self.calibration} if self.calibration else {}),
            "history": rec.history,
            "best_epoch": rec.best_epoch,
            "best_metrics": rec.best_metrics,
        }

    def best_writer(self) -> Callable[[], Path]:
        """The write of the model folder as it is now (weights and metadata copied; rank 0 only)."""
        if not self.dist.is_main:  # rank 0 writes the model folder
            return lambda: self.out_dir
        out, tensors, meta = self.out_dir, ckpt.snapshot_tensors(self.model.state_dict()), copy.deepcopy(self._meta())

        def write() -> Path:
            ckpt.save_model_folder(out, tensors, meta)
            return out

        return write

    def state_writer(self, epoch: int) -> Callable[[], Path]:
        """The write of the resume state after ``epoch`` as it is now (copied; rank 0 only)."""
        folder = self.out_dir / ckpt.STATE_DIR
        if not self.dist.is_main:
            return lambda: folder
        images = self.built.images
        state = copy.deepcopy({
            "epoch": epoch, "schedule": self.schedule.state_dict(), **self.record.state(), "split": images.ids,
            "normalisation": images.norm.to_json(), "in_chans": images.in_chans,
            "channel_names": images.channel_names, "classes": list(self.data.classes),
            "train_config": self.cfg.to_dict()})
        tensors, opt_json = ckpt.training_state_tensors(self.model, self.optimizer)
        snapshot = (ckpt.snapshot_tensors(tensors), copy.deepcopy(opt_json))
        out = self.out_dir
        return lambda: ckpt.save_training_state(out, None, None, state, snapshot)

    def _save_best(self) -> Path:
        return self.best_writer()()

    def _save_state(self, epoch: int) -> Path:
        return self.state_writer(epoch)()

    # -------------------------------------------------------------- the whole run
    def events(self) -> Iterator[Event]:
        """Run every epoch; yields :class:`Started`, progress, :class:`EpochEnd`,
        :class:`CheckpointSaved` and finally :class:`Finished`.

        Under ``torchrun`` the process group this run joined is left at the end, also after an
        error or a cancel.
        """
        try:
            yield from loop.run_events(self)
        finally:
            ddp.leave(self.dist)


def _drain(gen: Generator[Event, None, OrderedDict]) -> OrderedDict:
    """Run an epoch generator to its end; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def run_training(data: Project | str | os.PathLike, config: TrainConfig | None = None,
                 out_dir: str | os.PathLike | None = None, *, cancel: CancelToken | None = None,
                 resume: bool = False) -> Iterator[Event]:
    """Train a classifier on a project's labelled images; a generator of :mod:`events`.

    The best model (by the monitored validation metric) is written to ``out_dir`` as soon as
    it improves; cancelling through ``cancel`` keeps it.
    """
    return Trainer(data, config, out_dir, cancel=cancel, resume=resume).events()


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the model folder, the best epoch and its validation metrics."""

    model_dir: Path | None
    best_epoch: int | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    cancelled: bool
    stopped_early: bool
    seconds: float
    warnings: list[str]


def train(data: Project | str | os.PathLike, config: TrainConfig | None = None,
          out_dir: str | os.PathLike | None = None, progress: Callable[[Event], None] | None = None,
          cancel: CancelToken | None = None, resume: bool = False) -> TrainResult:
    """Train (blocking) and return a :class:`TrainResult`; ``progress(event)`` sees every event.

    Examples
    --------
    >>> result = train("my_project", TrainConfig(epochs=5))     # doctest: +SKIP
    >>> result.best_metrics["accuracy"], result.model_dir        # doctest: +SKIP
    """
    warnings: list[str] = []
    finished: Finished | None = None
    for event in run_training(data, config, out_dir, cancel=cancel, resume=resume):
        if isinstance(event, WarningEvent):
            warnings.append(event.message)
        if isinstance(event, Finished):
            finished = event
        if progress is not None:
            progress(event)
    assert finished is not None
    return TrainResult(Path(finished.model_dir) if finished.model_dir else None, finished.best_epoch,
                       finished.best_metrics, finished.history, finished.cancelled, finished.stopped_early,
                       finished.seconds, warnings)
