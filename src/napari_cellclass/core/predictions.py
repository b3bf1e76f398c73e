"""Model predictions stored beside the project, apart from the human labels (numpy/csv only).

``<project>/cellclass_predictions.csv`` has one row per predicted image: ``image_id``,
``predicted`` (class names joined by ``;`` for multi-label), ``confidence``, ``verdict`` (when
predicted with a minimum confidence: the prediction, or ``uncertain``), one ``p:<class>`` column
per class, ``model``, ``timestamp`` and (when recorded) ``model_id``, the model folder's name and a
digest of its weights, so a rerun can tell which rows that same model made. Writing merges with the
rows already there (new predictions of an image replace its old row) and is atomic. Label sidecars
are never touched. The napari widgets read this module without importing torch.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from .atomic import atomic_write_text, resolve_target
from .errors import ProjectError
from .outputs import check_output_file
from .textfiles import MAX_CSV_BYTES, read_text_bounded

PREDICTIONS_NAME = "cellclass_predictions.csv"
PROB_PREFIX = "p:"
#: The verdict of a prediction below the minimum confidence.
UNCERTAIN = "uncertain"
_FIXED = ("image_id", "predicted", "confidence")
_VERDICT = "verdict"
_TAIL = ("model", "timestamp")
_MODEL_ID = "model_id"


@dataclass(frozen=True)
class Prediction:
    """The prediction of one image.

    Attributes
    ----------
    image_id : str
        Image id (or file path for images outside a project).
    classes : tuple of str
        Predicted class(es); empty when no class passes the multi-label threshold.
    confidence : float
        Probability of the top class.
    probabilities : dict
        ``{class name: probability}`` for every class of the model.
    model : str
        Name of the model folder that made it.
    timestamp : str
        ISO-8601 UTC time of the prediction.
    verdict : str
        With a minimum confidence: the predicted class(es) joined by ``;``, or ``uncertain``;
        empty when none was asked for.
    model_id : str
        ``<model folder name>@<weights digest>`` (empty in files written before it existed).
    """

    image_id: str
    classes: tuple[str, ...]
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    model: str = ""
    timestamp: str = ""
    verdict: str = ""
    model_id: str = ""

    @property
    def top_class(self) -> str | None:
        """The most probable class (also for multi-label)."""
        if not self.probabilities:
            return self.classes[0] if self.classes else None
        return max(self.probabilities, key=self.probabilities.__getitem__)


def decision_confidence(probabilities: np.ndarray, multi_label: bool) -> np.ndarray:
    """How sure each image's decision is, ``(N,)`` from ``(N, K)`` probabilities: the top class's
    probability, or (multi-label) the least certain class decision ``min_k max(p_k, 1 - p_k)``."""
    p = np.asarray(probabilities, np.float64)
    if not len(p):
        return np.zeros(0)
    return np.maximum(p, 1 - p).min(axis=1) if multi_label else p.max(axis=1)


def is_uncertain(prediction: Prediction, min_confidence: float, multi_label: bool = False) -> bool:
    """True when the prediction's decision is less sure than ``min_confidence`` (see
    :func:`decision_confidence`); NaN counts as uncertain."""
    if multi_label and prediction.probabilities:
        sure = float(decision_confidence(np.array([list(prediction.probabilities.values())]), True)[0])
    else:
        sure = prediction.confidence
    return not (isinstance(sure, (int, float)) and math.isfinite(sure) and sure >= min_confidence)


def now_iso(timespec: str = "seconds", at: float | None = None) -> str:
    """The time ``at`` (seconds since the epoch; default now) as ISO-8601 UTC text."""
    when = _dt.datetime.now(_dt.timezone.utc) if at is None else _dt.datetime.fromtimestamp(at, _dt.timezone.utc)
    return when.isoformat(timespec=timespec)


def predictions_path(root: str | os.PathLike) -> Path:
    """``<project>/cellclass_predictions.csv``."""
    return Path(root) / PREDICTIONS_NAME


def csv_header(classes: Iterable[str], verdict: bool, model_id: bool) -> list[str]:
    """The columns of a predictions CSV: fixed, verdict (optional), one per class, model, timestamp, model_id
    (optional)."""
    return [*_FIXED, *((_VERDICT,) if verdict else ()), *(PROB_PREFIX + c for c in classes), *_TAIL,
            *((_MODEL_ID,) if model_id else ())]


def csv_row(p: Prediction, classes: Iterable[str], verdict: bool, model_id: bool) -> list[str]:
    """One prediction as the cells of :func:`csv_header`'s columns."""
    probs = [("" if c not in p.probabilities else f"{p.probabilities[c]:.6f}") for c in classes]
    return [p.image_id, ";".join(p.classes), f"{p.confidence:.6f}", *((p.verdict,) if verdict else ()),
            *probs, p.model, p.timestamp, *((p.model_id,) if model_id else ())]


def to_csv_text(predictions: Iterable[Prediction]) -> str:
    """CSV text for predictions (columns: see :func:`csv_header`; classes in first-seen order)."""
    preds = list(predictions)
    classes: list[str] = []
    for p in preds:
        for c in p.probabilities:
            if c not in classes:
                classes.append(c)
    verdicts = any(p.verdict for p in preds)
    ids = any(p.model_id for p in preds)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_header(classes, verdicts, ids))
    for p in preds:
        w.writerow(csv_row(p, classes, verdicts, ids))
    return buf.getvalue()


def meets_confidence(prediction: Prediction, min_confidence: float, max_confidence: float = 1.0) -> bool:
    """True when the prediction's confidence lies in ``[min_confidence, max_confidence]``.

    A NaN or infinite confidence (a broken model) never passes, whatever the bounds.
    """
    c = prediction.confidence
    return isinstance(c, (int, float)) and math.isfinite(c) and min_confidence <= c <= max_confidence


def filter_by_confidence(predictions: Iterable[Prediction] | Mapping[str, Prediction], min_confidence: float = 0.0,
                         max_confidence: float = 1.0) -> list[Prediction]:
    """The predictions whose confidence lies in the range (NaN never does), in their order."""
    items = predictions.values() if isinstance(predictions, Mapping) else predictions
    return [p for p in items if meets_confidence(p, min_confidence, max_confidence)]


def _finite(value: str | None, what: str) -> float:
    x = float(value)  # ValueError for text
    if not math.isfinite(x):
        raise ValueError(f"{what} {value!r} is not a finite number")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{what} {value!r} is not a probability")
    return x


def _parse_row(row: Mapping[str, str | None], classes: list[str]) -> Prediction:
    """One prediction from a CSV row; ValueError (or TypeError) when a value is not usable."""
    iid = (row.get("image_id") or "").strip()
    if not iid:
        raise ValueError("no image id")
    probs = {c: _finite(row[PROB_PREFIX + c], f"p:{c}") for c in classes
             if row.get(PROB_PREFIX + c) not in (None, "")}
    pred = tuple(c for c in (row.get("predicted") or "").split(";") if c)
    conf = _finite(row.get("confidence") or "0", "confidence")
    return Prediction(iid, pred, conf, probs, row.get("model") or "", row.get("timestamp") or "",
                      (row.get(_VERDICT) or "").strip(), (row.get(_MODEL_ID) or "").strip())


def read_rows(path: Path, fh: IO[str], problems: list[str] | None) -> dict[str, Prediction]:
    """``{image_id: Prediction}`` from an open predictions table (``path`` names it in messages)."""
    reader = csv.DictReader(fh)
    fields = reader.fieldnames or []
    if "image_id" not in fields or "predicted" not in fields:
        raise ProjectError(f"{path}: not a predictions file (needs image_id and predicted columns)")
    classes = [f[len(PROB_PREFIX):] for f in fields if f.startswith(PROB_PREFIX)]
    out: dict[str, Prediction] = {}
    for row in reader:
        try:
            p = _parse_row(row, classes)
        except (ValueError, TypeError) as exc:
            if problems is not None:
                iid = (row.get("image_id") or "").strip()
                problems.append(f"{path}: line {reader.line_num} ({iid or 'no id'}) skipped: {exc}")
            continue
        out[p.image_id] = p
    return out


def read_predictions_csv(path: str | os.PathLike, problems: list[str] | None = None) -> dict[str, Prediction]:
    """``{image_id: Prediction}`` from a predictions CSV (empty when the file does not exist).

    A UTF-8 byte-order mark is accepted. A row with a bad value (text or NaN where a
    probability belongs, a missing id) is skipped; each skipped row is described in
    ``problems`` when a list is given. A file that is not a predictions table at all raises
    :class:`ProjectError`.
    """
    path = Path(path)
    text = read_text_bounded(path, MAX_CSV_BYTES, "predictions", fix="delete the file to start afresh",
                             missing_ok=True)
    if text is None:
        return {}
    try:
        return read_rows(path, io.StringIO(text, newline=""), problems)
    except csv.Error as exc:
        raise ProjectError(f"{path}: cannot read the predictions ({' '.join(str(exc).split())}); delete the file "
                           "to start afresh") from None


def read_predictions(root: str | os.PathLike, problems: list[str] | None = None) -> dict[str, Prediction]:
    """The stored predictions of a project (``{image_id: Prediction}``; bad rows skipped, see
    :func:`read_predictions_csv`)."""
    return read_predictions_csv(predictions_path(root), problems)


def _check_finite(predictions: Iterable[Prediction]) -> list[Prediction]:
    items = list(predictions)
    for p in items:
        values = [p.confidence, *p.probabilities.values()]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ProjectError(f"{p.image_id}: refusing to store non-finite (NaN or infinite) predictions; the model "
                               "is broken, retrain it with a lower learning rate")
    return items


def _move_aside(path: Path, copy: bool = False) -> Path:
    """Rename (or copy) a damaged predictions file to ``cellclass_predictions.damaged-<time>.csv``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}")
    n = 2
    while dest.exists():
        dest = path.with_name(f"{path.stem}.damaged-{stamp}-{n}{path.suffix}")
        n += 1
    try:
        if copy:
            shutil.copy2(path, dest)
        else:
            os.replace(path, dest)
    except OSError as exc:
        raise ProjectError(f"{path}: damaged and cannot be moved aside ({exc.strerror or exc}); delete or fix "
                           "the file") from None
    return dest


def write_predictions(root: str | os.PathLike, predictions: Iterable[Prediction], *, replace: bool = False,
                      problems: list[str] | None = None) -> Path:
    """Store predictions in ``<project>/cellclass_predictions.csv`` (atomic; labels untouched).

    Rows of other images are kept unless ``replace`` is True. A stored file that cannot be
    read, or has bad rows, never blocks the write: it is moved aside (kept as
    ``cellclass_predictions.damaged-<time>.csv``) and what was readable is merged; both are
    described in ``problems`` when a list is given. NaN or infinite values are refused.
    """
    path = predictions_path(root)
    resolve_target(path)  # a FIFO or folder in its place is refused, never moved aside or read
    new = _check_finite(predictions)
    notes: list[str] = []
    merged: dict[str, Prediction] = {}
    if not replace:
        try:
            merged = read_predictions_csv(path, notes)
        except ProjectError as exc:
            notes.append(str(exc))
            merged = {}
            notes.append(f"{path}: moved aside to {_move_aside(path).name}; a new file is written")
        else:
            if notes:
                notes.append(f"{path}: the original was kept as {_move_aside(path, copy=True).name}")
    for p in new:
        merged[p.image_id] = p
    atomic_write_text(path, to_csv_text(merged.values()), fsync=False)
    if problems is not None:
        problems.extend(notes)
    return path


def export_predictions_csv(path: str | os.PathLike,
                           predictions: Iterable[Prediction] | Mapping[str, Prediction]) -> Path:
    """Write predictions to a CSV file of the user's (atomic; NaN or infinite values are refused).

    A project's own files, images and other precious files are refused (see :mod:`.outputs`).
    """
    items = _check_finite(predictions.values() if isinstance(predictions, Mapping) else predictions)
    path = check_output_file(path)
    atomic_write_text(path, to_csv_text(items), fsync=False)
    return path
