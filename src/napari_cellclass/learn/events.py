"""Typed events that the training engine yields, and the token that cancels it.

The napari widgets, the command line progress bar and the tests all consume the same stream::

    for event in run_training(project, config, out_dir, cancel=token):
        if isinstance(event, EpochEnd):
            print(event.epoch, event.val["accuracy"])
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


class CancelToken:
    """Thread-safe stop flag; the engine checks it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop after the current batch (the best checkpoint is kept)."""
        self._event.set()

    def is_set(self) -> bool:
        """Whether cancelling was asked for."""
        return self._event.is_set()


@dataclass(frozen=True)
class Event:
    """Base class of all engine events."""


@dataclass(frozen=True)
class Log(Event):
    """A line for the log (what was loaded, the device, the split sizes, ...)."""

    message: str


@dataclass(frozen=True)
class WarningEvent(Event):
    """Something the user should know that did not stop the run (e.g. an unreadable image)."""

    message: str
    image_id: str | None = None


@dataclass(frozen=True)
class Started(Event):
    """Training is about to start: sizes, classes, device, the resolved settings."""

    n_train: int
    n_val: int
    n_test: int
    classes: tuple[str, ...]
    device: str
    precision: str
    input_size: int
    in_chans: int
    epochs: int
    start_epoch: int
    batches_per_epoch: int
    split_source: str


@dataclass(frozen=True)
class BatchProgress(Event):
    """One batch done. ``phase``: 'cache' (decoding images), 'train' or 'val'.

    ``loss`` is the running mean of the epoch so far (None where not computed).
    """

    phase: str
    epoch: int
    batch: int
    num_batches: int
    loss: float | None = None


@dataclass(frozen=True)
class EpochEnd(Event):
    """An epoch finished: ordered train and validation metric dicts, learning rate, best flag."""

    epoch: int
    epochs: int
    train: dict[str, Any]
    val: dict[str, Any]
    lr: float
    is_best: bool
    monitor: str
    seconds: float
    images_per_second: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    """A checkpoint was written: ``kind`` 'best' (the model folder) or 'last' (resume state)."""

    path: str
    epoch: int
    kind: str
    monitor: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class Finished(Event):
    """The run ended (completed, stopped early or cancelled).

    ``model_dir`` is None only when cancelled before the first epoch ended.
    """

    model_dir: str | None
    best_epoch: int | None
    best_metrics: dict[str, Any]
    cancelled: bool
    stopped_early: bool
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    startup: dict[str, float] = field(default_factory=dict)  # seconds to the first batch, by phase
