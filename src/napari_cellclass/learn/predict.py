"""Prediction with a trained model: files, folders, arrays or a project's images.

Images go through the same cache and normalisation as in training and run in large batches
under ``torch.inference_mode()``; optional test-time augmentation averages the four flips.
For a project, results are stored in ``cellclass_predictions.csv`` (never in the labels).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CellclassError, ConfigError, ModelError
from ..core.outputs import check_output_file
from ..core.predictions import (
    UNCERTAIN,
    Prediction,
    decision_confidence,
    export_predictions_csv,
    now_iso,
    predictions_path,
    write_predictions,
)
from ..core.project import CONFIG_NAME, Project
from ..core.scan import scan_images
from .checkpoint import TrainedModel, load_model
from .data import ImageStore, cache_dir_for
from .device import autocast, resolve_device, resolve_precision
from .events import CancelToken
from .zoo_model import ZooModel, is_zoo_package, load_zoo_model, zoo_probabilities

Progress = Callable[[int, int], None]


@dataclass
class PredictionResult:
    """Class probabilities of a set of images.

    Attributes
    ----------
    ids : list of str
        Image ids (project-relative) or file paths / ``array:<i>`` for other inputs.
    classes : tuple of str
        The model's classes (columns of ``probabilities``).
    probabilities : ndarray, shape (N, K)
        Softmax (single-label) or sigmoid (multi-label) outputs.
    min_confidence : float or None
        Images whose decision is less sure get the verdict ``uncertain`` (see :meth:`verdicts`).
    skipped : dict
        ``{id: reason}`` for images that could not be read.
    stored_in : str or None
        The project's predictions file, when the results were stored there.
    warnings : list of str
        What did not stop the prediction (the project file could not be written, bad rows in
        it were skipped, ...).
    """

    ids: list[str]
    classes: tuple[str, ...]
    probabilities: np.ndarray
    multi_label: bool = False
    threshold: float | np.ndarray = 0.5  # multi-label: one for all classes or one per class
    model_name: str = ""
    timestamp: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    stored_in: str | None = None
    warnings: list[str] = field(default_factory=list)
    min_confidence: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def top_index(self) -> np.ndarray:
        """Index of each image's most probable class."""
        return self.probabilities.argmax(axis=1) if len(self.ids) else np.zeros(0, np.int64)

    @property
    def top_class(self) -> list[str]:
        """The most probable class of each image."""
        return [self.classes[k] for k in self.top_index]

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the top class."""
        return self.probabilities.max(axis=1) if len(self.ids) else np.zeros(0, np.float32)

    def predicted(self) -> list[tuple[str, ...]]:
        """Predicted classes per image: the top class, or (multi-label) all above the threshold."""
        if not self.multi_label:
            return [(c,) for c in self.top_class]
        above = self.probabilities >= np.asarray(self.threshold)
        return [tuple(c for c, keep in zip(self.classes, row, strict=True) if keep) for row in above]

    def verdicts(self) -> list[str]:
        """Per image: the predicted class(es) joined by ``;``, or ``uncertain`` when the decision is less
        sure than :attr:`min_confidence` (single-label: the top probability; multi-label: every class's
        ``max(p, 1 - p)``); empty strings when no minimum was asked for."""
        if self.min_confidence is None:
            return [""] * len(self.ids)
        sure = decision_confidence(self.probabilities, self.multi_label)
        return [UNCERTAIN if not s >= self.min_confidence else ";".join(p)
                for s, p in zip(sure, self.predicted(), strict=True)]

    def _by_class(self, row: np.ndarray) -> dict[str, float]:
        """One image's probabilities by class name."""
        return {c: float(p) for c, p in zip(self.classes, row, strict=True)}

    def records(self) -> list[Prediction]:
        """One :class:`Prediction` per image (for the project file or a CSV)."""
        preds, verdicts = self.predicted(), self.verdicts()
        return [Prediction(iid, preds[i], float(self.confidence[i]),
                           self._by_class(self.probabilities[i]),
                           self.model_name, self.timestamp, verdicts[i]) for i, iid in enumerate(self.ids)]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the predictions to a CSV file."""
        return export_predictions_csv(path, self.records())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (one entry per image)."""
        preds, verdicts = self.predicted(), self.verdicts()
        extra = ({"min_confidence": self.min_confidence, "uncertain": verdicts.count(UNCERTAIN)}
                 if self.min_confidence is not None else {})
        return {"model": self.model_name, "classes": list(self.classes), "n": len(self.ids), **extra,
                "predictions": [{"image_id": iid, "predicted": list(preds[i]),
                                 "confidence": float(self.confidence[i]),
                                 **({"verdict": verdicts[i]} if self.min_confidence is not None else {}),
                                 "probabilities": self._by_class(self.probabilities[i])}
                                for i, iid in enumerate(self.ids)],
                "skipped": [{"image_id": k, "reason": v} for k, v in self.skipped.items()],
                "warnings": list(self.warnings)}


def as_trained_model(model: TrainedModel | str | os.PathLike) -> TrainedModel:
    """A loaded model from itself or its folder."""
    return model if isinstance(model, TrainedModel) else load_model(model)


def prediction_inputs(images: Any, ids: Sequence[str] | None, include_labelled: bool
            ) -> tuple[list[Any], list[str], Project | None]:
    """(items for the store, their ids, the project or None)."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir() and (Path(images) / CONFIG_NAME).exists():
        images = Project.open(images, create=False)
    if isinstance(images, Project):
        if ids is None:
            ids = list(images.image_ids) if include_labelled else images.unlabelled_ids()
        return [images.path(i) for i in ids], list(ids), images
    if isinstance(images, np.ndarray):
        arrays = [images] if images.ndim in (2, 3) else list(images)
        return arrays, [f"array:{i}" for i in range(len(arrays))], None
    if isinstance(images, (str, os.PathLike)):
        p = Path(images).expanduser()
        if p.is_dir():
            rel = scan_images(p)
            return [p / r for r in rel], [str(p / r) for r in rel], None
        if not p.exists():
            raise CellclassError(f"{p}: no such image or folder")
        return [p], [str(p)], None
    items = list(images)
    keys = [f"array:{i}" if isinstance(x, np.ndarray) else str(x) for i, x in enumerate(items)]
    return items, keys, None


def auto_min_confidence(trained: TrainedModel) -> float:
    """The calibrated confidence at which ``trained`` reached its target accuracy (95 %) on validation."""
    reach = trained.calibration.get("at_target")
    if not isinstance(reach, dict) or reach.get("threshold") is None:
        why = ("it was trained before calibration existed" if not trained.calibration
               else "no confidence reached the target accuracy on its validation images")
        raise ConfigError(f"{trained.path}: --min-confidence auto needs the model's calibrated threshold, but {why}; "
                          "give a number, e.g. --min-confidence 0.9")
    return float(reach["threshold"])


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a whole number >= 1; :class:`ConfigError` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not allowed; use a whole number >= 1 (e.g. --batch-size 32)")
    return int(batch_size)


def input_batches(store: ImageStore, index: np.ndarray, normalisation: Any, device: torch.device,
                  batch_size: int, cancel: CancelToken | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, x)``: normalised float32 batches of a built store's rows ``index`` on ``device``.

    Channels-last on CUDA; stops early when ``cancel`` is set.
    """
    mean, std = normalisation.tensors(device)
    for start in range(0, len(index), batch_size):
        if cancel is not None and cancel.is_set():
            return
        x = torch.from_numpy(store.gather(index[start:start + batch_size]))
        if device.type == "cuda":
            x = x.pin_memory()
        x = (x.to(device, non_blocking=True).float() - mean) / std
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        yield start, x


def eval_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode (channels-last on CUDA)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def infer(trained: TrainedModel, store: ImageStore, index: np.ndarray, *, device: torch.device,
          batch_size: int = 128, tta: bool = False, progress: Progress | None = None,
          cancel: CancelToken | None = None) -> np.ndarray:
    """Probabilities ``(len(index), K)`` for rows of a built store.

    Raises
    ------
    ModelError
        When the model gives NaN or infinite outputs (a diverged model): nothing is returned.
    """
    batch_size = check_batch_size(batch_size)
    model = eval_model(trained.model, device)
    precision = resolve_precision(trained.config.get("train_config", {}).get("precision", "auto"), device)
    multi = trained.multi_label
    temperature = trained.temperature
    out = []
    n = len(index)
    with torch.inference_mode():
        for start, x in input_batches(store, index, trained.normalisation, device, batch_size, cancel):
            views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)] if tta else [x]
            acc = None
            for v in views:
                with autocast(device, precision):
                    logits = model(v).float() / temperature
                p = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=1)
                acc = p if acc is None else acc + p
            probs = (acc / len(views)).cpu().numpy()
            bad = ~np.isfinite(probs).all(axis=1)
            if bad.any():
                first = store.keys[int(index[start + int(np.flatnonzero(bad)[0])])]
                raise ModelError(f"{trained.path}: the model gives non-finite outputs (NaN or infinity) for "
                                 f"{int(bad.sum())} image(s), e.g. {first}; it is unusable, nothing was stored: "
                                 "retrain it with a lower learning rate")
            out.append(probs)
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return np.concatenate(out) if out else np.zeros((0, len(trained.classes)), np.float32)


def predict(model: TrainedModel | str | os.PathLike, images: Any, *, ids: Sequence[str] | None = None,
            all_images: bool = False, tta: bool = False, batch_size: int = 128, device: str = "auto",
            write: bool = True, csv: str | os.PathLike | None = None, progress: Progress | None = None,
            cancel: CancelToken | None = None, min_confidence: float | str | None = None) -> PredictionResult:
    """Predict classes of images.

    Parameters
    ----------
    model
        A :class:`TrainedModel` or a model folder.
    images
        A :class:`Project` or project folder (its unlabelled images; ``all_images=True``: all,
        or the given ``ids``), a folder of images, an image file, a ``(C, Y, X)`` array, an
        ``(N, C, Y, X)`` stack, or a list of files/arrays.
    tta
        Average the predictions of the four flips.
    write
        For a project: store the results in ``cellclass_predictions.csv`` (labels untouched).
        When that file cannot be written (a read-only project) the results are still returned,
        with the reason in ``warnings`` and ``stored_in`` None.
    csv
        Also write the results to this CSV file (written first). A path that would replace a
        project's own file, an image or a label sidecar is refused before anything is predicted.
    progress
        ``progress(done, total)`` during decoding and prediction.
    min_confidence
        Give images whose decision is less sure than this (a probability in [0, 1]) the verdict
        ``uncertain`` (a ``verdict`` column in the CSV files; see :meth:`PredictionResult.verdicts`).
        ``'auto'``: the calibrated confidence at which the model reached 95 % accuracy on its
        validation images.

    Raises
    ------
    ChannelMismatchError
        An image with another channel count than the model's (the message names it).
    ConfigError
        ``batch_size`` below 1.
    ModelError
        The model gives NaN or infinite outputs (nothing is stored).
    ProjectError
        ``csv`` names a file of a project (settings, image, sidecar, ...) or a non-regular file.
    """
    if csv is not None:
        csv = check_output_file(csv)
    if min_confidence is not None and min_confidence != "auto" and not (
            isinstance(min_confidence, (int, float)) and 0 <= min_confidence <= 1):
        raise ConfigError(f"minimum confidence {min_confidence!r} is not allowed; use a probability in [0, 1], "
                          "e.g. --min-confidence 0.9, or auto")
    batch_size = check_batch_size(batch_size)
    if not isinstance(model, TrainedModel) and is_zoo_package(model):
        return _predict_zoo(load_zoo_model(model), images, ids, all_images, batch_size, write, csv, progress,
                            cancel, min_confidence)
    trained = as_trained_model(model)
    if min_confidence == "auto":
        min_confidence = auto_min_confidence(trained)
    items, keys, project = prediction_inputs(images, ids, all_images)
    dev = resolve_device(device)
    store = ImageStore(items, trained.input_size, trained.normalisation.scaling, trained.in_chans, keys=keys,
                       cache_dir=cache_dir_for(project.root) if project is not None else None)
    total = len(items)
    try:
        for done, _ in store.build(cancel=cancel):
            if progress is not None:
                progress(done, 2 * total)
        good = np.flatnonzero(store.ok)
        shift = (lambda d, t: progress(total + d, 2 * total)) if progress is not None else None  # noqa: E731
        probs = infer(trained, store, good, device=dev, batch_size=batch_size, tta=tta, progress=shift,
                      cancel=cancel)
    finally:
        store.close()
    good = good[:len(probs)]
    result = PredictionResult([keys[i] for i in good], trained.classes, probs, trained.multi_label,
                              trained.thresholds, trained.name, now_iso(), dict(store.problems),
                              min_confidence=min_confidence)
    return _keep(result, project, write, csv, progress, total)


def _predict_zoo(zoo: ZooModel, images: Any, ids: Sequence[str] | None, all_images: bool, batch_size: int,
                 write: bool, csv: Path | None, progress: Progress | None, cancel: CancelToken | None,
                 min_confidence: float | str | None) -> PredictionResult:
    """:func:`predict` with a BioImage Model Zoo package (its own pre- and post-processing)."""
    if min_confidence == "auto":
        raise ConfigError(f"{zoo.path}: --min-confidence auto needs a model calibrated here; a zoo package has no "
                          "calibration, give a number, e.g. --min-confidence 0.9")
    items, keys, project = prediction_inputs(images, ids, all_images)
    done, probs, problems = zoo_probabilities(zoo, items, keys, batch_size=min(batch_size, 64), progress=progress,
                                              cancel=cancel)
    result = PredictionResult(done, zoo.classes, probs, zoo.multi_label, zoo.thresholds, zoo.path.name, now_iso(),
                              problems, min_confidence=min_confidence)
    result.warnings.extend(zoo.notes)
    return _keep(result, project, write, csv, progress, len(items))


def _keep(result: PredictionResult, project: Project | None, write: bool, csv: Path | None,
          progress: Progress | None, total: int) -> PredictionResult:
    """Write the results to ``csv`` (first) and the project's predictions file."""
    if csv is not None:  # first: a project that cannot be written never costs the results
        result.to_csv(csv)
    if project is not None and write and len(result):
        notes: list[str] = []
        try:
            write_predictions(project.root, result.records(), problems=notes)
        except CellclassError as exc:
            note = f"{exc} (the predictions were not stored in the project"
            result.warnings.append(note + (f"; they are in {csv})" if csv is not None else ")"))
        else:
            result.stored_in = str(predictions_path(project.root))
        result.warnings.extend(notes)
    if progress is not None:
        progress(2 * total, 2 * total)
    return result
