"""A synthetic U2OS arrestin-GFP dataset, modelled on Piximi's example project (BBBC016).

Arrestin-GFP is diffuse in the cytoplasm of unstimulated cells ("negative control") and is
recruited into vesicles after receptor stimulation ("positive control": punctate GFP). Each
image is a 16-bit, 2-channel OME-TIFF (Hoechst nucleus, arrestin-GFP) with one to three
irregular cells, camera offset, shot noise and read noise. The total GFP per cell is drawn
from the same distribution for both classes, so the mean brightness says nothing about the
class: a model has to learn texture. Part of the images is pre-labelled; the truth for all
of them is written to ``ground_truth.csv`` so predictions can be checked honestly.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .errors import ProjectError
from .project import Project

CLASSES = (("negative control", "#56b4e9"), ("positive control", "#e69f00"))
CHANNELS = ("Hoechst", "arrestin-GFP")
GROUND_TRUTH = "ground_truth.csv"


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(3 * sigma + 0.5))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (numpy only)."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    out = a
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out, dtype=np.float64)
        n = out.shape[axis]
        for i, w in enumerate(k):
            acc += w * (p[i:i + n, :] if axis == 0 else p[:, i:i + n])
        out = acc
    return out


def _blob(shape: tuple[int, int], cy: float, cx: float, radius: float, rng: np.random.Generator,
          elong: float = 1.0, wobble: float = 0.18) -> np.ndarray:
    """A soft irregular cell-like mask: an ellipse whose radius wobbles with angle."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    ang = np.arctan2(v, u)
    rr = np.hypot(u / elong, v)
    r_ang = np.ones_like(ang)
    for k in range(2, 6):
        r_ang += rng.normal(0, wobble / k) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    edge = radius * r_ang
    return 1.0 / (1.0 + np.exp((rr - edge) / 1.2))


def _cell(shape: tuple[int, int], positive: bool, rng: np.random.Generator, gfp_total: float,
          centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    cy, cx = centre
    radius = rng.uniform(17, 26)
    body = _blob(shape, cy, cx, radius, rng, elong=rng.uniform(1.0, 1.5))
    ny, nx = cy + rng.normal(0, 3), cx + rng.normal(0, 3)
    nucleus = _blob(shape, ny, nx, radius * rng.uniform(0.35, 0.45), rng, elong=rng.uniform(1.0, 1.3), wobble=0.08)
    cyto = np.clip(body - nucleus, 0, 1)
    # diffuse component with gentle low-frequency variation (both classes)
    texture = _blur(rng.normal(1.0, 0.6, shape), 4.0)
    diffuse = cyto * np.clip(1.0 + texture - texture.mean(), 0.3, None) + 0.25 * nucleus * body
    if positive:
        frac = rng.uniform(0.35, 0.7)  # share of GFP in vesicles
        n_ves = int(rng.integers(12, 45))
        spots = np.zeros(shape)
        ys, xs = np.nonzero(cyto > 0.5)
        if len(ys):
            pick = rng.integers(0, len(ys), n_ves)
            np.add.at(spots, (ys[pick], xs[pick]), rng.lognormal(0, 0.4, n_ves))
        spots = _blur(spots, rng.uniform(0.9, 1.4))
        gfp = (1 - frac) * diffuse / max(diffuse.sum(), 1e-9) + frac * spots / max(spots.sum(), 1e-9)
    else:
        gfp = diffuse / max(diffuse.sum(), 1e-9)
    dna = nucleus * (1.0 + 0.3 * _blur(rng.normal(0, 1, shape), 1.5))
    dna = np.clip(dna, 0, None)
    return gfp * gfp_total, dna / max(dna.sum(), 1e-9) * rng.uniform(2.5e5, 4e5)


def make_image(positive: bool, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One 2-channel uint16 image ``(2, size, size)`` of 1-3 cells of one class."""
    shape = (size, size)
    gfp = np.zeros(shape)
    dna = np.zeros(shape)
    n_cells = int(rng.choice([1, 2, 2, 3]))
    centres: list[tuple[float, float]] = []
    for _ in range(n_cells):
        for _try in range(20):
            c = (rng.uniform(22, size - 22), rng.uniform(22, size - 22))
            if all(np.hypot(c[0] - a, c[1] - b) > 34 for a, b in centres):
                break
        centres.append(c)
        g, d = _cell(shape, positive, rng, gfp_total=rng.lognormal(np.log(1.6e5), 0.35), centre=c)
        gfp += g
        dna += d
    gfp = _blur(gfp, 1.0)  # optics
    offset, gain = 100.0, 0.5  # camera offset (ADU) and ADU per photon
    bg = rng.uniform(8, 20)
    channels = []
    for signal in (dna, gfp):
        photons = rng.poisson(np.clip((signal + bg), 0, None) / gain)
        adu = offset + photons * gain + rng.normal(0, 3.0, shape)
        channels.append(np.clip(np.round(adu), 0, 65535).astype(np.uint16))
    return np.stack(channels)


def make_sample_project(folder: str | os.PathLike, n: int = 200, seed: int = 0,
                        labelled_fraction: float = 0.6, size: int = 128) -> Project:
    """Write the sample dataset into ``folder`` and return the opened project.

    Half the images are positive controls. ``labelled_fraction`` of each class is
    pre-labelled; the rest is left for prediction, with the truth in ``ground_truth.csv``.
    The same ``n``, ``seed`` and ``size`` always give the same files.
    """
    import tifffile

    if n < 4:
        raise ProjectError(f"sample needs at least 4 images (asked for {n})")
    if not 0 <= labelled_fraction <= 1:
        raise ProjectError(f"labelled fraction must be between 0 and 1 (got {labelled_fraction})")
    root = Path(folder).expanduser()
    if root.exists() and any(root.iterdir()):
        raise ProjectError(f"{root}: folder is not empty; give a new or empty folder for the sample data")
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = np.array([i % 2 == 1 for i in range(n)])
    rng.shuffle(truth)
    ids = []
    for i in range(n):
        pix = make_image(bool(truth[i]), rng, size)
        name = f"u2os_{i + 1:04d}.tif"
        tifffile.imwrite(img_dir / name, pix, ome=True, photometric="minisblack",
                         metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)}})
        ids.append(f"images/{name}")
    with open(root / GROUND_TRUTH, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image_id", "class"])
        for iid, pos in zip(ids, truth, strict=True):
            w.writerow([iid, CLASSES[int(pos)][0]])
    project = Project.open(root)
    for name, color in CLASSES:
        project.add_class(name, color)
    project.update_settings(sample={"name": "U2OS arrestin-GFP (synthetic)", "seed": seed, "n": n})
    for k, (name, _) in enumerate(CLASSES):
        members = [iid for iid, pos in zip(ids, truth, strict=True) if int(pos) == k]
        n_lab = int(round(len(members) * labelled_fraction))
        pick = sorted(rng.choice(len(members), n_lab, replace=False)) if n_lab else []
        project.set_labels([members[j] for j in pick], (name,), description="sample labels", source="import")
    project.clear_history()  # the sample's own labels are not an undoable user action
    return project


def ground_truth(folder: str | os.PathLike) -> dict[str, str]:
    """The true class of every sample image (``{image_id: class}``)."""
    path = Path(folder) / GROUND_TRUTH
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["image_id"]: r["class"] for r in csv.DictReader(fh)}
