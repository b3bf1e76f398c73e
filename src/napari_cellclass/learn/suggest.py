"""Which unlabelled images to label next: typical, margin, entropy or random picks.

- ``typical`` (cold start; TypiClust, Hacohen et al. 2022): k-means on the features of all
  images into (labelled + n) groups; from the biggest groups that hold no labelled image, the
  most typical image (densest: smallest mean distance to its nearest neighbours in the group).
- ``margin`` / ``entropy``: the current model's least certain images (smallest top-2 margin,
  highest normalised entropy; multi-label: the mean over classes of each class's uncertainty),
  made diverse within a batch: the ``10 n`` least certain are grouped by k-means into ``n``
  groups and each group gives its least certain image (as in Cluster-Margin, Citovsky et al. 2021).
- ``random``: a seeded random draw.
- ``auto``: ``typical`` until a model exists and every class has :data:`AUTO_MIN_PER_CLASS`
  labels, then ``margin``.

The ranking functions work on plain arrays (the learning-curve benchmark uses them directly);
:func:`suggest` gathers the project's features and probabilities (:mod:`.embeddings`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import CellclassError, ConfigError
from ..core.project import Project
from ..core.strategies import AUTO_MIN_PER_CLASS, STRATEGIES
from .events import CancelToken

#: Uncertainty picks are made diverse among this many times ``n`` least certain images.
CANDIDATES_PER_PICK = 10
#: Features are reduced to this many principal components before clustering.
PCA_DIMS = 50
#: TypiClust caps the clusters (beyond it, uncovered groups are taken in size order anyway).
MAX_CLUSTERS = 500
_NEIGHBOURS = 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Suggestion:
    """One image to label: its id, the strategy's score (higher: label it sooner) and why."""

    image_id: str
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """``{"image_id", "score", "reason"}``."""
        return {"image_id": self.image_id, "score": round(float(self.score), 6), "reason": self.reason}


@dataclass
class SuggestResult:
    """Ordered suggestions and how they were made."""

    strategy: str
    suggestions: list[Suggestion]
    model: str | None = None
    features: str = ""
    pool: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """The suggested image ids, best first."""
        return [s.image_id for s in self.suggestions]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``suggestions`` is the ordered list of ``{"image_id", "score", "reason"}``."""
        return {"strategy": self.strategy, "model": self.model, "features": self.features, "pool": self.pool,
                "n": len(self.suggestions), "suggestions": [s.to_dict() for s in self.suggestions],
                "notes": list(self.notes),
                "skipped": [{"image_id": k, "reason": v} for k, v in self.skipped.items()]}


# ---------------------------------------------------------------------------- ranking on arrays
def uncertainty(probs: np.ndarray, kind: str, multi_label: bool = False) -> np.ndarray:
    """Per-image uncertainty in [0, 1] (1: the model cannot tell) from probabilities.

    ``margin``: 1 - (top1 - top2); ``entropy``: entropy / log K. Multi-label: the mean over
    classes of ``1 - |2p - 1|`` (margin) or of the binary entropy in bits (entropy).
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    if multi_label:
        if kind == "margin":
            return (1 - np.abs(2 * p - 1)).mean(axis=1)
        q = np.clip(1 - p, 1e-12, 1.0)
        return (-(p * np.log2(p) + q * np.log2(q))).mean(axis=1)
    if p.shape[1] < 2:
        return np.zeros(len(p))
    if kind == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return 1 - (top[:, 1] - top[:, 0])
    return -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])


def reduce_features(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """L2-normalised features, reduced to :data:`PCA_DIMS` principal components when longer."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
        from sklearn.decomposition import PCA

        x = PCA(PCA_DIMS, svd_solver="randomized", random_state=seed).fit_transform(x).astype(np.float32)
    return x


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels of ``x`` into ``k`` groups (mini-batch k-means for big sets)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if k >= len(x):
        return np.arange(len(x))
    if len(x) > 20_000:
        km = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(k, random_state=seed, n_init=1)
    return km.fit_predict(x)


def rank_uncertain(scores: np.ndarray, features: np.ndarray | None, n: int, seed: int = 0) -> np.ndarray:
    """Positions of ``n`` uncertain yet diverse images, most uncertain first (see the module doc)."""
    order = np.argsort(-scores, kind="stable")
    n = min(n, len(order))
    cand = order[:max(n, CANDIDATES_PER_PICK * n)]
    if features is None or len(cand) <= n:
        return order[:n]
    groups = _kmeans(reduce_features(features[cand], seed), n, seed)
    picks = [cand[groups == g][np.argmax(scores[cand[groups == g]])] for g in np.unique(groups)]
    picks = np.array(picks, dtype=np.int64)
    return picks[np.argsort(-scores[picks], kind="stable")][:n]


def rank_typical(features: np.ndarray, labelled: np.ndarray, n: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TypiClust picks among the unlabelled rows of ``features``.

    ``labelled`` is a boolean mask of the rows already labelled. Returns the picked rows
    (biggest uncovered group first), each pick's group size and how many labelled images its
    group holds.
    """
    pool = np.flatnonzero(~labelled)
    n = min(n, len(pool))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    x = reduce_features(features, seed)
    k = min(int(labelled.sum()) + n, MAX_CLUSTERS, len(x))
    groups = _kmeans(x, k, seed)
    sizes = np.bincount(groups[pool], minlength=k)
    covered = np.bincount(groups[labelled], minlength=k) if labelled.any() else np.zeros(k, np.int64)
    order = sorted((g for g in range(k) if sizes[g]), key=lambda g: (covered[g], -sizes[g], g))
    picks: list[int] = []
    taken = np.zeros(len(x), bool)
    while len(picks) < n:
        for g in order:
            if len(picks) == n:
                break
            members = pool[(groups[pool] == g) & ~taken[pool]]
            if len(members):
                best = members[np.argmax(_typicality(x[members]))]
                picks.append(int(best))
                taken[best] = True
    picks_arr = np.array(picks, dtype=np.int64)
    return picks_arr, sizes[groups[picks_arr]], covered[groups[picks_arr]]


def _typicality(x: np.ndarray, cap: int = 5000) -> np.ndarray:
    """1 / mean distance to the nearest neighbours within the group (a density estimate).

    Neighbours are looked for among at most ``cap`` members (a random subset of a bigger group).
    """
    if len(x) == 1:
        return np.ones(1)
    ref = x if len(x) <= cap else x[np.random.default_rng(0).choice(len(x), cap, replace=False)]
    k = min(_NEIGHBOURS, len(ref) - 1)
    ref_sq = (ref.astype(np.float64) ** 2).sum(1)
    out = np.empty(len(x))
    for start in range(0, len(x), 1024):
        part = x[start:start + 1024].astype(np.float64)
        d2 = (part ** 2).sum(1)[:, None] + ref_sq[None, :] - 2 * part @ ref.T.astype(np.float64)
        d = np.sqrt(np.maximum(d2, 0))
        d.sort(axis=1)
        out[start:start + 1024] = 1 / (d[:, 1:k + 1].mean(axis=1) + 1e-12)
    return out


# ---------------------------------------------------------------------------- on a project
def resolve_strategy(strategy: str, project: Project, has_model: bool) -> str:
    """``auto`` made concrete (see the module doc); a bad name is a ConfigError."""
    _check_strategy(strategy)
    if strategy != "auto":
        return strategy
    counts = project.counts()
    enough = bool(counts) and min(counts.values()) >= AUTO_MIN_PER_CLASS
    return "margin" if has_model and enough else "typical"


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")


def newest_model(project: Project) -> Any:
    """The project's newest model folder whose classes are the project's, or None."""
    from ..core.model_folder import CONFIG_NAME, read_model_config
    from .rundata import MODELS_DIR

    folders = []
    root = project.root / MODELS_DIR
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    for e in entries:
        if e.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(e.path, CONFIG_NAME)):
            folders.append((e.stat().st_mtime_ns, e.path))
    for _, path in sorted(folders, reverse=True):
        try:
            cfg = read_model_config(path)
        except CellclassError:
            continue
        if tuple(cfg.get("classes", ())) == project.class_names:
            return path
    return None


def suggest(project: Project | str | os.PathLike, *, model: Any = None, n: int = 20, strategy: str = "auto",
            seed: int = 0, device: str = "auto", batch_size: int = 128, progress: Progress | None = None,
            cancel: CancelToken | None = None) -> SuggestResult:
    """Suggest ``n`` unlabelled images of a project to label next.

    Parameters
    ----------
    model
        A model folder or :class:`~.checkpoint.TrainedModel` (margin/entropy need one); None:
        the project's newest model with the project's classes, when there is one.
    strategy
        ``auto``, ``typical``, ``margin``, ``entropy`` or ``random`` (see the module doc).

    Raises
    ------
    ConfigError
        A bad strategy or ``n``; margin/entropy without a model.
    """
    from .embeddings import Embedder, embed
    from .predict import as_trained_model

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"--n {n!r} is not allowed; use a whole number >= 1 (e.g. --n 20)")
    if not isinstance(project, Project):
        project = Project.open(project, create=False)
    _check_strategy(strategy)  # before a model is loaded
    notes: list[str] = []
    folder = model if model is not None else (newest_model(project) if strategy != "random" else None)
    trained = as_trained_model(folder) if folder is not None else None
    if trained is not None and model is None:
        notes.append(f"model: the project's newest, {trained.name}")
    chosen = resolve_strategy(strategy, project, trained is not None)
    pool_ids = project.unlabelled_ids()
    rng = np.random.default_rng(seed)
    if chosen == "random" or not pool_ids:
        picks = rng.permutation(len(pool_ids))[:n]
        out = [Suggestion(pool_ids[p], 1 - k / max(1, len(picks)), "random pick") for k, p in enumerate(picks)]
        return SuggestResult(chosen, out, trained.name if trained else None, "", len(pool_ids), notes)
    if chosen in ("margin", "entropy"):
        if trained is None:
            raise ConfigError(f"--strategy {chosen} needs a model: train one first or give --model MODEL")
        if tuple(trained.classes) != project.class_names:
            notes.append(f"the model's classes ({', '.join(trained.classes)}) differ from the project's")
    embedder = Embedder.of_model(trained) if trained is not None else Embedder.imagenet()
    ids = pool_ids if chosen != "typical" else list(project.image_ids)
    emb = embed(project, ids, embedder, device=device, batch_size=batch_size, progress=progress, cancel=cancel)
    pool = emb.rows(pool_ids)
    if chosen == "typical":
        labelled = np.ones(len(emb.ids), bool)
        labelled[pool] = False
        rows, sizes, covered = rank_typical(emb.features, labelled, n, seed)
        # score: the group's share of the unlabelled images / (1 + its labels); best first
        scores = sizes / max(1, len(pool)) / (1.0 + covered)
        order = np.argsort(-scores, kind="stable")
        out = [Suggestion(emb.ids[rows[k]], float(scores[k]),
                          f"most typical of a group of {sizes[k]} unlabelled image(s)"
                          + (" with no label yet" if covered[k] == 0 else f" ({covered[k]} labelled)"))
               for k in order]
    else:
        assert emb.probabilities is not None
        scores = uncertainty(emb.probabilities[pool], chosen, emb.multi_label)
        picks = rank_uncertain(scores, emb.features[pool], n, seed)
        out = [Suggestion(emb.ids[pool[p]], float(scores[p]), _why(chosen, emb.probabilities[pool[p]], emb.classes,
                                                                  emb.multi_label)) for p in picks]
    return SuggestResult(chosen, out, trained.name if trained else None, emb.source, len(pool), notes, emb.skipped)


def _why(kind: str, probs: np.ndarray, classes: Sequence[str], multi_label: bool) -> str:
    """The reason line of an uncertainty pick: the top two classes and their probabilities."""
    if multi_label:
        near = np.argsort(np.abs(probs - 0.5))[:2]
        return (f"{kind}: unsure about " + ", ".join(f"{classes[k]} {probs[k]:.2f}" for k in near))
    top = np.argsort(-probs)[:2]
    pair = " vs ".join(f"{classes[k]} {probs[k]:.2f}" for k in top)
    return f"{kind}: {pair}"
