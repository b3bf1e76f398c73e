"""The training engine: one generator of typed events that the GUI, the CLI and scripts consume.

>>> for ev in run_training("my_project", TrainConfig(epochs=5)):      # doctest: +SKIP
...     print(ev)

:class:`Trainer` holds one run (data, model, optimizer, schedule) and exposes timm-style
``train_one_epoch`` / ``validate`` returning ordered metric dicts; :meth:`Trainer.events` runs
the whole schedule with checkpoints, early stopping, cancelling and resuming.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import DeviceMemoryError, ImageReadError, ModelFolderError, TrainingError
from ..core.project import Project
from ..core.splits import Split, predefined, stratified_split
from . import checkpoint as ckpt
from . import distributed as ddp
from .config import TrainConfig
from .data import BatchAugment, Batcher, ImageStore, Normalisation, cache_dir_for, choose_normalisation
from .events import (BatchProgress, CancelToken, CheckpointSaved, EpochEnd, Event, Finished, Log, Started,
                     WarningEvent)
from .losses import balanced_class_weights, build_loss
from .metrics import compute_metrics, scalar_metrics
from .schedule import LRSchedule

MODELS_DIR = "cellclass_models"


# ---------------------------------------------------------------------------- devices
def resolve_device(name: str = "auto") -> torch.device:
    """``'auto'``: CUDA, then Apple MPS, then CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device=cuda asked for, but no CUDA GPU is visible; use device cpu or auto")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise TrainingError("device=mps asked for, but Apple's MPS is not available; use device cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``'auto'``: bf16 on CUDA GPUs that support it, fp32 elsewhere."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


# ---------------------------------------------------------------------------- the model API
def _model_api(name: str) -> Callable:
    """A function of the model layer (``build_model``, ``data_config``, ...)."""
    from . import models

    return getattr(models, name)


# ---------------------------------------------------------------------------- the data of a run
@dataclass
class RunData:
    """Labelled images of a run, their split and targets."""

    project: Project
    classes: tuple[str, ...]
    multi_label: bool
    split: Split
    labels: dict[str, tuple[str, ...]]
    notes: tuple[str, ...] = ()  # warnings about the data (e.g. a class left out)

    def targets(self, ids: Sequence[str]) -> np.ndarray:
        """Class indices ``(N,)`` or, multi-label, a multi-hot ``(N, K)`` float32 array."""
        index = {c: k for k, c in enumerate(self.classes)}
        if self.multi_label:
            out = np.zeros((len(ids), len(self.classes)), np.float32)
            for i, iid in enumerate(ids):
                for c in self.labels[iid]:
                    out[i, index[c]] = 1
            return out
        return np.array([index[self.labels[i][0]] for i in ids], dtype=np.int64)


def open_project(data: Project | str | os.PathLike) -> Project:
    """A :class:`Project` from itself or its folder (without writing settings)."""
    if isinstance(data, Project):
        return data
    return Project.open(data, create=False)


def make_split(project: Project, cfg: TrainConfig) -> Split:
    """The train/val/test split the settings ask for (see ``TrainConfig.split``)."""
    ids = project.labelled_ids()
    if not ids:
        raise TrainingError(f"{project.root}: no labelled images; label some images first")
    assignment = project.predefined_split() if cfg.split in ("auto", "predefined") else {}
    pre = predefined(assignment, ids, "predefined") if assignment else None
    if cfg.split == "predefined":
        if pre is None or not pre.train or not pre.val:
            raise TrainingError(f"{project.root}: split=predefined needs labelled train and val images in "
                                "cellclass_split.csv or train/ and val/ folders; use split=random")
        return pre
    if cfg.split == "auto" and pre is not None and pre.train and pre.val:
        return pre
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return stratified_split(ids, [project.labels(i) for i in ids], val_fraction=cfg.val_fraction,
                            test_fraction=cfg.test_fraction, seed=seed)


def run_data(project: Project, cfg: TrainConfig, saved_split: dict[str, list[str]] | None = None) -> RunData:
    """Classes, split and labels of a project for training.

    A class without any labelled image is left out of the model (an output that was never
    trained would be misleading), with a note naming it; a class whose images all landed in
    the validation or test split gets a note too.
    """
    if len(project.class_names) < (1 if project.multi_label else 2):
        raise TrainingError(f"{project.root}: training needs at least two classes (has {len(project.class_names)})")
    if saved_split is not None:
        labelled = set(project.labelled_ids())
        split = Split(*(tuple(i for i in saved_split.get(n, []) if i in labelled) for n in ("train", "val", "test")),
                      source="resumed")
    else:
        split = make_split(project, cfg)
    if not split.train:
        raise TrainingError(f"{project.root}: no training images after the split; label more images or raise "
                            "train_percent")
    if not split.val:
        raise TrainingError(f"{project.root}: no validation images after the split; label at least two images "
                            "per class or lower train_percent")
    labels = {i: project.labels(i) for i in (*split.train, *split.val, *split.test)}
    used = {c for cs in labels.values() for c in cs}
    in_train = {c for i in split.train for c in labels[i]}
    notes = []
    for c in project.class_names:
        if c not in used:
            notes.append(f"class '{c}' has no labelled images; the model is trained without it (label images of "
                         f"'{c}' and train again to include it, or remove the class)")
        elif c not in in_train:
            notes.append(f"class '{c}' has no images in the training split (only in validation/test); the model "
                         f"cannot learn it: label more images of '{c}'")
    classes = tuple(c for c in project.class_names if c in used)
    if not project.multi_label:
        present = {labels[i][0] for i in split.train}
        if len(present) < 2:
            raise TrainingError(f"{project.root}: the training images cover only {sorted(present)}; "
                                "label images of at least two classes")
    return RunData(project, classes, project.multi_label, split, labels, tuple(notes))


def default_out_dir(project: Project, backbone: str) -> Path:
    """``<project>/cellclass_models/<backbone>-<time>``, with ``-2``, ``-3``... when that exists."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in backbone)
    out = project.root / MODELS_DIR / f"{safe}-{stamp}"
    n = 2
    while out.exists():
        out = project.root / MODELS_DIR / f"{safe}-{stamp}-{n}"
        n += 1
    return out


# ---------------------------------------------------------------------------- the trainer
class _Cancelled(Exception):
    """Raised inside an epoch when the cancel token is set."""


class _Diverged(TrainingError):
    """Raised inside an epoch when the training loss becomes NaN or infinite (``what`` says which).

    :meth:`Trainer.events` turns it into a stop (or one error line when no epoch was good);
    callers of :meth:`Trainer.train_one_epoch` see it as a :class:`TrainingError`.
    """

    def __init__(self, what: str, lr: float) -> None:
        super().__init__(f"training diverged ({what}); train with a lower learning rate (lr={lr:g})")
        self.what = what


@contextlib.contextmanager
def _batch_norm_eval_for_one(model: nn.Module, batch: int) -> Iterator[None]:
    """For a batch of one image, run training-mode batch-norm layers in eval mode (their running
    statistics): a batch of one has no spread per channel after global pooling."""
    if batch != 1:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


class Trainer:
    """One training run: data, model, optimizer and schedule, built by :meth:`setup`.

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
        self.out_dir = Path(out_dir).expanduser().resolve() if out_dir else default_out_dir(self.project, self.cfg.backbone)
        self.cancel = cancel if cancel is not None else CancelToken()
        self.resume = resume
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] = {}
        self.start_epoch = 1
        self.bad_epochs = 0
        self.dist = ddp.SINGLE
        self._ready = False

    # -------------------------------------------------------------- setup
    def setup(self) -> Iterator[Event]:
        """Split, decode and cache the images, build the model; yields progress and log events.

        A cancel while the images are decoded ends it early, leaving the trainer not ready.
        """
        cfg = self.cfg
        resume_state = None
        self.dist, self.device = ddp.join(resolve_device(cfg.device))
        self.out_dir = Path(ddp.broadcast_object(self.dist, str(self.out_dir)))
        if self.resume:
            resume_state, self._resume_tensors = ckpt.read_training_state(self.out_dir)
            saved = resume_state.get("train_config", {})
            for key in ("backbone", "head", "pretrained"):
                if saved.get(key) != getattr(cfg, key):
                    raise ModelFolderError(f"{self.out_dir}: cannot resume with {key}={getattr(cfg, key)!r}; the "
                                           f"checkpoint was trained with {saved.get(key)!r}")
        elif self.out_dir.exists() and any(self.out_dir.iterdir()):
            if (self.out_dir / ckpt.CONFIG_NAME).exists():
                raise TrainingError(f"{self.out_dir}: already holds a model; pass --resume to continue it, "
                                    "or choose another --out (or delete the folder)")
            raise TrainingError(f"{self.out_dir}: folder exists and is not a model folder; choose another --out")
        self.data = run_data(self.project, cfg, resume_state["split"] if resume_state else None)
        saved_classes = resume_state.get("classes") if resume_state else None
        if saved_classes is not None and list(saved_classes) != list(self.data.classes):
            raise TrainingError(f"{self.out_dir}: cannot resume, the classes changed since the checkpoint "
                                f"({', '.join(saved_classes)} -> {', '.join(self.data.classes)}); train a new model")
        for note in self.data.notes:
            yield WarningEvent(note)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        sp = self.data.split
        yield Log(f"{len(sp.train)} training, {len(sp.val)} validation, {len(sp.test)} test images "
                  f"({sp.source} split); classes: {', '.join(self.data.classes)}")

        # model input size: the setting, else the backbone's default
        data_config = _model_api("data_config")
        pretrained = cfg.pretrained not in ("none", "")
        if resume_state:
            first = int(resume_state["in_chans"])
            self.channel_names = list(resume_state.get("channel_names", []))
        else:
            first = self._channels(sp.train)
        dc = data_config(cfg.backbone, pretrained, first)
        default_size = dc["input_size"]
        default_size = int(default_size[-1]) if isinstance(default_size, (tuple, list)) else int(default_size)
        self.input_size = int(cfg.input_size or default_size)

        ids = [*sp.train, *sp.val, *sp.test]
        self.store = ImageStore([self.project.path(i) for i in ids], self.input_size, cfg.scaling, first,
                                keys=ids, cache_dir=cache_dir_for(self.project.root), memory_mb=cfg.cache_memory_mb)
        first_builder = self.dist.is_main or not self.store.needs_disk()
        stop = False
        if not first_builder:  # the disk cache is written by rank 0, then reused by the others
            stop = ddp.any_rank(self.dist, False, self.device)  # waits for rank 0 (a barrier that hears its cancel)
        if not stop:
            notes: list[str] = []
            for done, total in self.store.build(cancel=self.cancel, log=notes.append):
                while notes:
                    yield Log(notes.pop(0))
                yield BatchProgress("cache", 0, done, total)
        if first_builder and self.store.needs_disk():
            ddp.any_rank(self.dist, self.store.cancelled, self.device)
        if self._cancelled(0, 1):  # before any epoch: no model folder, Finished(cancelled=True)
            self.store.close()
            yield Log("cancelled while decoding the images")
            return
        yield Log(f"{len(ids)} images decoded at {self.input_size} px "
                  f"({self.store.location} cache{', %d reused' % self.store.reused if self.store.reused else ''})")
        for key, reason in self.store.problems.items():
            yield WarningEvent(f"{key}: skipped, cannot be read ({reason})", key)
        pos = {k: n for n, k in enumerate(ids)}
        bad = set(self.store.problems)
        keep = lambda sub: [i for i in sub if i not in bad]  # noqa: E731
        self.ids = {"train": keep(sp.train), "val": keep(sp.val), "test": keep(sp.test)}
        if not self.ids["train"] or not self.ids["val"]:
            raise TrainingError("no readable training or validation images left; check the warnings")
        self.index = {k: np.array([pos[i] for i in v], dtype=np.int64) for k, v in self.ids.items()}
        self.targets = {k: self.data.targets(v) for k, v in self.ids.items()}
        self.in_chans = int(self.store.in_chans)

        # normalisation: ImageNet statistics for pretrained RGB stems, the training split's otherwise
        if resume_state:
            self.norm = Normalisation.from_json(resume_state["normalisation"])
        else:
            dc = data_config(cfg.backbone, pretrained, self.in_chans)
            self.norm = choose_normalisation(self.store, self.index["train"], cfg.scaling, dc.get("mean"), dc.get("std"))

        # model
        build_model = _model_api("build_model")
        torch.manual_seed(cfg.seed)
        model, report = build_model(cfg.backbone, len(self.data.classes), in_chans=self.in_chans,
                                    pretrained=None if not pretrained else cfg.pretrained, head=cfg.head,
                                    dropout=cfg.dropout)
        self.load_report = report.to_dict() if hasattr(report, "to_dict") else {"report": str(report)}
        if pretrained:
            yield Log(f"pretrained weights: {report}")
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model  # what the training step calls (DistributedDataParallel when distributed)
        self._net_frozen: bool | None = None
        self.batcher = Batcher(self.store, self.device)
        self.augment = BatchAugment(cfg, self.norm, self.device)
        self.targets_dev = {k: torch.from_numpy(v).to(self.device) for k, v in self.targets.items()}

        # loss, optimizer, schedule
        weights = None
        if cfg.class_weights == "balanced":
            weights = balanced_class_weights(self.targets["train"], len(self.data.classes), self.data.multi_label)
        self.criterion = build_loss(cfg.loss, multi_label=self.data.multi_label, class_weights=weights,
                                    label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma).to(self.device)
        self.optimizer = self._make_optimizer()
        self.steps_per_epoch = len(ddp.shard_batches(self.dist, self._batches(self.index["train"],
                                                                                np.random.default_rng(0))))
        self.monitor, self.mode = cfg.monitor_for(self.data.multi_label)
        self.schedule = LRSchedule(self.optimizer, cfg.schedule, cfg.epochs * self.steps_per_epoch,
                                   int(round(cfg.warmup_epochs * self.steps_per_epoch)), self.mode,
                                   cfg.plateau_patience, cfg.plateau_factor)
        if resume_state:
            self._restore(resume_state)
            yield Log(f"resumed after epoch {self.start_epoch - 1} from {self.out_dir / ckpt.STATE_DIR}")
        try:  # what config.json will hold must be writable before an epoch is spent on it
            ckpt.to_json_text(self._meta())
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"the settings cannot be saved in {ckpt.CONFIG_NAME} ({exc}); use plain values "
                                "(text, numbers, lists) in the settings") from None
        self._ready = True

    def _channels(self, ids: Sequence[str]) -> int:
        """Channel count of the first readable image (its channel names are kept for the model folder)."""
        for iid in ids:
            try:
                img = self.project.read_image(iid)
            except ImageReadError:
                continue
            self.channel_names = list(img.channel_names)
            return img.n_channels
        raise TrainingError(f"{self.project.root}: none of the training images can be read")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        backbone_parameters = _model_api("backbone_parameters")
        head_parameters = _model_api("head_parameters")
        head = [p for p in head_parameters(self.model)]
        head_ids = {id(p) for p in head}
        body = [p for p in backbone_parameters(self.model) if id(p) not in head_ids]
        groups = []
        if cfg.fine_tune != "head":
            groups.append({"params": body, "lr": cfg.lr, "lr_scale": 1.0, "name": "backbone"})
        groups.append({"params": head, "lr": cfg.lr, "lr_scale": 1.0, "name": "head"})
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=cfg.momentum > 0)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _set_phase(self, epoch: int) -> bool:
        """Freeze or unfreeze the backbone for ``epoch``; True while it is frozen."""
        cfg = self.cfg
        frozen = cfg.fine_tune == "head" or (cfg.fine_tune == "head-then-all" and epoch <= cfg.freeze_epochs)
        _model_api("set_backbone_trainable")(self.model, not frozen)
        if cfg.fine_tune == "head-then-all":
            for g in self.optimizer.param_groups:
                if g.get("name") == "backbone":
                    g["lr_scale"] = cfg.backbone_lr_factor
            self.schedule.refresh()
        return frozen

    # -------------------------------------------------------------- batches
    def _batches(self, index: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        cfg = self.cfg
        n = len(index)
        if cfg.balanced_sampler:
            t = self.targets["train"]
            if self.data.multi_label:
                freq = t.sum(axis=0) + 1e-9
                rare = np.where(t.any(axis=1), (t / freq).max(axis=1), 1.0 / n)
                w = rare
            else:
                counts = np.bincount(t, minlength=len(self.data.classes)).astype(np.float64)
                w = 1.0 / counts[t]
            order = rng.choice(n, size=n, replace=True, p=w / w.sum())
        else:
            order = rng.permutation(n)
        bs = cfg.batch_size
        batches = [order[i:i + bs] for i in range(0, n, bs)]
        if bs > 1 and len(batches) > 1 and len(batches[-1]) < 2:  # a lone last image: batch norm learns nothing
            batches.pop()
        return batches

    def _epoch_rng(self, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
        """Per-epoch random streams, so a resumed run repeats an uninterrupted one exactly."""
        seed = (self.cfg.seed * 1_000_003 + epoch * 7919) % (2**63)
        torch.manual_seed(seed)
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        gen.manual_seed(seed + 104_729 * self.dist.rank)  # own augmentation draws per rank
        return np.random.default_rng([self.cfg.seed, epoch]), gen  # batch order: the same on every rank

    # -------------------------------------------------------------- one epoch
    def train_epoch_events(self, epoch: int) -> Generator[Event, None, OrderedDict]:
        """Train one epoch, yielding :class:`BatchProgress`; returns the train metrics.

        Raises ``_Cancelled`` (internal) when the cancel token is set between batches.
        """
        frozen = self._set_phase(epoch)
        if self.dist.enabled and self._net_frozen != frozen:  # DDP syncs the parameters trainable when wrapped
            self.net = ddp.wrap(self.dist, self.model, self.device)
            self._net_frozen = frozen
        self.model.train()  # a frozen backbone keeps its batch-norm statistics (CellClassifier.train)
        rng, gen = self._epoch_rng(epoch)
        batches = ddp.shard_batches(self.dist, self._batches(self.index["train"], rng))
        rows = self.index["train"]
        tgt = self.targets_dev["train"]
        total = torch.zeros((), device=self.device)
        seen = 0
        probs, targets = [], []
        for b, x in enumerate(self.batcher.iterate([rows[bi] for bi in batches], self.cfg.num_workers)):
            if self._cancelled(b, len(batches)):
                raise _Cancelled
            sel = torch.as_tensor(batches[b], device=self.device)
            y = tgt.index_select(0, sel)
            try:
                loss, logits = self._step(x, y, gen)
            except RuntimeError as exc:
                if self.device.type == "cuda" and is_oom(exc):
                    raise self._oom_error() from None
                raise
            n = len(batches[b])
            total += loss.detach() * n
            seen += n
            probs.append(self._probabilities(logits.detach()))
            targets.append(y)
            last = b == len(batches) - 1
            show = last or b % 10 == 0
            yield BatchProgress("train", epoch, b + 1, len(batches), float(total / seen) if show else None)
        if self._cancelled(0, 1):
            raise _Cancelled
        total = ddp.sum_scalar(self.dist, total)
        seen = int(ddp.sum_scalar(self.dist, torch.tensor(float(seen), device=self.device)).item())
        p = ddp.gather_rows(self.dist, torch.cat(probs).float())
        t = ddp.gather_rows(self.dist, torch.cat(targets))
        return compute_metrics(t.cpu().numpy(), p.cpu().numpy(),
                               multi_label=self.data.multi_label, class_names=self.data.classes,
                               loss=float(total / max(seen, 1)), threshold=self.cfg.threshold)

    def _cancelled(self, batch: int, num_batches: int) -> bool:
        """The cancel token; when distributed, agreed by all ranks every 10 batches and at the end."""
        if not self.dist.enabled:
            return self.cancel.is_set()
        if batch % 10 and batch != num_batches - 1:
            return False
        return ddp.any_rank(self.dist, self.cancel.is_set(), self.device)

    def _step(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.augment(x, gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _batch_norm_eval_for_one(self.model, x.shape[0]), autocast(self.device, self.precision):
            logits = self.net(x)
        loss = self.criterion(logits.float(), y)
        if not torch.isfinite(loss):
            raise _Diverged(f"training loss {float(loss.detach())}", self.cfg.lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step_batch()
        return loss, logits

    def recalibrate_batch_norm(self, epoch: int) -> None:
        """Re-estimate the running statistics of trainable batch-norm layers ("precise BN").

        With few optimizer steps per epoch (small projects) the running averages lag far
        behind the weights and the model in eval mode predicts one class; a forward pass over
        up to ``bn_recalibrate`` training images (cumulative average) fixes that for about a
        third of an epoch's compute. A frozen backbone keeps its own statistics.
        """
        limit = self.cfg.bn_recalibrate
        frozen = getattr(self.model, "backbone_frozen", False)
        skip = set(self.model.backbone.modules()) if frozen else set()
        bns = [m for m in self.model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m not in skip]
        if not limit or not bns:
            return
        rows = self.index["train"]
        rng = np.random.default_rng([self.cfg.seed, epoch, 1])
        pick = np.sort(rng.permutation(len(rows))[:limit])
        bs = max(2, self.cfg.batch_size * 2)
        batches = [rows[pick[i:i + bs]] for i in range(0, len(pick), bs)]
        batches = [b for b in batches if len(b) >= 2]  # one image has no batch statistics
        if not batches:
            return
        batches = batches[self.dist.rank::self.dist.world_size]  # the statistics are combined below
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        self.model.train()
        with torch.no_grad():
            for x in self.batcher.iterate(batches, self.cfg.num_workers):
                x = self.augment.normalise(x)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.precision):
                    self.model(x)
        ddp.average_batch_norm(self.dist, bns)
        for m, mom in zip(bns, saved):
            m.momentum = mom

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.data.multi_label else torch.softmax(logits, dim=1)

    def train_one_epoch(self, epoch: int) -> OrderedDict:
        """Train one epoch (blocking) and return its ordered metric dict."""
        gen = self.train_epoch_events(epoch)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def validate(self, subset: str = "val") -> OrderedDict:
        """Metrics of the current model on ``'train'``, ``'val'`` or ``'test'`` (no augmentation)."""
        gen = self.validate_events(subset, 0)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def validate_events(self, subset: str, epoch: int) -> Generator[Event, None, OrderedDict]:
        rows = self.index[subset]
        tgt = self.targets_dev[subset]
        bs = max(1, self.cfg.batch_size * 2)
        mine = ddp.shard_rows(self.dist, len(rows))  # positions this rank validates; gathered in order below
        batches = [mine[i:i + bs] for i in range(0, len(mine), bs)]
        self.model.eval()
        probs = []
        with torch.inference_mode():
            total = torch.zeros((), device=self.device)
            for b, x in enumerate(self.batcher.iterate([rows[bi] for bi in batches], self.cfg.num_workers)):
                x = self.augment.normalise(x)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.precision):
                    logits = self.model(x).float()
                y = tgt[batches[b][0]:batches[b][-1] + 1]
                total += self.criterion(logits, y) * len(batches[b])
                probs.append(self._probabilities(logits))
                yield BatchProgress("val", epoch, b + 1, len(batches))
        p = torch.cat(probs) if probs else torch.zeros((0, len(self.data.classes)), device=self.device)
        p = ddp.gather_rows(self.dist, p).cpu().numpy()
        total = ddp.sum_scalar(self.dist, total)
        return compute_metrics(self.targets[subset], p, multi_label=self.data.multi_label,
                               class_names=self.data.classes, loss=float(total / max(len(rows), 1)),
                               threshold=self.cfg.threshold)

    # -------------------------------------------------------------- out of memory
    def _oom_error(self) -> DeviceMemoryError:
        """Find a batch size that fits (halving) and describe it in one line."""
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        bs = self.cfg.batch_size
        fit = None
        trial = bs // 2
        while trial >= 1:
            try:
                x = torch.zeros((trial, self.in_chans, self.input_size, self.input_size), device=self.device)
                with autocast(self.device, self.precision):
                    out = self.model(x)
                out.float().sum().backward()
                self.optimizer.zero_grad(set_to_none=True)
                fit = trial
                break
            except RuntimeError as exc:
                if not is_oom(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                trial //= 2
        where = f"{self.cfg.backbone} at {self.input_size} px, {self.precision}"
        if fit is None:
            return DeviceMemoryError(f"the GPU ran out of memory even at batch size 1 ({where}); use a smaller "
                                     "input size or backbone, or device=cpu")
        return DeviceMemoryError(f"the GPU ran out of memory at batch size {bs} ({where}); batch size {fit} fits: "
                                 f"rerun with --batch-size {fit}")

    # -------------------------------------------------------------- checkpoints
    def _meta(self) -> dict[str, Any]:
        return {
            "backbone": self.cfg.backbone,
            "classes": list(self.data.classes),
            "multi_label": self.data.multi_label,
            "in_chans": self.in_chans,
            "channel_names": self.channel_names,
            "input_size": self.input_size,
            "normalisation": self.norm.to_json(),
            "train_config": self.cfg.to_dict(),
            "seed": self.cfg.seed,
            "monitor": {"metric": self.monitor, "mode": self.mode},
            "split": {"source": self.data.split.source, "ids": self.ids,
                      "skipped": sorted(self.store.problems)},
            "project": str(self.project.root),
            "pretrained": {"source": self.cfg.pretrained, "report": self.load_report},
            "device": str(self.device),
            "precision": self.precision,
            **({"distributed": {"world_size": self.dist.world_size,
                                "backend": torch.distributed.get_backend()}} if self.dist.enabled else {}),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
        }

    def _save_best(self) -> Path:
        if not self.dist.is_main:  # rank 0 writes the model folder
            return self.out_dir
        ckpt.save_model_folder(self.out_dir, self.model, self._meta())
        return self.out_dir

    def _save_state(self, epoch: int) -> Path:
        if not self.dist.is_main:
            return self.out_dir / ckpt.STATE_DIR
        state = {"epoch": epoch, "schedule": self.schedule.state_dict(), "history": self.history,
                 "best_value": self.best_value, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                 "bad_epochs": self.bad_epochs, "split": self.ids, "normalisation": self.norm.to_json(),
                 "in_chans": self.in_chans, "channel_names": self.channel_names,
                 "classes": list(self.data.classes), "train_config": self.cfg.to_dict()}
        return ckpt.save_training_state(self.out_dir, self.model, self.optimizer, state)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            ckpt.restore_training_state(self.model, self.optimizer, state, self._resume_tensors, self.out_dir)
            for g in self.optimizer.param_groups:  # the new settings' learning rate wins
                g["base_lr"] = self.cfg.lr
            self.schedule.load_state_dict(state["schedule"])
            self.history = list(state["history"])
            self.best_value = state["best_value"]
            self.best_epoch = state["best_epoch"]
            self.best_metrics = state["best_metrics"]
            self.bad_epochs = int(state["bad_epochs"])
            self.start_epoch = int(state["epoch"]) + 1
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFolderError(f"{self.out_dir / ckpt.STATE_DIR / ckpt.STATE_JSON}: damaged resume state "
                                   f"({type(exc).__name__}: {exc}); train without resume") from None
        del self._resume_tensors

    def _improved(self, value: float, loss: float) -> bool:
        """Better monitored value; on a tie (e.g. accuracy 1.0 again) a lower validation loss."""
        if self.best_value is None or math.isnan(self.best_value):
            return True
        if value == self.best_value and self.monitor != "loss":
            return loss < float(self.best_metrics.get("loss", math.inf))
        return value > self.best_value if self.mode == "max" else value < self.best_value

    # -------------------------------------------------------------- the whole run
    def events(self) -> Iterator[Event]:
        """Run every epoch; yields :class:`Started`, progress, :class:`EpochEnd`,
        :class:`CheckpointSaved` and finally :class:`Finished`.

        Under ``torchrun`` the process group this run joined is left at the end, also after an
        error or a cancel.
        """
        try:
            yield from self._events()
        finally:
            ddp.leave(self.dist)

    def _events(self) -> Iterator[Event]:
        t0 = time.perf_counter()
        if not self._ready:
            yield from self.setup()
            if not self._ready:  # cancelled during setup
                yield Finished(None, None, {}, True, False, 0, time.perf_counter() - t0, [])
                return
        cfg = self.cfg
        sp = self.ids
        yield Started(len(sp["train"]), len(sp["val"]), len(sp["test"]), self.data.classes, str(self.device),
                      self.precision, self.input_size, self.in_chans, cfg.epochs, self.start_epoch,
                      self.steps_per_epoch, self.data.split.source)
        cancelled = stopped = False
        diverged: str | None = None
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            te = time.perf_counter()
            try:
                train_m = yield from self.train_epoch_events(epoch)
                if self.cancel.is_set():
                    raise _Cancelled
                self.recalibrate_batch_norm(epoch)
                val_m = yield from self.validate_events("val", epoch)
            except _Cancelled:
                cancelled = True
                epoch -= 1
                break
            except _Diverged as exc:
                diverged = exc.what
                break
            seconds = time.perf_counter() - te
            value = float(val_m[self.monitor])
            lr = self.schedule.lr
            diverged = self._non_finite(train_m, val_m, value)
            best = diverged is None and self._improved(value, float(val_m["loss"]))
            if diverged is None:
                self.schedule.step_epoch(value)
            if best:
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
                self.best_metrics = dict(val_m)
            else:
                self.bad_epochs += 1
            self.history.append({"epoch": epoch, "lr": lr, "seconds": round(seconds, 3),
                                 "train": dict(scalar_metrics(train_m)), "val": dict(scalar_metrics(val_m))})
            yield EpochEnd(epoch, cfg.epochs, dict(train_m), dict(val_m), lr, best, self.monitor, seconds,
                           len(sp["train"]) / max(seconds, 1e-9))
            if diverged is not None:  # never saved: neither as the best model nor as the resume state
                break
            if best:
                path = self._save_best()
                yield CheckpointSaved(str(path), epoch, "best", self.monitor, value)
            yield CheckpointSaved(str(self._save_state(epoch)), epoch, "last")
            if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
                stopped = True
                yield Log(f"early stopping: no better {self.monitor} for {self.bad_epochs} epochs")
                break
        if diverged is not None:
            lower = f"lr={cfg.lr:g}, e.g. lr={cfg.lr / 10:g}"
            if self.best_epoch is None:
                raise TrainingError(f"training diverged in epoch {epoch} ({diverged}) before any epoch gave a finite "
                                    f"model; nothing was saved; train again with a lower learning rate ({lower})")
            stopped = True
            yield WarningEvent(f"training diverged in epoch {epoch} ({diverged}); stopped and kept the model of "
                               f"epoch {self.best_epoch}; to go further, train with a lower learning rate ({lower})")
        model_dir = None
        if self.best_epoch is not None:
            if self.dist.is_main:
                ckpt.write_model_config(self.out_dir, {**self._meta(), "cancelled": cancelled, "stopped_early": stopped,
                                                       **({"diverged_epoch": epoch} if diverged else {})})
            model_dir = str(self.out_dir)
        yield Finished(model_dir, self.best_epoch, dict(self.best_metrics), cancelled, stopped,
                       max(0, epoch - self.start_epoch + 1), time.perf_counter() - t0, list(self.history))

    def _non_finite(self, train_m: dict[str, Any], val_m: dict[str, Any], value: float) -> str | None:
        """What went non-finite in an epoch (NaN/infinite losses, monitored value or weights), or None."""
        for what, v in (("training loss", train_m.get("loss")), ("validation loss", val_m.get("loss")),
                        (f"validation {self.monitor}", value)):
            if v is not None and not math.isfinite(float(v)):
                return f"{what} {float(v)}"
        bad = ckpt.non_finite_tensors(self.model.state_dict())
        if bad:
            return f"{len(bad)} weight tensor(s) hold NaN or infinity"
        return None


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
