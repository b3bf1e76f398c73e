"""One epoch on built parts, timm style: train_one_epoch and validate return ordered metric dicts; precise BN."""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator

import numpy as np
import torch
from torch import nn

from ..core.errors import DeviceMemoryError, TrainingError
from . import distributed as ddp
from . import models
from .builders import RunParts
from .config import TrainConfig
from .device import autocast, flush_denormals, is_oom, largest_fitting_batch
from .events import BatchProgress, Event
from .metrics import compute_metrics

__all__ = ["Cancelled", "Diverged", "epoch_generators", "recalibrate_batch_norm", "set_backbone_phase",
           "subset_probabilities", "train_one_epoch"]


class Cancelled(Exception):
    """Raised inside an epoch when the cancel token is set."""


class Diverged(TrainingError):
    """Raised inside an epoch when the training loss becomes NaN or infinite (``what`` says which).

    The trainer turns it into a stop (or one error line when no epoch was good); callers of
    ``Trainer.train_one_epoch`` see it as a :class:`TrainingError`.
    """

    def __init__(self, what: str, lr: float) -> None:
        super().__init__(f"training diverged ({what}); train with a lower learning rate (lr={lr:g})")
        self.what = what


@contextlib.contextmanager
def batch_norm_eval_for_one(model: nn.Module, batch: int) -> Iterator[None]:
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


def set_backbone_phase(cfg: TrainConfig, parts: RunParts, epoch: int) -> bool:
    """Freeze or unfreeze the backbone for ``epoch``; True while it is frozen."""
    frozen = cfg.fine_tune_mode == "head" or (cfg.fine_tune_mode == "head-then-all" and epoch <= cfg.freeze_epochs)
    models.set_backbone_trainable(parts.model, not frozen)
    if cfg.fine_tune_mode == "head-then-all":
        for g in parts.optimization.optimizer.param_groups:
            if g.get("name") == "backbone":
                g["lr_scale"] = cfg.backbone_lr_factor
        parts.optimization.schedule.refresh()
    return frozen


def epoch_generators(seed: int, epoch: int, device: torch.device, rank: int
                     ) -> tuple[np.random.Generator, torch.Generator]:
    """Per-epoch random streams, so a resumed run repeats an uninterrupted one exactly.

    The batch order (numpy) is the same on every rank; the augmentation draws (torch) differ.
    """
    torch_seed = (seed * 1_000_003 + epoch * 7919) % (2**63)
    torch.manual_seed(torch_seed)
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
    gen.manual_seed(torch_seed + 104_729 * rank)
    return np.random.default_rng([seed, epoch]), gen


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Sigmoid (multi-label) or softmax of float32 logits."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def train_one_epoch(parts: RunParts, net: nn.Module, cfg: TrainConfig, epoch: int, batches: list[np.ndarray],
                    gen: torch.Generator, cancelled: Callable[[int, int], bool]
                    ) -> Generator[Event, None, OrderedDict]:
    """Train ``net`` (the model, or its distributed wrapper) on ``batches``; yields :class:`BatchProgress`
    and returns the epoch's training metrics.

    Raises :class:`Cancelled` when ``cancelled(batch, num_batches)`` says so between batches,
    :class:`Diverged` on a non-finite loss, and :class:`DeviceMemoryError` (naming a batch size
    that fits) when the GPU runs out of memory.
    """
    parts.model.train()  # a frozen backbone keeps its batch-norm statistics (CellClassifier.train)
    stats = EpochStatistics(parts, cfg, batches)
    flush_denormals(parts.hardware.device)  # for the epoch: a fresh model's denormals slow the CPU 30x
    try:
        metrics = yield from _train_batches(parts, net, cfg, epoch, batches, gen, cancelled, stats)
    except BaseException:
        stats.finish(complete=False)
        raise
    finally:
        flush_denormals(parts.hardware.device, on=False)
    stats.finish(complete=True)
    return metrics


def _train_batches(parts: RunParts, net: nn.Module, cfg: TrainConfig, epoch: int, batches: list[np.ndarray],
                   gen: torch.Generator, cancelled: Callable[[int, int], bool], stats: EpochStatistics
                   ) -> Generator[Event, None, OrderedDict]:
    """The batches of :func:`train_one_epoch`."""
    hw, images, data = parts.hardware, parts.images, parts.data
    rows = images.index["train"]
    tgt = images.targets_dev["train"]
    total = torch.zeros((), device=hw.device)
    seen = 0
    # written in place: a small tensor kept per batch fragmented the heap under the batches' large
    # buffers (glibc), and the process grew by about 1.5 MB per batch (3 GB in an epoch of 80,000 images)
    probs = torch.empty((sum(len(bi) for bi in batches), len(data.classes)), device=hw.device)
    # on a GPU the loss is checked where a copy to the host happens anyway (every 10 batches and at
    # the end), not after each step: that would wait for the device every batch; a NaN step is never
    # saved, since the whole epoch then counts as diverged
    check_each = hw.device.type != "cuda"
    for b, x in enumerate(parts.batcher.iterate([rows[bi] for bi in batches], cfg.num_workers)):
        if cancelled(b, len(batches)):
            raise Cancelled
        stats.before(b)
        y = tgt.index_select(0, torch.as_tensor(batches[b], device=hw.device))
        out_of_memory = False
        try:
            loss, logits = train_step(parts, net, cfg, x, y, gen, check_finite=check_each)
        except RuntimeError as exc:
            if not (hw.device.type == "cuda" and is_oom(exc)):
                raise
            out_of_memory = True
        if out_of_memory:  # probed here: the failed step's tensors, held by the traceback, are freed by now
            del x, y
            raise oom_error(parts, cfg)
        n = len(batches[b])
        total += loss.detach() * n
        probs[seen:seen + n] = probabilities(logits.detach(), data.multi_label)
        seen += n
        del x, y, loss, logits
        show = b == len(batches) - 1 or b % 10 == 0
        mean = float(total / seen) if show else None
        if mean is not None and not np.isfinite(mean):
            raise Diverged(f"training loss {mean}", cfg.lr)
        yield BatchProgress("train", epoch, b + 1, len(batches), mean)
    if cancelled(0, 1):
        raise Cancelled
    total = ddp.sum_scalar(hw.dist, total)
    seen = int(ddp.sum_scalar(hw.dist, torch.tensor(float(seen), device=hw.device)).item())
    order = torch.as_tensor(np.concatenate(batches) if batches else np.zeros(0, np.int64), device=hw.device)
    p = ddp.gather_rows(hw.dist, probs.float())  # every batch ran: a cancel or an error raised above
    t = ddp.gather_rows(hw.dist, tgt.index_select(0, order))
    return compute_metrics(t.cpu().numpy(), p.cpu().numpy(), multi_label=data.multi_label, class_names=data.classes,
                           loss=float(total / max(seen, 1)), threshold=cfg.threshold)


def train_step(parts: RunParts, net: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
               gen: torch.Generator, schedule: bool = True, check_finite: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch (augmented on its device); returns the loss and the logits.

    ``schedule=False`` leaves the learning rates as they are (the range test sets them itself);
    ``check_finite=False`` leaves the check of the loss (a wait for the device) to the caller.
    """
    hw, opt = parts.hardware, parts.optimization
    x = parts.augment(x, gen)
    if hw.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with batch_norm_eval_for_one(parts.model, x.shape[0]), autocast(hw.device, hw.precision):
        logits = net(x)
    loss = opt.criterion(logits.float(), y)
    if check_finite and not torch.isfinite(loss):
        raise Diverged(f"training loss {float(loss.detach())}", cfg.lr)
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)
    opt.optimizer.step()
    if schedule:
        opt.schedule.step_batch()
    return loss, logits


def oom_error(parts: RunParts, cfg: TrainConfig) -> DeviceMemoryError:
    """One line for a GPU out of memory, naming a batch size that fits (found by halving)."""
    hw, images = parts.hardware, parts.images
    bs = cfg.batch_size
    fit = largest_fitting_batch(parts.model, parts.optimization.optimizer,
                                (images.in_chans, images.input_size, images.input_size), hw.device, hw.precision, bs)
    where = f"{cfg.backbone} at {images.input_size} px, {hw.precision}"
    if fit is None:
        return DeviceMemoryError(f"the GPU ran out of memory even at batch size 1 ({where}); use a smaller "
                                 "input size or backbone, or device=cpu")
    return DeviceMemoryError(f"the GPU ran out of memory at batch size {bs} ({where}); batch size {fit} fits: "
                             f"rerun with --batch-size {fit}")


def subset_probabilities(parts: RunParts, cfg: TrainConfig, subset: str, epoch: int
                         ) -> Generator[Event, None, tuple[np.ndarray, float]]:
    """The model's probabilities ``(N, K)`` on a subset (no augmentation) and its mean loss; yields progress.

    Under torchrun each rank predicts its share and the probabilities are gathered in order.
    """
    hw, images, data = parts.hardware, parts.images, parts.data
    rows = images.index[subset]
    tgt = images.targets_dev[subset]
    bs = max(1, cfg.batch_size * 2)
    mine = ddp.shard_rows(hw.dist, len(rows))  # positions this rank validates; gathered in order below
    batches = [mine[i:i + bs] for i in range(0, len(mine), bs)]
    parts.model.eval()
    p = torch.empty((len(mine), len(data.classes)), device=hw.device)  # in place: see _train_batches
    with torch.inference_mode():
        total = torch.zeros((), device=hw.device)
        at = 0
        for b, x in enumerate(parts.batcher.iterate([rows[bi] for bi in batches], cfg.num_workers)):
            logits = _forward(parts, x).float()
            y = tgt[batches[b][0]:batches[b][-1] + 1]
            total += parts.optimization.criterion(logits, y) * len(batches[b])
            p[at:at + len(batches[b])] = probabilities(logits, data.multi_label)
            at += len(batches[b])
            del x, logits
            yield BatchProgress("val", epoch, b + 1, len(batches))
    p = ddp.gather_rows(hw.dist, p).cpu().numpy()
    total = ddp.sum_scalar(hw.dist, total)
    return p, float(total / max(len(rows), 1))


def _forward(parts: RunParts, x: torch.Tensor) -> torch.Tensor:
    """The model's output on a normalised, unaugmented batch."""
    hw = parts.hardware
    x = parts.augment.normalise(x)
    if hw.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(hw.device, hw.precision):
        return parts.model(x)


def trainable_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers whose statistics training changes (a frozen backbone keeps its own)."""
    skip = set(model.backbone.modules()) if getattr(model, "backbone_frozen", False) else set()
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m not in skip]


#: epochs with fewer training images than this many batches re-estimate the statistics with a pass instead
EPOCH_STATISTICS_MIN_BATCHES = 4


def epoch_statistics_apply(cfg: TrainConfig, n_train: int) -> bool:
    """Whether ``bn_statistics='epoch'`` averages during training: the epoch has at least
    :data:`EPOCH_STATISTICS_MIN_BATCHES` batches' worth of images (smaller epochs would average a
    batch or two, too few images for the statistics of the last layers; they get the pass)."""
    return cfg.bn_statistics == "epoch" and n_train >= EPOCH_STATISTICS_MIN_BATCHES * cfg.batch_size


class EpochStatistics:
    """``bn_statistics='epoch'``: batch-norm statistics averaged over the second half of an epoch's batches.

    With few optimizer steps per epoch (small projects) PyTorch's running averages lag far
    behind the weights, and the model in eval mode predicts one class. Here the statistics are
    reset before the epoch's middle batch and then averaged evenly (``momentum=None``) over the
    batches that follow, which were computed with the weights of the epoch's last steps: nearly
    what a precise-BN pass gives, without its extra forward pass. Under torchrun the ranks'
    statistics are averaged. Nothing happens when the second half has no batch of 2 or more images.
    """

    def __init__(self, parts: RunParts, cfg: TrainConfig, batches: list[np.ndarray]) -> None:
        self.parts = parts
        self.start = len(batches) // 2
        self.sizes = [len(b) for b in batches]
        self.small = max(2, cfg.batch_size // 2)  # a smaller (last) batch is left out of the average
        use = (epoch_statistics_apply(cfg, len(parts.images.index["train"]))
               and any(n >= self.small for n in self.sizes[self.start:]))
        self.bns = trainable_batch_norms(parts.model) if use else []
        self.saved: list[float | None] | None = None

    def before(self, batch: int) -> None:
        """Called before training batch ``batch`` (0-based)."""
        if not self.bns or batch < self.start:
            return
        if self.saved is None:
            self.saved = [m.momentum for m in self.bns]
            for m in self.bns:
                m.reset_running_stats()
        for m in self.bns:  # cumulative average (None); 0: this batch leaves the statistics as they are
            m.momentum = None if self.sizes[batch] >= self.small else 0.0

    def finish(self, complete: bool) -> None:
        """Restore the layers' momentum; after a ``complete`` epoch combine the ranks' statistics."""
        if self.saved is None:
            return
        for m, mom in zip(self.bns, self.saved, strict=True):
            m.momentum = mom
        self.saved = None
        if complete:  # every rank gets here (an error or a cancel may stop some ranks only)
            ddp.average_batch_norm(self.parts.hardware.dist, self.bns)


def recalibrate_batch_norm(parts: RunParts, cfg: TrainConfig, epoch: int) -> None:
    """Re-estimate the running statistics of trainable batch-norm layers ("precise BN").

    With few optimizer steps per epoch (small projects) the running averages lag far behind
    the weights and the model in eval mode predicts one class; a forward pass over up to
    ``bn_recalibrate`` training images (cumulative average) fixes that for about a third of an
    epoch's compute. A frozen backbone keeps its own statistics. With ``bn_statistics='pass'``, and
    with ``'epoch'`` (the default) when the epoch is too small to average (:func:`epoch_statistics_apply`).
    """
    model = parts.model
    bns = trainable_batch_norms(model)
    if cfg.bn_statistics == "running" or epoch_statistics_apply(cfg, len(parts.images.index["train"])) \
            or not cfg.bn_recalibrate or not bns:
        return
    rows = parts.images.index["train"]
    rng = np.random.default_rng([cfg.seed, epoch, 1])
    pick = np.sort(rng.permutation(len(rows))[:cfg.bn_recalibrate])
    bs = max(2, cfg.batch_size * 2)
    batches = [b for b in (rows[pick[i:i + bs]] for i in range(0, len(pick), bs))
               if len(b) >= 2]  # one image has no batch statistics
    if not batches:
        return
    dist = parts.hardware.dist
    batches = batches[dist.rank::dist.world_size]  # the statistics are combined below
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    with torch.no_grad():
        for x in parts.batcher.iterate(batches, cfg.num_workers):
            _forward(parts, x)
    ddp.average_batch_norm(dist, bns)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
