"""Near-duplicate images across splits: a 16 x 16 thumbnail fingerprint per image, compared by correlation.

The fingerprint of an image is computed from its decoded pixels (any size and channel count):
the channels are averaged, the field of view is averaged into 16 x 16 blocks, and the 256 block
means are centred and scaled to unit length. The dot product of two fingerprints is the Pearson
correlation of the two thumbnails; two images are near-duplicates when it is at least
:data:`MIN_CORRELATION`. Comparing N x M fingerprints is one chunked matrix product.

Why not a 64-bit difference hash: on fluorescence fields with a flat, noisy background most
of its bits compare two background blocks, so a copy with a little added noise differs in
12-18 of 64 bits while distinct images of the sample data differ in as few as 10. The
correlation of thumbnails is dominated by the cells instead. Measured on the sample data
(``napari-cellclass sample``, 1000 images at 32 px: 499,500 distinct pairs): the highest
distinct correlation was 0.978; copies scored 1.000 (exact or brightness-scaled), >= 0.995
(Gaussian noise of 0.5 % of the intensity range), >= 0.992 (shifted one pixel), >= 0.996
(saved at half the resolution). Copies with stronger noise (1 %: about twice the camera
noise) or cropped by 5 % score 0.97-0.98 and are not reported.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GRID", "METHOD", "MIN_CORRELATION", "DuplicatePairs", "duplicate_leak_note", "fingerprints",
           "near_duplicates"]

#: Thumbnail size (blocks per side) of a fingerprint.
GRID = 16
#: Correlation of two thumbnails at or above which the images count as near-duplicates.
MIN_CORRELATION = 0.98
#: The method in words, for warnings and documentation.
METHOD = f"correlation of {GRID}x{GRID} thumbnails >= {MIN_CORRELATION:g}"


def _block_means(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Means of ``n`` near-equal consecutive blocks of ``x`` along ``axis`` (each at least one pixel)."""
    size = x.shape[axis]
    edges = np.linspace(0, size, n + 1)
    starts = np.minimum(np.floor(edges[:-1]).astype(np.int64), size - 1)
    ends = np.maximum(np.ceil(edges[1:]).astype(np.int64), starts + 1)
    csum = np.cumsum(x, axis=axis, dtype=np.float64)
    csum = np.concatenate([np.zeros_like(np.take(csum, [0], axis=axis)), csum], axis=axis)
    total = np.take(csum, ends, axis=axis) - np.take(csum, starts, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = n
    return total / (ends - starts).reshape(shape)


def fingerprints(images: np.ndarray) -> np.ndarray:
    """Unit-length ``(B, GRID*GRID)`` float32 fingerprints of ``(B, C, Y, X)`` or ``(B, Y, X)`` pixels.

    A flat image (no contrast) gets a zero fingerprint, which matches nothing.
    """
    x = np.asarray(images)
    if x.ndim == 4:
        x = x.astype(np.float64).mean(axis=1)
    if x.ndim != 3:
        raise ValueError(f"fingerprints expect (B, C, Y, X) or (B, Y, X) pixels, not shape {x.shape}")
    grid = _block_means(_block_means(x.astype(np.float64), GRID, 1), GRID, 2).reshape(len(x), -1)
    grid -= grid.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(grid, axis=1, keepdims=True)
    flat = norm <= 1e-9 * (1 + np.abs(x).reshape(len(x), -1).max(axis=1, initial=0))[:, None]
    return np.where(flat, 0.0, grid / np.where(flat, 1.0, norm)).astype(np.float32)


@dataclass(frozen=True)
class DuplicatePairs:
    """Near-duplicate pairs between two sets: positions ``a[k]`` and ``b[k]`` with ``correlation[k]``."""

    a: np.ndarray
    b: np.ndarray
    correlation: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def near_duplicates(fp_a: np.ndarray, fp_b: np.ndarray, min_correlation: float = MIN_CORRELATION,
                    chunk: int | None = None) -> DuplicatePairs:
    """Every pair ``(i, j)`` whose fingerprints correlate at least ``min_correlation``, closest first.

    One matrix product per ``chunk`` rows of ``fp_a`` (memory ``chunk x len(fp_b)`` floats; by
    default as many rows as keep that near 64 MB: 20,000 x 80,000 images took 1.9 GB at once).
    """
    a = np.asarray(fp_a, dtype=np.float32)
    b = np.asarray(fp_b, dtype=np.float32)
    chunk = chunk or max(1, min(2048, (64 << 20) // (4 * max(1, len(b)))))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(a), chunk):
        corr = a[start:start + chunk] @ b.T
        i, j = np.nonzero(corr >= min_correlation)
        found.append((i + start, j, corr[i, j]))
    if not found or not sum(len(f[0]) for f in found):
        empty = np.zeros(0, np.int64)
        return DuplicatePairs(empty, empty, np.zeros(0, np.float32))
    ia, ib, c = (np.concatenate([f[k] for f in found]) for k in range(3))
    order = np.lexsort((ib, ia, -c))
    return DuplicatePairs(ia[order].astype(np.int64), ib[order].astype(np.int64), c[order])


def duplicate_leak_note(train_ids: Sequence[str], train_fp: np.ndarray,
                        others: Sequence[tuple[str, Sequence[str], np.ndarray]],
                        examples: int = 3) -> tuple[int, str | None]:
    """How many held-out images have a near-copy in training, and a warning saying so (None when none).

    ``others`` holds ``(split name, ids, fingerprints)`` of the held-out splits.
    """
    leaked: dict[str, int] = {}
    shown: list[str] = []
    for name, ids, fp in others:
        if not len(ids) or not len(train_ids):
            continue
        pairs = near_duplicates(fp, train_fp)
        hit = len(set(pairs.a.tolist()))
        if hit:
            leaked[name] = hit
        seen: set[int] = set()
        for i, j, c in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.correlation.tolist(), strict=True):
            if i not in seen and len(shown) < examples:
                seen.add(i)
                shown.append(f"'{ids[i]}' ({name}) ~ '{train_ids[j]}' (train, r={c:.3f})")
    if not leaked:
        return 0, None
    total = sum(leaked.values())
    where = ", ".join(f"{n} {name}" for name, n in leaked.items())
    return total, (f"near-duplicate images across splits: {total} held-out image(s) ({where}) have a near-copy in the "
            f"training split ({METHOD}), e.g. {'; '.join(shown)}; their scores overstate how well the model "
            "does on new images: remove the copies or keep them in one split (group_by)")
