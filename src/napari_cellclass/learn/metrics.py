"""Classification metrics in numpy (validated against scikit-learn in the tests).

Every function returns plain Python numbers and lists, so the results go straight to JSON.
Per-class precision, recall and F1 are 0 where undefined (scikit-learn's ``zero_division=0``);
macro averages run over all classes of the project.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts; rows are the true class, columns the predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                         class_names: Sequence[str] | None = None,
                         loss: float | None = None) -> OrderedDict[str, Any]:
    """Accuracy, balanced accuracy, precision/recall/F1 (per class, macro, weighted), confusion.

    Balanced accuracy is the mean recall over the classes present in ``y_true``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision, recall, f1 = _prf(tp, cm.sum(axis=0) - tp, support - tp)
    n = int(len(y_true))
    present = support > 0
    weights = support / support.sum() if support.sum() else np.zeros_like(support, dtype=np.float64)
    out: OrderedDict[str, Any] = OrderedDict()
    if loss is not None:
        out["loss"] = float(loss)
    out["n"] = n
    out["accuracy"] = float(tp.sum() / n) if n else 0.0
    out["balanced_accuracy"] = float(recall[present].mean()) if present.any() else 0.0
    out["precision_macro"] = float(precision.mean())
    out["recall_macro"] = float(recall.mean())
    out["f1_macro"] = float(f1.mean())
    out["precision_weighted"] = float((precision * weights).sum())
    out["recall_weighted"] = float((recall * weights).sum())
    out["f1_weighted"] = float((f1 * weights).sum())
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    out["per_class"] = OrderedDict(
        (names[k], {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                    "support": int(support[k])}) for k in range(num_classes))
    out["confusion_matrix"] = cm.tolist()
    return out


def multi_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str] | None = None,
                        loss: float | None = None, threshold: float | np.ndarray | None = None
                        ) -> OrderedDict[str, Any]:
    """Per-class and micro/macro precision, recall and F1, exact match and Hamming accuracy.

    ``y_true`` and ``y_pred`` are ``(N, K)`` 0/1 arrays (predictions already thresholded).
    """
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    n, k = t.shape
    tp = (t & p).sum(axis=0)
    fp = (~t & p).sum(axis=0)
    fn = (t & ~p).sum(axis=0)
    precision, recall, f1 = _prf(tp, fp, fn)
    mp, mr, mf = _prf(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    support = t.sum(axis=0)
    weights = support / support.sum() if support.sum() else np.zeros(k)
    out: OrderedDict[str, Any] = OrderedDict()
    if loss is not None:
        out["loss"] = float(loss)
    out["n"] = int(n)
    if threshold is not None:
        thr = np.asarray(threshold, np.float64)
        out["threshold"] = float(thr) if thr.ndim == 0 else [float(v) for v in thr]
    out["exact_match"] = float((t == p).all(axis=1).mean()) if n else 0.0
    out["accuracy"] = out["exact_match"]
    out["hamming_accuracy"] = float((t == p).mean()) if n else 0.0
    out["precision_micro"] = float(mp[0])
    out["recall_micro"] = float(mr[0])
    out["f1_micro"] = float(mf[0])
    out["precision_macro"] = float(precision.mean())
    out["recall_macro"] = float(recall.mean())
    out["f1_macro"] = float(f1.mean())
    out["f1_weighted"] = float((f1 * weights).sum())
    names = list(class_names) if class_names is not None else [str(j) for j in range(k)]
    out["per_class"] = OrderedDict(
        (names[j], {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                    "support": int(support[j])}) for j in range(k))
    return out


def compute_metrics(targets: np.ndarray, probabilities: np.ndarray, *, multi_label: bool,
                    class_names: Sequence[str], loss: float | None = None,
                    threshold: float | np.ndarray = 0.5) -> OrderedDict[str, Any]:
    """Metrics from targets (indices, or multi-hot when ``multi_label``) and class probabilities
    (multi-label: decided at ``threshold``, one value or one per class)."""
    probabilities = np.asarray(probabilities)
    if multi_label:
        return multi_label_metrics(targets, probabilities >= threshold, class_names, loss, threshold)
    pred = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
    return single_label_metrics(targets, pred, len(class_names), class_names, loss)


def scalar_metrics(metrics: dict[str, Any]) -> OrderedDict[str, float]:
    """Only the scalar entries (for progress lines and history plots)."""
    return OrderedDict((k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
