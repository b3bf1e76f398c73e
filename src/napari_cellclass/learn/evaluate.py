"""Evaluate a trained model on a project's labelled images: every metric, as a JSON-able dict."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import CellclassError
from ..core.project import Project
from .checkpoint import TrainedModel
from .data import ImageStore, cache_dir_for
from .engine import open_project, resolve_device
from .events import CancelToken
from .metrics import compute_metrics
from .predict import as_trained_model, infer

SPLITS = ("auto", "test", "val", "train", "all")
_UNKNOWN = "is not one of the model's classes"


class NothingToEvaluateError(CellclassError):
    """No image of the split could be evaluated; ``details['skipped']`` lists each one and why."""

    def __init__(self, message: str, skipped: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.details = {"skipped": [{"image_id": k, "reason": v} for k, v in (skipped or {}).items()]}


def _nothing_usable(trained: TrainedModel, project: Project, used: str, skipped: dict[str, str]
                    ) -> NothingToEvaluateError:
    """One line that says why no image could be evaluated: unknown classes (named) and unreadable images."""
    unknown = sorted({c for iid in skipped for c in project.labels(iid) if c not in trained.classes})
    foreign = [i for i, r in skipped.items() if _UNKNOWN in r]
    unreadable = [i for i in skipped if i not in set(foreign)]
    parts = []
    if foreign:
        parts.append(f"{len(foreign)} labelled with classes the model does not know ({', '.join(unknown)}; the "
                     f"model knows {', '.join(trained.classes)}), e.g. {', '.join(foreign[:3])}")
    if unreadable:
        first = unreadable[0]
        parts.append(f"{len(unreadable)} cannot be read, e.g. {first}: {skipped[first]}")
    fix = ("evaluate a model trained on these classes (or label the images with the model's classes)" if foreign
           else "fix or replace the images")
    return NothingToEvaluateError(f"none of the {len(skipped)} labelled images of the '{used}' split can be "
                                  f"evaluated with {trained.name}: {'; '.join(parts)}; {fix}", skipped)


def evaluation_ids(trained: TrainedModel, project: Project, split: str) -> tuple[str, list[str]]:
    """The split actually used and its currently labelled image ids.

    ``'auto'``: the model's test images, or its validation images when it has no test split;
    ``'all'``: every labelled image of the project.
    """
    if split not in SPLITS:
        raise CellclassError(f"split={split!r} is not allowed; use one of {', '.join(SPLITS)}")
    labelled = project.labelled_ids()
    if split == "all":
        return "all", labelled
    saved = trained.split
    if split == "auto":
        split = "test" if saved.get("test") else "val"
    have = set(labelled)
    return split, [i for i in saved.get(split, []) if i in have]


@dataclass(frozen=True)
class EvaluationArrays:
    """Per-image results of an evaluation: what :func:`evaluate` summarises.

    ``targets`` are class indices (single-label) or 0/1 rows (multi-label); ``probabilities``
    has one row per id in ``ids``; ``skipped`` maps image ids to the reason they were left out.
    """

    split: str
    ids: list[str]
    targets: np.ndarray
    probabilities: np.ndarray
    skipped: dict[str, str]
    metrics: dict[str, Any]


def evaluate_arrays(trained: TrainedModel, project: Project, *, split: str = "auto", tta: bool = False,
                    batch_size: int = 128, device: str = "auto",
                    progress: Callable[[int, int], None] | None = None,
                    cancel: CancelToken | None = None) -> EvaluationArrays:
    """Predict the labelled images of a split and compute every metric, keeping per-image results."""
    used, ids = evaluation_ids(trained, project, split)
    if not ids:
        raise CellclassError(f"no labelled images in the '{used}' split of {trained.path.name} for {project.root}; "
                             "use split=all")
    classes = trained.classes
    index = {c: k for k, c in enumerate(classes)}
    skipped: dict[str, str] = {}
    keep = []
    for iid in ids:
        unknown = [c for c in project.labels(iid) if c not in index]
        if unknown:
            skipped[iid] = f"class {unknown[0]!r} {_UNKNOWN}"
        else:
            keep.append(iid)
    if not keep:
        raise _nothing_usable(trained, project, used, skipped)
    store = ImageStore([project.path(i) for i in keep], trained.input_size, trained.normalisation.scaling,
                       trained.in_chans, keys=keep, cache_dir=cache_dir_for(project.root))
    try:
        for done, total in store.build():
            if progress is not None:
                progress(done, 2 * total)
        skipped.update(store.problems)
        good = np.flatnonzero(store.ok)
        ids_ok = [keep[i] for i in good]
        if not ids_ok:
            raise _nothing_usable(trained, project, used, skipped)
        probs = infer(trained, store, good, device=resolve_device(device), batch_size=batch_size, tta=tta,
                      progress=(lambda d, t: progress(len(keep) + d, 2 * len(keep))) if progress else None,
                      cancel=cancel)
    finally:
        store.close()
    ids_ok = ids_ok[:len(probs)]  # fewer when cancelled
    if trained.multi_label:
        targets = np.zeros((len(ids_ok), len(classes)), np.float32)
        for i, iid in enumerate(ids_ok):
            for c in project.labels(iid):
                targets[i, index[c]] = 1
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        loss = float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())
    else:
        targets = np.array([index[project.labels(i)[0]] for i in ids_ok], dtype=np.int64)
        loss = float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-7, 1)).mean())
    metrics = compute_metrics(targets, probs, multi_label=trained.multi_label, class_names=classes, loss=loss,
                              threshold=trained.threshold)
    return EvaluationArrays(used, ids_ok, targets, probs, skipped, dict(metrics))


def evaluate(model: TrainedModel | str | os.PathLike, data: Project | str | os.PathLike, *, split: str = "auto",
             tta: bool = False, batch_size: int = 128, device: str = "auto",
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on labelled images of ``data``.

    Returns
    -------
    dict
        ``split``, ``n``, ``model``, ``metrics`` (loss, accuracy, balanced accuracy,
        precision/recall/F1 per class, macro and weighted, confusion matrix; multi-label:
        per-class and micro/macro F1, exact match), ``skipped`` (unreadable images or labels
        the model does not know).
    """
    trained = as_trained_model(model)
    project = open_project(data)
    ev = evaluate_arrays(trained, project, split=split, tta=tta, batch_size=batch_size, device=device,
                         progress=progress)
    return {"ok": True, "model": str(trained.path), "project": str(project.root), "split": ev.split,
            "n": len(ev.ids), "classes": list(trained.classes), "multi_label": trained.multi_label, "tta": tta,
            "metrics": ev.metrics, "skipped": [{"image_id": k, "reason": v} for k, v in ev.skipped.items()]}
