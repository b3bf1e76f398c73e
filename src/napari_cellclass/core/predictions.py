"""Model predictions stored beside the project, apart from the human labels (numpy/csv only).

``<project>/cellclass_predictions.csv`` has one row per predicted image: ``image_id``,
``predicted`` (class names joined by ``;`` for multi-label), ``confidence``, one ``p:<class>``
column per class, ``model`` and ``timestamp``. Writing merges with the rows already there
(new predictions of an image replace its old row) and is atomic. Label sidecars are never
touched. The napari widgets read this module without importing torch.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ProjectError

PREDICTIONS_NAME = "cellclass_predictions.csv"
PROB_PREFIX = "p:"
_FIXED = ("image_id", "predicted", "confidence")
_TAIL = ("model", "timestamp")


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
    """

    image_id: str
    classes: tuple[str, ...]
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    model: str = ""
    timestamp: str = ""

    @property
    def top_class(self) -> str | None:
        """The most probable class (also for multi-label)."""
        if not self.probabilities:
            return self.classes[0] if self.classes else None
        return max(self.probabilities, key=self.probabilities.__getitem__)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def predictions_path(root: str | os.PathLike) -> Path:
    """``<project>/cellclass_predictions.csv``."""
    return Path(root) / PREDICTIONS_NAME


def to_csv_text(predictions: Iterable[Prediction]) -> str:
    """CSV text for predictions (columns: fixed, one per class in first-seen order, model, timestamp)."""
    preds = list(predictions)
    classes: list[str] = []
    for p in preds:
        for c in p.probabilities:
            if c not in classes:
                classes.append(c)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*_FIXED, *(PROB_PREFIX + c for c in classes), *_TAIL])
    for p in preds:
        probs = [("" if c not in p.probabilities else f"{p.probabilities[c]:.6f}") for c in classes]
        w.writerow([p.image_id, ";".join(p.classes), f"{p.confidence:.6f}", *probs, p.model, p.timestamp])
    return buf.getvalue()


def read_predictions_csv(path: str | os.PathLike) -> dict[str, Prediction]:
    """``{image_id: Prediction}`` from a predictions CSV (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, Prediction] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "image_id" not in fields or "predicted" not in fields:
                raise ProjectError(f"{path}: not a predictions file (needs image_id and predicted columns)")
            classes = [f[len(PROB_PREFIX):] for f in fields if f.startswith(PROB_PREFIX)]
            for row in reader:
                probs = {c: float(row[PROB_PREFIX + c]) for c in classes if row.get(PROB_PREFIX + c) not in (None, "")}
                pred = tuple(c for c in (row.get("predicted") or "").split(";") if c)
                out[row["image_id"]] = Prediction(row["image_id"], pred, float(row.get("confidence") or 0.0),
                                                  probs, row.get("model", ""), row.get("timestamp", ""))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, KeyError) as exc:
        raise ProjectError(f"{path}: cannot read the predictions ({exc}); delete the file to start afresh") from None
    return out


def read_predictions(root: str | os.PathLike) -> dict[str, Prediction]:
    """The stored predictions of a project (``{image_id: Prediction}``)."""
    return read_predictions_csv(predictions_path(root))


def write_predictions(root: str | os.PathLike, predictions: Iterable[Prediction], *, replace: bool = False) -> Path:
    """Store predictions in ``<project>/cellclass_predictions.csv`` (atomic; labels untouched).

    Rows of other images are kept unless ``replace`` is True.
    """
    path = predictions_path(root)
    merged: dict[str, Prediction] = {} if replace else read_predictions_csv(path)
    for p in predictions:
        merged[p.image_id] = p
    atomic_write_text(path, to_csv_text(merged.values()), fsync=False)
    return path


def export_predictions_csv(path: str | os.PathLike, predictions: Iterable[Prediction] | Mapping[str, Prediction]) -> Path:
    """Write predictions to any CSV file (atomic)."""
    items = predictions.values() if isinstance(predictions, Mapping) else predictions
    path = Path(path).expanduser()
    atomic_write_text(path, to_csv_text(items), fsync=False)
    return path


def clear_predictions(root: str | os.PathLike) -> bool:
    """Delete a project's stored predictions; True when there were some."""
    try:
        predictions_path(root).unlink()
        return True
    except FileNotFoundError:
        return False
