"""Training losses: cross entropy, focal, Kullback-Leibler divergence, binary cross entropy.

Single-label losses take integer targets ``(N,)``; the multi-label BCE takes multi-hot
targets ``(N, K)``. Class weights (``(K,)``) rescale each class's contribution.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError


def smoothed_targets(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with ``smoothing`` spread uniformly over all classes."""
    one_hot = F.one_hot(target.long(), num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


class FocalLoss(nn.Module):
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017), on smoothed targets.

    With ``gamma = 0`` and no smoothing it equals cross entropy.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.smoothing = float(smoothing)
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean focal loss of logits ``(N, K)`` against class indices ``(N,)``."""
        logp = F.log_softmax(logits.float(), dim=1)
        q = smoothed_targets(target, logits.shape[1], self.smoothing)
        focal = (1.0 - logp.exp()).pow(self.gamma)
        per_class = -q * focal * logp
        if self.weight is not None:
            per_class = per_class * self.weight
            norm = self.weight[target.long()].sum()
            return per_class.sum() / norm.clamp_min(1e-12)
        return per_class.sum(dim=1).mean()


class KLDivergenceLoss(nn.Module):
    """``KL(q || p)`` between the (smoothed) target distribution ``q`` and the prediction ``p``."""

    def __init__(self, weight: torch.Tensor | None = None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = float(smoothing)
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean KL divergence of the smoothed targets from the predicted distribution."""
        logp = F.log_softmax(logits.float(), dim=1)
        q = smoothed_targets(target, logits.shape[1], self.smoothing)
        per_sample = F.kl_div(logp, q, reduction="none").sum(dim=1)
        if self.weight is not None:
            w = self.weight[target.long()]
            return (per_sample * w).sum() / w.sum().clamp_min(1e-12)
        return per_sample.mean()


class CrossEntropyLoss(nn.Module):
    """Cross entropy with optional class weights and label smoothing (float32 math)."""

    def __init__(self, weight: torch.Tensor | None = None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = float(smoothing)
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean (weighted, smoothed) cross entropy."""
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight,
                               label_smoothing=self.smoothing)


class MultiLabelBCELoss(nn.Module):
    """Binary cross entropy on logits for multi-hot targets; ``weight`` is the positive weight per class."""

    def __init__(self, weight: torch.Tensor | None = None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = float(smoothing)
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean binary cross entropy against multi-hot targets ``(N, K)``."""
        t = target.float()
        if self.smoothing:
            t = t * (1.0 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=self.weight)


def balanced_class_weights(targets: np.ndarray, num_classes: int, multi_label: bool = False) -> np.ndarray:
    """``n / (K * count_k)`` per class (scikit-learn's 'balanced'); multi-label: ``negatives / positives``.

    Classes without training images get weight 1.
    """
    if multi_label:
        pos = targets.sum(axis=0).astype(np.float64)
        neg = len(targets) - pos
        w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
        return w.astype(np.float32)
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    n = counts.sum()
    w = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 1.0)
    return w.astype(np.float32)


def build_loss(name: str, *, multi_label: bool = False, class_weights: Sequence[float] | None = None,
               label_smoothing: float = 0.0, focal_gamma: float = 2.0) -> nn.Module:
    """The loss module for a :class:`TrainConfig` ``loss`` name.

    ``'ce'``, ``'focal'`` and ``'kl'`` are single-label; ``'bce'`` is multi-label. A
    multi-label project always trains with BCE (``'ce'`` is accepted and mapped to it).
    """
    weight = torch.as_tensor(np.asarray(class_weights, dtype=np.float32)) if class_weights is not None else None
    if multi_label:
        if name not in ("bce", "ce"):
            raise ConfigError(f"loss={name!r} is single-label; a multi-label project needs loss=bce")
        return MultiLabelBCELoss(weight, label_smoothing)
    if name == "ce":
        return CrossEntropyLoss(weight, label_smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, weight, label_smoothing)
    if name == "kl":
        return KLDivergenceLoss(weight, label_smoothing)
    if name == "bce":
        raise ConfigError("loss=bce is for multi-label projects; use ce, focal or kl for single-label")
    raise ConfigError(f"loss={name!r} is not allowed; use one of ce, focal, kl, bce")
