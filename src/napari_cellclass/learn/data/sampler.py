"""The order of an epoch's training images: shuffled or class-balanced, cut into batches."""
from __future__ import annotations

import numpy as np

__all__ = ["balanced_weights", "epoch_batches"]


def balanced_weights(targets: np.ndarray, num_classes: int, multi_label: bool) -> np.ndarray:
    """Per-image draw weights that show every class about equally often.

    Single-label: ``1 / count`` of the image's class; multi-label: the weight of its rarest
    class (images without any class get ``1 / N``).
    """
    n = len(targets)
    if multi_label:
        freq = targets.sum(axis=0) + 1e-9
        return np.where(targets.any(axis=1), (targets / freq).max(axis=1), 1.0 / n)
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    return 1.0 / counts[targets]


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator,
                  weights: np.ndarray | None = None) -> list[np.ndarray]:
    """Positions ``0..n-1`` in a random order (drawn with replacement by ``weights`` when given), in batches.

    A lone last image is dropped when there are other batches (batch norm learns nothing from it).
    """
    if weights is not None:
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if batch_size > 1 and len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches
