"""A whole run on a Trainer: its epochs, the best epoch, early stopping, divergence, cancelling, final config."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import TrainingError
from . import calibration, steps
from . import checkpoint as ckpt
from .events import BatchProgress, CheckpointSaved, EpochEnd, Event, Finished, Log, Started, WarningEvent

if TYPE_CHECKING:
    from .engine import Trainer

__all__ = ["run_events"]


@dataclass
class _Outcome:
    """How the epochs ended."""

    epoch: int
    cancelled: bool = False
    stopped: bool = False
    diverged: str | None = None


def run_events(tr: Trainer) -> Iterator[Event]:
    """Set the trainer up (unless it is), run its epochs and finish: every event of the run."""
    t0 = time.perf_counter()
    if tr.parts is None:
        yield from tr.setup()
        if tr.parts is None:  # cancelled during setup
            yield Finished(None, None, {}, True, False, 0, time.perf_counter() - t0, [], tr.startup.to_dict())
            return
    parts, rec = tr.built, tr.record
    ids = parts.images.ids
    yield Started(len(ids["train"]), len(ids["val"]), len(ids["test"]), parts.data.classes,
                  str(parts.hardware.device), parts.hardware.precision, parts.images.input_size,
                  parts.images.in_chans, tr.cfg.epochs, rec.start_epoch, tr.steps_per_epoch,
                  parts.data.split.source)
    out = _Outcome(rec.start_epoch - 1)
    first = True
    saves = ckpt.BackgroundSaves()
    try:
        for epoch in range(rec.start_epoch, tr.cfg.epochs + 1):
            out.epoch = epoch
            for event in _epoch(tr, epoch, out, saves):
                yield event
                if first and isinstance(event, BatchProgress) and event.phase == "train":
                    first = False
                    tr.startup.lap("first step")
                    yield Log(tr.startup.line())
                yield from saves.done()
            if out.cancelled or out.stopped or out.diverged is not None:
                break
        yield from saves.flush()  # the model folder is complete before calibration reads it and config.json is final
    finally:
        saves.close()
    yield from _finish(tr, out, time.perf_counter() - t0)


def _epoch(tr: Trainer, epoch: int, out: _Outcome, saves: ckpt.BackgroundSaves) -> Iterator[Event]:
    """Train, recalibrate and validate one epoch, then record, save and judge it (``out`` says how it ended).

    A better model is copied here, the resume state when a write is due (and after the last
    epoch); both are written in the background while training goes on (``saves``, paced to a
    few percent of the time: every epoch when epochs take longer than about 30 writes; always
    at the end of the run, also when it is cancelled or stopped). A crash (kill, power loss)
    leaves the previous complete files, at most one pace interval old.
    """
    te = time.perf_counter()
    try:
        train_m = yield from tr.train_epoch_events(epoch)
        if tr.cancel.is_set():
            raise steps.Cancelled
        tr.recalibrate_batch_norm(epoch)
        val_m = yield from tr.validate_events("val", epoch)
    except steps.Cancelled:
        out.cancelled, out.epoch = True, epoch - 1
        return
    except steps.Diverged as exc:
        out.diverged = exc.what
        return
    seconds = time.perf_counter() - te
    rec = tr.record
    value = float(val_m[rec.monitor])
    lr = tr.schedule.lr
    out.diverged = _non_finite(tr, train_m, val_m, value)
    best = out.diverged is None and rec.improved(value, float(val_m["loss"]))
    if out.diverged is None:
        tr.schedule.step_epoch(value)
    rec.end_epoch(epoch, lr, seconds, train_m, val_m, value, best)
    yield EpochEnd(epoch, tr.cfg.epochs, dict(train_m), dict(val_m), lr, best, rec.monitor, seconds,
                   len(tr.ids["train"]) / max(seconds, 1e-9))
    if out.diverged is not None:  # never saved: neither as the best model nor as the resume state
        return
    stopping = bool(tr.cfg.early_stopping and rec.bad_epochs >= tr.cfg.early_stopping)
    if best:  # always copied: the best weights exist only now
        tr.best_probabilities = tr.probabilities.get("val")
        saves.offer("best", tr.best_writer(), CheckpointSaved(str(tr.out_dir), epoch, "best", rec.monitor, value))
    if saves.due() or stopping or epoch == tr.cfg.epochs:  # the resume state: copied when it will be written
        saves.offer("last", tr.state_writer(epoch), CheckpointSaved(str(tr.out_dir / ckpt.STATE_DIR), epoch, "last"))
    yield from saves.done()  # starts them when due
    if stopping:
        out.stopped = True
        yield Log(f"early stopping: no better {rec.monitor} for {rec.bad_epochs} epochs")


def _finish(tr: Trainer, out: _Outcome, seconds: float) -> Iterator[Event]:
    """After the last epoch: the divergence verdict, the final config.json and :class:`Finished`."""
    cfg, rec = tr.cfg, tr.record
    if out.diverged is not None:
        lower = f"lr={cfg.lr:g}, e.g. lr={cfg.lr / 10:g}"
        if rec.best_epoch is None:
            raise TrainingError(f"training diverged in epoch {out.epoch} ({out.diverged}) before any epoch gave "
                                f"a finite model; nothing was saved; train again with a lower learning rate "
                                f"({lower})")
        out.stopped = True
        yield WarningEvent(f"training diverged in epoch {out.epoch} ({out.diverged}); stopped and kept the model "
                           f"of epoch {rec.best_epoch}; to go further, train with a lower learning rate ({lower})")
    model_dir = None
    if rec.best_epoch is not None:
        if not out.cancelled:
            yield from _calibrate(tr)
        if tr.dist.is_main:
            ckpt.write_model_config(tr.out_dir, {**tr._meta(), "cancelled": out.cancelled,
                                                   "stopped_early": out.stopped,
                                                   **({"diverged_epoch": out.epoch} if out.diverged else {})})
        model_dir = str(tr.out_dir)
    yield Finished(model_dir, rec.best_epoch, dict(rec.best_metrics), out.cancelled, out.stopped,
                   max(0, out.epoch - rec.start_epoch + 1), seconds, list(rec.history), tr.startup.to_dict())


def _calibrate(tr: Trainer) -> Iterator[Event]:
    """Fit temperature scaling (multi-label: also per-class thresholds) to the best model's validation
    probabilities; :attr:`Trainer.calibration` goes into ``config.json``."""
    probs = yield from tr.best_val_probabilities()
    data = tr.data
    cal = calibration.calibrate(probs, tr.built.images.targets["val"], data.multi_label,
                                class_names=data.classes)
    tr.calibration = cal
    reach = cal["at_target"]
    yield Log(f"calibration on {cal['n']} validation image(s): temperature {cal['temperature']:.3g}, expected "
              f"calibration error {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} ({cal['bins']} bins)"
              + (f"; {reach['accuracy']:.0%} accurate on {reach['coverage']:.0%} of them at confidence >= "
                 f"{reach['threshold']:.2f}" if reach else f"; no confidence reaches {calibration.TARGET_ACCURACY:.0%}"
                 " accuracy on them") + (f" ({cal['note']})" if cal.get("note") else ""))


#: a loss this many times that of guessing uniformly means the run has blown up
HUGE_LOSS_FACTOR = 1000.0


def _non_finite(tr: Trainer, train_m: dict[str, Any], val_m: dict[str, Any], value: float) -> str | None:
    """What blew up in an epoch (NaN/infinite or huge losses, monitored value or weights), or None.

    A finite loss over :data:`HUGE_LOSS_FACTOR` times that of guessing uniformly (``ln C``, at
    least ``ln 2``) also counts: such a model predicts nothing useful.
    """
    for what, v in (("training loss", train_m.get("loss")), ("validation loss", val_m.get("loss")),
                    (f"validation {tr.record.monitor}", value)):
        if v is not None and not math.isfinite(float(v)):
            return f"{what} {float(v)}"
    limit = HUGE_LOSS_FACTOR * math.log(max(len(tr.data.classes), 2))
    for what, v in (("training loss", train_m.get("loss")), ("validation loss", val_m.get("loss"))):
        if v is not None and float(v) > limit:
            return f"{what} {float(v):.3g} (over {limit:.0f})"
    bad = ckpt.non_finite_tensors(tr.model.state_dict())
    if bad:
        return f"{len(bad)} weight tensor(s) hold NaN or infinity"
    return None
