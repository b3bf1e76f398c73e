"""Likely labelling mistakes: out-of-fold probabilities ranked by cleanlab's confident learning.

Every labelled image gets class probabilities from a model that never saw its label: k-fold
cross-validation of a logistic regression on frozen backbone features (the ImageNet backbone of
:mod:`.embeddings`, or a trained model's backbone with ``model=``). cleanlab
(``find_label_issues``, Northcutt et al. 2021) flags the images whose given label disagrees with
what the others imply; they are ranked by cleanlab's label quality (self-confidence), least
trustworthy first.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import ConfigError, ProjectError
from ..core.project import Project
from .events import CancelToken

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LabelIssue:
    """A labelled image whose label is probably wrong."""

    image_id: str
    given: str | list[str]
    suggested: str | list[str]
    score: float  # 0..1, higher: more likely wrong

    def to_dict(self) -> dict[str, Any]:
        """``{"image_id", "given", "suggested", "score"}``."""
        return {"image_id": self.image_id, "given": self.given, "suggested": self.suggested,
                "score": round(float(self.score), 6)}


@dataclass
class LabelCheckResult:
    """The likely mistakes, most suspicious first, and how they were found."""

    issues: list[LabelIssue]
    checked: int
    folds: int
    features: str
    oof_accuracy: float
    classes: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``issues`` ordered most suspicious first."""
        return {"issues": [i.to_dict() for i in self.issues], "n_issues": len(self.issues), "checked": self.checked,
                "folds": self.folds, "features": self.features,
                "out_of_fold_accuracy": round(self.oof_accuracy, 4), "classes": list(self.classes),
                "notes": list(self.notes), "skipped": [{"image_id": k, "reason": v} for k, v in self.skipped.items()]}


def out_of_fold_probabilities(features: np.ndarray, targets: np.ndarray, num_classes: int, folds: int = 5,
                              seed: int = 0, multi_label: bool = False) -> np.ndarray:
    """Probabilities ``(N, K)`` of each row from a logistic regression fitted on the other folds.

    ``targets``: class indices, or (multi-label) a 0/1 matrix. Folds are stratified (single-label).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier

    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # directions, as the probe compares them
    out = np.zeros((len(x), num_classes), np.float64)
    split = (KFold(folds, shuffle=True, random_state=seed) if multi_label
             else StratifiedKFold(folds, shuffle=True, random_state=seed))
    for train, test in split.split(x, targets if not multi_label else None):
        clf = LogisticRegression(max_iter=2000, C=1.0)
        model = OneVsRestClassifier(clf) if multi_label else clf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes on tiny folds
            y = targets[train]
            if multi_label:
                keep = y.sum(axis=0) > 0  # a class absent from these folds gets probability 0
                model.fit(x[train], y[:, keep])
                out[np.ix_(test, np.flatnonzero(keep))] = model.predict_proba(x[test])
            else:
                model.fit(x[train], y)
                out[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    if not multi_label:
        out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-12)
    return out


def rank_issues(targets: np.ndarray | list[list[int]], probs: np.ndarray, multi_label: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's flagged rows (most suspicious first) and every row's score (1 - label quality)."""
    if multi_label:
        from cleanlab.multilabel_classification import filter as ml_filter
        from cleanlab.multilabel_classification import rank as ml_rank

        flagged = ml_filter.find_label_issues(targets, probs, return_indices_ranked_by="self_confidence")
        quality = ml_rank.get_label_quality_scores(targets, probs)
    else:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        flagged = find_label_issues(np.asarray(targets), probs, return_indices_ranked_by="self_confidence")
        quality = get_label_quality_scores(np.asarray(targets), probs)
    return np.asarray(flagged, dtype=np.int64), 1 - np.asarray(quality, dtype=np.float64)


def check_labels(project: Project | str | os.PathLike, *, folds: int = 5, model: Any = None, seed: int = 0,
                 device: str = "auto", batch_size: int = 128, progress: Progress | None = None,
                 cancel: CancelToken | None = None) -> LabelCheckResult:
    """Find labelled images whose label is probably wrong (see the module doc).

    Raises
    ------
    ConfigError
        ``folds`` below 2.
    ProjectError
        Fewer than two classes with labels, or a class with a single labelled image.
    """
    from .embeddings import Embedder, embed
    from .predict import as_trained_model

    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"--folds {folds!r} is not allowed; use a whole number >= 2 (e.g. --folds 5)")
    if not isinstance(project, Project):
        project = Project.open(project, create=False)
    classes = project.class_names
    embedder = Embedder.of_model(as_trained_model(model)) if model is not None else Embedder.imagenet()
    emb = embed(project, project.labelled_ids(), embedder, device=device, batch_size=batch_size,
                progress=progress, cancel=cancel)
    labels = [project.labels(i) for i in emb.ids]
    index = {c: k for k, c in enumerate(classes)}
    notes: list[str] = []
    multi = project.multi_label
    if multi:
        targets: Any = np.zeros((len(labels), len(classes)), np.int64)
        for r, ls in enumerate(labels):
            targets[r, [index[c] for c in ls]] = 1
        counts = targets.sum(axis=0)
    else:
        targets = np.array([index[ls[0]] for ls in labels], dtype=np.int64)
        counts = np.bincount(targets, minlength=len(classes))
    used = counts[counts > 0]
    if len(used) < 2:
        raise ProjectError(f"{project.root}: check-labels needs labelled images of at least two classes "
                           f"({len(emb.ids)} labelled); label more images first")
    if used.min() < 2:
        lonely = classes[int(np.flatnonzero(counts == used.min())[0])]
        raise ProjectError(f"{project.root}: class {lonely!r} has one labelled image; check-labels needs at least "
                           "two per class: label more or remove the class")
    k = int(min(folds, used.min())) if not multi else int(min(folds, len(emb.ids)))
    if k < folds:
        notes.append(f"{k} folds instead of {folds}: the rarest class has {used.min()} labelled images")
    present = np.flatnonzero(counts > 0)  # classes nobody labelled take no part (cleanlab needs examples)
    names = [classes[c] for c in present]
    targets = targets[:, present] if multi else np.searchsorted(present, targets)
    probs = out_of_fold_probabilities(emb.features, targets, len(present), k, seed, multi)
    if multi:
        given_idx = [list(np.flatnonzero(row)) for row in targets]
        flagged, scores = rank_issues(given_idx, probs, True)
        predicted = probs >= 0.5
        oof = float((predicted == targets.astype(bool)).all(axis=1).mean())
        issues = [LabelIssue(emb.ids[r], list(labels[r]), [names[c] for c in np.flatnonzero(predicted[r])],
                             scores[r]) for r in flagged]
    else:
        flagged, scores = rank_issues(targets, probs)
        oof = float((probs.argmax(axis=1) == targets).mean())
        issues = [LabelIssue(emb.ids[r], labels[r][0], names[int(probs[r].argmax())], scores[r]) for r in flagged]
    return LabelCheckResult(issues, len(emb.ids), k, emb.source, oof, classes, notes, emb.skipped)
