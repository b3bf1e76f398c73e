"""Reviewing stored predictions: the images a prediction scope covers, filtering, accepting as labels.

Qt-free, so the Predictions dock, scripts and tests share it. Accepting never replaces a human
label and is one undo step.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CellclassError, ProjectError
from .predictions import Prediction, export_predictions_csv, meets_confidence, read_predictions
from .project import Project

#: The images a prediction can cover.
PREDICT_SCOPES = ("unlabelled", "current page", "whole project")
#: Orders of the predictions table.
SORT_CHOICES = ("confidence (low first)", "confidence (high first)", "predicted class", "image")


def acceptable(project: Project, predictions: Mapping[str, Prediction], min_confidence: float = 0.0,
               only_unlabelled: bool = True) -> list[str]:
    """Ids whose prediction can become a label: confident enough, (by default) unlabelled, of a
    known class, and whose label file may be written (an image protected because its label file
    cannot be trusted is left out)."""
    out = []
    for iid, p in predictions.items():
        if iid not in project or not p.classes or not meets_confidence(p, min_confidence, math.inf):
            continue
        if only_unlabelled and project.labels(iid):
            continue
        if any(c not in project.class_names for c in p.classes):
            continue
        try:
            project.check_targets([iid])
        except ProjectError:
            continue
        out.append(iid)
    return out


def accept_predictions(project: Project, predictions: Mapping[str, Prediction], ids: Sequence[str]) -> list[str]:
    """Make the predictions of unlabelled ``ids`` their labels, as one undo step (sidecars
    written, source ``prediction``); images that already carry a human label keep it.

    Returns the changed ids.
    """
    changes: dict[str, tuple[str, ...]] = {}
    for iid in ids:
        p = predictions.get(iid)
        if p is None or not p.classes or project.labels(iid):
            continue
        unknown = [c for c in p.classes if c not in project.class_names]
        if unknown:
            raise CellclassError(f"{iid}: predicted class {unknown[0]!r} is not a class of the project; "
                                 "add it in the labelling widget first")
        changes[iid] = tuple(p.classes)
    if not changes:
        return []
    return project.apply_labels(changes, description="accept predictions", source="prediction")


def filter_predictions(predictions: Mapping[str, Prediction], *, predicted: str | None = None,
                       min_confidence: float = 0.0, max_confidence: float = 1.0,
                       order: str = SORT_CHOICES[0], project: Project | None = None,
                       only_unlabelled: bool = False) -> list[Prediction]:
    """Predictions of one class (``None``: all) in a confidence range, sorted by ``order``."""
    rows = [p for p in predictions.values()
            if (predicted is None or predicted in p.classes)
            and meets_confidence(p, min_confidence, max_confidence)
            and (not only_unlabelled or project is None or not project.labels(p.image_id))]
    if order == SORT_CHOICES[0]:
        rows.sort(key=lambda p: (p.confidence, p.image_id))
    elif order == SORT_CHOICES[1]:
        rows.sort(key=lambda p: (-p.confidence, p.image_id))
    elif order == SORT_CHOICES[2]:
        rows.sort(key=lambda p: (";".join(p.classes), -p.confidence, p.image_id))
    else:
        rows.sort(key=lambda p: p.image_id)
    return rows


def project_predictions(project: Project) -> dict[str, Prediction]:
    """The stored predictions of a project's current images."""
    stored = read_predictions(project.root)
    return {k: v for k, v in stored.items() if k in project}


def export_project_predictions(project: Project, path: str | os.PathLike) -> Path:
    """Write the stored predictions plus each image's current label to ``path``."""
    preds = project_predictions(project)
    return export_predictions_csv(path, preds)


def predict_ids(project: Project, scope: str, page_ids: Sequence[str] = ()) -> list[str]:
    """The image ids a prediction scope covers: ``'unlabelled'``, ``'current page'`` or ``'whole project'``."""
    if scope == "unlabelled":
        return project.unlabelled_ids()
    if scope == "current page":
        return [i for i in page_ids if i in project]
    if scope == "whole project":
        return list(project.image_ids)
    raise CellclassError(f"scope {scope!r} is not one of {', '.join(PREDICT_SCOPES)}")
