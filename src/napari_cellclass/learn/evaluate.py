"""Evaluate a trained model on a project's labelled images: every metric, per-image results and their CSV files."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import atomic_write_text
from ..core.errors import CellclassError
from ..core.outputs import check_figure_folder, check_output_file
from ..core.project import Project
from . import calibration as calibration_mod
from .checkpoint import TrainedModel, load_model
from .data import ImageStore, cache_dir_for
from .device import resolve_device
from .events import CancelToken
from .metrics import compute_metrics
from .predict import as_trained_model, infer
from .rundata import open_project

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
    else:
        targets = np.array([index[project.labels(i)[0]] for i in ids_ok], dtype=np.int64)
    loss = calibration_mod.negative_log_likelihood(probs, targets, trained.multi_label)
    metrics = compute_metrics(targets, probs, multi_label=trained.multi_label, class_names=classes, loss=loss,
                              threshold=trained.thresholds)
    return EvaluationArrays(used, ids_ok, targets, probs, skipped, dict(metrics))


def evaluate(model: TrainedModel | str | os.PathLike, data: Project | str | os.PathLike, *, split: str = "auto",
             tta: bool = False, batch_size: int = 128, device: str = "auto",
             progress: Callable[[int, int], None] | None = None,
             out: str | os.PathLike | None = None,
             target_accuracy: float = calibration_mod.TARGET_ACCURACY) -> dict[str, Any]:
    """Metrics of ``model`` on labelled images of ``data``; with ``out``, also their files there.

    Returns
    -------
    dict
        ``split``, ``n``, ``model``, ``metrics`` (loss, accuracy, balanced accuracy,
        precision/recall/F1 per class, macro and weighted, confusion matrix; multi-label:
        per-class and micro/macro F1, exact match), ``skipped`` (unreadable images or labels
        the model does not know), ``calibration`` (calibrated models: ``temperature``,
        ``ece_before`` / ``ece_after`` on these images), ``coverage`` (the confidence that reaches
        ``target_accuracy``, the share of images at or above it, and the curve); with ``out``,
        ``files``: the files written (see :meth:`Evaluation.export`).
    """
    if not 0 < target_accuracy <= 1:
        raise CellclassError(f"target accuracy {target_accuracy} is not allowed; use a number in (0, 1], "
                             "e.g. 0.95")
    trained = as_trained_model(model)
    project = open_project(data)
    if out is not None:  # a folder that cannot take the files is refused before the images are predicted
        export_paths(out, trained.name, evaluation_ids(trained, project, split)[0], project.root)
    ev = evaluate_arrays(trained, project, split=split, tta=tta, batch_size=batch_size, device=device,
                         progress=progress)
    result = {"ok": True, "model": str(trained.path), "project": str(project.root), "split": ev.split,
              "n": len(ev.ids), "classes": list(trained.classes), "multi_label": trained.multi_label, "tta": tta,
              "metrics": ev.metrics, "skipped": [{"image_id": k, "reason": v} for k, v in ev.skipped.items()]}
    evaluation = evaluation_of(trained, ev, target_accuracy)
    result.update(evaluation.trust())
    if out is not None:
        result["files"] = [str(p) for p in evaluation.export(out)]
    return result


# ---------------------------------------------------------------------------- per-image results and their CSV files
METRIC_COLUMNS = ["class", "precision", "recall", "f1", "support"]
#: What :meth:`Evaluation.export` writes: ``<model>_<split>_<kind>`` for each kind.
EXPORT_KINDS = ("metrics.csv", "predictions.csv", "confusion_matrix.csv", "reliability.csv", "coverage.csv",
                "reliability.png")


@dataclass
class Evaluation:
    """Per-image results of a model on one split, and its metrics.

    Single-label: ``true`` and ``pred`` are class indices ``(N,)``; multi-label
    (``multi_label``): 0/1 rows ``(N, K)``, ``pred`` thresholded. ``confidence`` is the top
    probability of each image, ``probabilities`` (when kept) every class's.
    """

    model: str
    split: str
    classes: tuple[str, ...]
    ids: list[str]
    true: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray
    metrics: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    multi_label: bool = False
    probabilities: np.ndarray | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # the model's (``config.json``); {} when none
    thresholds: np.ndarray | float = 0.5  # multi-label decision thresholds
    target_accuracy: float = calibration_mod.TARGET_ACCURACY

    @property
    def temperature(self) -> float:
        """The model's temperature (1: not calibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    def trust(self) -> dict[str, Any]:
        """``calibration`` (calibrated models) and ``coverage`` on these images (see
        :func:`.calibration.evaluation_report`)."""
        return calibration_mod.evaluation_report(self._probs(), self._targets(), self.multi_label,
                                                 temperature=self.temperature, fitted=self.calibration,
                                                 thresholds=self.thresholds, target=self.target_accuracy)

    def reliability(self) -> dict[str, list[dict[str, float]]]:
        """Reliability-diagram bins with the model's calibration (``after``) and without it (``before``)."""
        probs, targets = self._probs(), self._targets()
        raw = calibration_mod.rescale(probs, 1.0 / self.temperature, self.multi_label)
        return {"before": calibration_mod.reliability_bins(raw, targets, self.multi_label),
                "after": calibration_mod.reliability_bins(probs, targets, self.multi_label)}

    def coverage(self) -> dict[str, np.ndarray]:
        """Accuracy against the share of images accepted, most confident first (see
        :func:`.calibration.coverage_curve`)."""
        return calibration_mod.coverage_curve(self._probs(), self._targets(), self.multi_label, self.thresholds)

    def _probs(self) -> np.ndarray:
        if self.probabilities is None:
            raise CellclassError("this evaluation kept no probabilities")
        return self.probabilities

    def _targets(self) -> np.ndarray:
        return self.true

    @property
    def confusion(self) -> np.ndarray:
        """The ``(K, K)`` confusion matrix (single-label; rows: true class, columns: predicted)."""
        return np.asarray(self.metrics["confusion_matrix"], dtype=np.int64)

    def cell_ids(self, true: int, pred: int | None = None) -> list[str]:
        """Images of a confusion cell (``pred=None``: the whole row), misclassified and most
        confident first."""
        rows = np.flatnonzero((self.true == true) & ((self.pred == pred) if pred is not None else True))
        order = sorted(rows, key=lambda i: (self.true[i] == self.pred[i], -float(self.confidence[i])))
        return [self.ids[i] for i in order]

    def metrics_rows(self) -> list[list[Any]]:
        """Table rows: one per class, then accuracy, balanced accuracy, macro and weighted."""
        m = self.metrics
        rows: list[list[Any]] = []
        for name, d in m["per_class"].items():
            rows.append([name, d["precision"], d["recall"], d["f1"], d["support"]])
        n = int(m.get("n", len(self.ids)))
        rows.append(["accuracy", "", "", m["accuracy"], n])
        if "balanced_accuracy" in m:
            rows.append(["balanced accuracy", "", "", m["balanced_accuracy"], n])
        rows.append(["macro avg", m["precision_macro"], m["recall_macro"], m["f1_macro"], n])
        if "precision_weighted" in m:
            rows.append(["weighted avg", m["precision_weighted"], m["recall_weighted"], m["f1_weighted"], n])
        return rows

    def export(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``<model>_<split>_metrics.csv``, ``..._predictions.csv``, ``..._confusion_matrix.csv``,
        ``..._reliability.csv`` (bins without and with calibration), ``..._coverage.csv`` and
        ``..._reliability.png`` (the reliability diagram beside the coverage curve); the last three
        only when the evaluation kept its probabilities.

        The folder is created when missing; nothing is created or written when one of the files
        would replace a project's file (see :func:`export_paths`).
        """
        paths = export_paths(folder, self.model, self.split)
        try:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CellclassError(f"{paths[0].parent}: cannot create the folder ({exc.strerror or exc}); "
                                 "choose another folder") from None
        write = {"metrics.csv": self.export_metrics, "predictions.csv": self.export_predictions,
                 "confusion_matrix.csv": self.export_confusion, "reliability.csv": self.export_reliability,
                 "coverage.csv": self.export_coverage, "reliability.png": self.export_figure}
        kinds = EXPORT_KINDS if self.probabilities is not None else EXPORT_KINDS[:3]
        return [write[kind](path) for kind, path in zip(kinds, paths, strict=False)]

    def export_metrics(self, path: str | os.PathLike) -> Path:
        """Write the metrics table as CSV."""
        return write_csv(path, METRIC_COLUMNS, self.metrics_rows())

    def export_reliability(self, path: str | os.PathLike) -> Path:
        """Write the reliability-diagram bins as CSV: confidence range, then count, mean confidence and
        accuracy without (``raw``) and with the model's calibration."""
        rel = self.reliability()
        rows = [[b["lower"], b["upper"], b["count"], _blank(r["confidence"]), _blank(r["accuracy"]),
                 _blank(b["confidence"]), _blank(b["accuracy"])]
                for r, b in zip(rel["before"], rel["after"], strict=True)]
        return write_csv(path, ["lower", "upper", "count", "raw_confidence", "raw_accuracy", "confidence", "accuracy"],
                         rows)

    def export_coverage(self, path: str | os.PathLike) -> Path:
        """Write the coverage curve as CSV: per confidence threshold, the share of images accepted and
        their accuracy."""
        points = calibration_mod.curve_points(self.coverage(), most=1001)
        return write_csv(path, ["threshold", "coverage", "accuracy"],
                         [[p["threshold"], p["coverage"], p["accuracy"]] for p in points])

    def export_figure(self, path: str | os.PathLike) -> Path:
        """Write the reliability diagram and the coverage curve as one PNG."""
        from .figures import save_png, trust_figure

        return save_png(trust_figure(self.reliability(), self.coverage(), self.trust(),
                                     f"{self.model} on the '{self.split}' split ({len(self.ids)} images)"), path)

    def export_confusion(self, path: str | os.PathLike) -> Path:
        """Write the confusion matrix as CSV (rows: true class, columns: predicted class); multi-label:
        each class's true/false positives and negatives."""
        if self.multi_label:
            t, p = self.true.astype(bool), self.pred.astype(bool)
            rows = [[c, int((t[:, k] & p[:, k]).sum()), int((~t[:, k] & p[:, k]).sum()),
                     int((t[:, k] & ~p[:, k]).sum()), int((~t[:, k] & ~p[:, k]).sum())]
                    for k, c in enumerate(self.classes)]
            return write_csv(path, ["class", "true positive", "false positive", "false negative", "true negative"],
                             rows)
        cm = self.confusion
        rows = [[c, *map(int, cm[i])] for i, c in enumerate(self.classes)]
        return write_csv(path, ["true \\ predicted", *self.classes], rows)

    def export_predictions(self, path: str | os.PathLike) -> Path:
        """Write the per-image true and predicted classes as CSV (multi-label: ``;``-joined, with every
        class's probability)."""
        if self.multi_label:
            probs = self.probabilities if self.probabilities is not None else np.zeros(self.pred.shape)
            rows = [[iid, self._names(t), self._names(p), bool((t == p).all()), *(f"{v:.6f}" for v in pr)]
                    for iid, t, p, pr in zip(self.ids, self.true, self.pred, probs, strict=True)]
            return write_csv(path, ["image_id", "true", "predicted", "correct", *(f"p:{c}" for c in self.classes)],
                             rows)
        rows = [[iid, self.classes[t], self.classes[p], f"{c:.6f}", bool(t == p)]
                for iid, t, p, c in zip(self.ids, self.true, self.pred, self.confidence, strict=True)]
        return write_csv(path, ["image_id", "true", "predicted", "confidence", "correct"], rows)

    def _names(self, row: np.ndarray) -> str:
        return ";".join(c for c, v in zip(self.classes, row, strict=True) if v)


def export_paths(folder: str | os.PathLike, model: str, split: str,
                 project_root: str | os.PathLike | None = None) -> list[Path]:
    """The files :meth:`Evaluation.export` writes into ``folder``, each checked.

    Raises
    ------
    CellclassError
        One line when ``folder`` is an existing file, lies inside ``project_root`` (the reliability
        diagram would become an image of the project), or a file would replace a project's
        settings, an image, a label sidecar, a model or cache file (``ProjectError``).
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CellclassError(f"{folder}: is a file, not a folder; give a folder for the evaluation files")
    if project_root is not None:
        check_figure_folder(folder, project_root, "--out", "the reliability diagram", "evaluation")
    return [check_output_file(folder / f"{model}_{split}_{kind}") for kind in EXPORT_KINDS]


def _blank(value: float) -> float | str:
    """An empty CSV cell for NaN (an empty bin)."""
    return "" if value != value else value


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV file atomically (floats with 6 decimals); returns its path.

    A project's own files, images, sidecars and weights are refused (``ProjectError``, see
    :func:`~napari_cellclass.core.outputs.check_output_file`).
    """
    path = check_output_file(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in r])
    atomic_write_text(path, buf.getvalue(), fsync=False)
    return path


def evaluation_of(trained: TrainedModel, ev: EvaluationArrays,
                  target_accuracy: float = calibration_mod.TARGET_ACCURACY) -> Evaluation:
    """The :class:`Evaluation` of per-image results (multi-label predictions at the model's thresholds)."""
    probs = ev.probabilities
    n = len(ev.ids)
    confidence = probs.max(axis=1) if n else np.zeros(0)
    if trained.multi_label:
        pred = (probs >= trained.thresholds).astype(np.int64) if n else np.zeros((0, len(trained.classes)), np.int64)
        return Evaluation(trained.name, ev.split, trained.classes, ev.ids, ev.targets.astype(np.int64), pred,
                          confidence, ev.metrics, ev.skipped, True, probs, trained.calibration, trained.thresholds,
                          target_accuracy)
    top = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    return Evaluation(trained.name, ev.split, trained.classes, ev.ids, ev.targets, top, confidence, ev.metrics,
                      ev.skipped, False, probs, trained.calibration, target_accuracy=target_accuracy)


def evaluate_split(model_dir: str | os.PathLike, project: Project, split: str = "auto",
                   progress: Callable[[int, int], None] | None = None,
                   cancel: CancelToken | None = None) -> Evaluation:
    """Evaluate a model on a split of ``project`` keeping per-image results (single-label models)."""
    trained = load_model(model_dir)
    if trained.multi_label:
        raise CellclassError("the metrics dock shows single-label models; for multi-label models use "
                             "`napari-cellclass evaluate`")
    return evaluation_of(trained, evaluate_arrays(trained, project, split=split, progress=progress, cancel=cancel))
