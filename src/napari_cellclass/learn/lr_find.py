"""The learning-rate range test (Smith 2017, fastai's ``lr_find``): the rate a run starts from.

A copy of the run's first phase (same model, loss, optimizer, augmentation, frozen backbone when
fine-tuning starts with the head) takes up to ``steps`` batches while the learning rate grows
exponentially; the chosen rate is a tenth of the one with the lowest smoothed loss (the
"minimum / 10" rule: safely before the loss turns up). The model and optimizer are restored after.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import steps
from .builders import RunParts, train_batches
from .config import TrainConfig
from .models import set_backbone_trainable

#: The range swept and the chosen rate's bounds.
LR_START, LR_END = 1e-6, 1.0
LR_MIN, LR_MAX = 1e-5, 0.1


@dataclass(frozen=True)
class LrFindResult:
    """The swept rates, their smoothed losses and the chosen rate."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    lr: float
    note: str


def find_lr(parts: RunParts, cfg: TrainConfig, max_steps: int = 100) -> LrFindResult:
    """Run the range test on ``parts`` (left as found) and choose a learning rate."""
    model, opt = parts.model, parts.optimization.optimizer
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_frozen = getattr(model, "backbone_frozen", False)
    steps.set_backbone_phase(cfg, parts, 1)
    rng = np.random.default_rng([cfg.seed, 7])
    _, gen = steps.epoch_generators(cfg.seed, 0, parts.hardware.device, 0)  # augmentation draws on the device
    rows = parts.images.index["train"]
    batches: list[np.ndarray] = []
    while len(batches) < max_steps:  # small projects: several passes over the training images
        batches.extend(train_batches(cfg, parts.data, parts.images, rng))
    batches = batches[:max_steps]
    n = len(batches)
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    model.train()
    try:
        for i, x in enumerate(parts.batcher.iterate([rows[b] for b in batches], 0)):
            lr = LR_START * (LR_END / LR_START) ** (i / max(1, n - 1))
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            y = parts.images.targets_dev["train"].index_select(0, torch.as_tensor(batches[i],
                                                                                  device=parts.hardware.device))
            try:
                loss = float(steps.train_step(parts, model, cfg, x, y, gen, schedule=False)[0].detach())
            except steps.Diverged:
                break
            avg = 0.9 * avg + 0.1 * loss
            smooth = avg / (1 - 0.9 ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if i > 5 and smooth > 4 * best:
                break
    finally:
        model.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)
        if hasattr(model, "backbone_frozen"):
            set_backbone_trainable(model, not saved_frozen)
    return _choose(lrs, losses, cfg.lr)


def _choose(lrs: list[float], losses: list[float], fallback: float) -> LrFindResult:
    """A tenth of the rate with the lowest smoothed loss, within [LR_MIN, LR_MAX]."""
    if len(losses) < 8:
        return LrFindResult(tuple(lrs), tuple(losses), fallback,
                            f"learning-rate range test: the loss blew up at once; kept lr={fallback:g}")
    k = int(np.argmin(losses))
    lr = float(min(max(lrs[k] / 10, LR_MIN), LR_MAX))
    return LrFindResult(tuple(lrs), tuple(losses), lr,
                        f"learning-rate range test over {len(lrs)} batches: lowest loss {losses[k]:.3f} at "
                        f"lr={lrs[k]:.2g}; training with lr={lr:.2g}")
