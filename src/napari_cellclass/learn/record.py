"""A run's record: per-epoch history, the best epoch so far and epochs without improvement (resumable)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .metrics import scalar_metrics

__all__ = ["RunRecord"]


@dataclass
class RunRecord:
    """What a run has achieved so far, judged on the monitored validation metric (``mode``: max or min)."""

    monitor: str = "accuracy"
    mode: str = "max"
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    bad_epochs: int = 0
    start_epoch: int = 1

    def improved(self, value: float, loss: float) -> bool:
        """Better monitored value; on a tie (e.g. accuracy 1.0 again) a lower validation loss."""
        if self.best_value is None or math.isnan(self.best_value):
            return True
        if value == self.best_value and self.monitor != "loss":
            return loss < float(self.best_metrics.get("loss", math.inf))
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def end_epoch(self, epoch: int, lr: float, seconds: float, train: Mapping[str, Any], val: Mapping[str, Any],
                  value: float, best: bool) -> None:
        """Add an epoch to the history; a ``best`` one becomes the best epoch."""
        if best:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_metrics = dict(val)
        else:
            self.bad_epochs += 1
        self.history.append({"epoch": epoch, "lr": lr, "seconds": round(seconds, 3),
                             "train": dict(scalar_metrics(train)), "val": dict(scalar_metrics(val))})

    def state(self) -> dict[str, Any]:
        """The part of the resume state this record holds."""
        return {"history": self.history, "best_value": self.best_value, "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics, "bad_epochs": self.bad_epochs}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue after the epoch saved in ``state`` (KeyError, TypeError, ValueError when damaged)."""
        self.history = list(state["history"])
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_metrics = state["best_metrics"]
        self.bad_epochs = int(state["bad_epochs"])
        self.start_epoch = int(state["epoch"]) + 1
