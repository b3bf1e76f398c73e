"""Learning-rate schedules with JSON-able state: cosine and one-cycle (per batch), plateau (per epoch), constant."""
from __future__ import annotations

import math
from typing import Any

import torch


class LRSchedule:
    """Sets each param group's ``lr = base_lr * factor``; ``step_batch`` / ``step_epoch`` advance it.

    Parameters
    ----------
    kind
        ``'none'``, ``'cosine'`` (linear warm-up then cosine to 1 % of the base), ``'onecycle'``
        (Smith's one-cycle: 30 % warm-up from base/25, cosine down to base/1e4) or ``'plateau'``
        (multiply by ``factor`` after ``patience`` epochs without a better monitored value).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int = 0,
                 plateau_mode: str = "max", patience: int = 2, factor: float = 0.3, min_factor: float = 1e-3) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.total = max(1, int(total_steps))
        self.warmup = max(0, int(warmup_steps))
        self.mode = plateau_mode
        self.patience = patience
        self.factor = factor
        self.min_factor = min_factor
        self.step_count = 0
        self.plateau_scale = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad = 0
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
        self._apply()

    def multiplier(self, step: int | None = None) -> float:
        """The learning-rate factor at ``step`` (default: the current step)."""
        s = self.step_count if step is None else step
        if self.kind == "cosine":
            if s < self.warmup:
                return 0.01 + 0.99 * s / self.warmup
            t = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "onecycle":
            up = max(1, int(0.3 * self.total))
            start, peak, end = 1 / 25, 1.0, 1e-4
            if s < up:
                return start + (peak - start) * 0.5 * (1 - math.cos(math.pi * s / up))
            t = min(1.0, (s - up) / max(1, self.total - up))
            return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "plateau":
            return self.plateau_scale
        return 1.0

    def _apply(self) -> None:
        m = self.multiplier()
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * m * g.get("lr_scale", 1.0)

    def step_batch(self) -> None:
        """After each optimizer step."""
        self.step_count += 1
        if self.kind in ("cosine", "onecycle"):
            self._apply()

    def step_epoch(self, value: float | None) -> None:
        """After each epoch's validation, with the monitored value."""
        if self.kind != "plateau" or value is None:
            return
        best = self.plateau_best
        better = best is None or (value > best if self.mode == "max" else value < best)
        if better:
            self.plateau_best = value
            self.plateau_bad = 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.patience:
                self.plateau_scale = max(self.min_factor, self.plateau_scale * self.factor)
                self.plateau_bad = 0
        self._apply()

    def refresh(self) -> None:
        """Re-apply after ``lr_scale`` changed (e.g. unfreezing the backbone)."""
        self._apply()

    @property
    def lr(self) -> float:
        """Learning rate of the last param group (the head)."""
        return float(self.optimizer.param_groups[-1]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """The JSON-able state (for resuming)."""
        return {"kind": self.kind, "step_count": self.step_count, "plateau_scale": self.plateau_scale,
                "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state."""
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = state["plateau_best"]
        self.plateau_bad = int(state["plateau_bad"])
        self._apply()
