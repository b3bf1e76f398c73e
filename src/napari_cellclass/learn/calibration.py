"""Calibrated confidence: temperature scaling, expected calibration error, reliability bins, coverage vs accuracy.

Temperature scaling (Guo et al. 2017) divides the logits by one number fitted on the validation
split (lowest negative log-likelihood); it never changes which class is on top. Everything here
works on probabilities: dividing the logits by ``t`` is ``softmax(log p / t)`` (multi-label:
``sigmoid(logit(p) / t)``), so the raw and the calibrated probabilities can be turned into each
other exactly. Multi-label models also get a decision threshold per class, chosen on validation.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.predictions import decision_confidence

__all__ = ["ECE_BINS", "TARGET_ACCURACY", "calibrate", "class_thresholds", "coverage_curve", "curve_points",
           "describe", "evaluation_report", "expected_calibration_error", "fit_temperature",
           "negative_log_likelihood", "reliability_bins", "rescale", "threshold_for_accuracy"]

#: Equal-width confidence bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15
#: The accuracy the coverage report aims for by default ("95 % accurate on 81 % of the images").
TARGET_ACCURACY = 0.95
_EPS = 1e-7
_T_RANGE = (0.05, 20.0)


def rescale(probs: np.ndarray, temperature: float, multi_label: bool) -> np.ndarray:
    """The probabilities the same model gives with its logits divided by ``temperature``."""
    p = np.clip(np.asarray(probs, np.float64), _EPS, 1 - _EPS)
    if multi_label:
        z = np.log(p) - np.log1p(-p)
        return (1.0 / (1.0 + np.exp(-z / temperature))).astype(np.float32)
    z = np.log(p) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _confidence_correct(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each decision's confidence and whether it was right (multi-label: one decision per image and class)."""
    probs = np.asarray(probs, np.float64)
    if multi_label:
        p = probs.ravel()
        return np.maximum(p, 1 - p), (p >= 0.5) == (np.asarray(targets).ravel() > 0.5)
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(targets)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, multi_label: bool, bins: int = ECE_BINS
                     ) -> list[dict[str, float]]:
    """Per confidence bin: ``lower``, ``upper``, ``count``, mean ``confidence`` and ``accuracy`` (NaN when empty)."""
    conf, correct = _confidence_correct(probs, targets, multi_label)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                    "confidence": float(conf[m].mean()) if n else float("nan"),
                    "accuracy": float(correct[m].mean()) if n else float("nan")})
    return out


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, multi_label: bool,
                               bins: int = ECE_BINS) -> float:
    """Expected calibration error: the count-weighted mean gap between confidence and accuracy over the bins."""
    rows = reliability_bins(probs, targets, multi_label, bins)
    total = sum(r["count"] for r in rows)
    if not total:
        return float("nan")
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / total)


def negative_log_likelihood(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Mean cross-entropy of ``targets`` (class indices; multi-label: 0/1 rows) under ``probs``."""
    probs = np.asarray(probs, np.float64)
    if multi_label:
        p = np.clip(probs, _EPS, 1 - _EPS)
        t = np.asarray(targets, np.float64)
        return float(-(t * np.log(p) + (1 - t) * np.log1p(-p)).mean())
    return float(-np.log(np.clip(probs[np.arange(len(probs)), np.asarray(targets)], _EPS, 1)).mean())


def fit_temperature(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """The temperature with the lowest negative log-likelihood of ``targets`` (bounded to [0.05, 20]).

    1 when every decision is right: the likelihood then only grows as the temperature goes to 0,
    and sharpening a model on images it never gets wrong would make it overconfident elsewhere.
    """
    from scipy.optimize import minimize_scalar

    if not len(probs) or _confidence_correct(probs, targets, multi_label)[1].all():
        return 1.0
    def nll(t: float) -> float:
        return negative_log_likelihood(rescale(probs, t, multi_label), targets, multi_label)

    lo, hi = np.log(_T_RANGE)
    res = minimize_scalar(lambda s: nll(float(np.exp(s))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # never worse than no scaling (a flat likelihood, e.g. every image right with p ~ 1)
    if nll(t) > negative_log_likelihood(probs, targets, multi_label):
        return 1.0
    return t


def class_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per class, the decision threshold with the best F1 on these images (``default`` for a class
    without a positive image); ties go to the threshold nearest ``default``."""
    probs = np.asarray(probs, np.float64)
    targets = np.asarray(targets) > 0.5
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    out = np.full(probs.shape[1], default, np.float64)
    for k in range(probs.shape[1]):
        t = targets[:, k]
        if not t.any():
            continue
        pred = probs[:, k][None, :] >= grid[:, None]
        tp = (pred & t).sum(axis=1)
        f1 = 2 * tp / np.maximum(pred.sum(axis=1) + t.sum(), 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[k] = grid[best[np.argmin(np.abs(grid[best] - default))]]
    return out


def coverage_curve(probs: np.ndarray, targets: np.ndarray, multi_label: bool,
                   thresholds: np.ndarray | float = 0.5) -> dict[str, np.ndarray]:
    """Accuracy of the images kept when only those at or above each confidence are accepted.

    Returns ``threshold``, ``coverage`` and ``accuracy`` arrays, most confident first: entry
    ``i`` keeps the ``i + 1`` most confident images. An image's confidence is its top class's
    probability (multi-label: its least certain class decision, ``min max(p, 1 - p)``); it is
    right when its class (multi-label: every class decision at ``thresholds``) is.
    """
    probs = np.asarray(probs, np.float64)
    n = len(probs)
    conf = decision_confidence(probs, multi_label)
    if multi_label:
        correct = ((probs >= np.asarray(thresholds)) == (np.asarray(targets) > 0.5)).all(axis=1)
    else:
        correct = (probs.argmax(axis=1) == np.asarray(targets)) if n else np.zeros(0, bool)
    order = np.argsort(-conf, kind="stable")
    kept = np.arange(1, n + 1)
    return {"threshold": conf[order], "coverage": kept / max(n, 1),
            "accuracy": np.cumsum(correct[order]) / kept}


def threshold_for_accuracy(curve: dict[str, np.ndarray], target: float = TARGET_ACCURACY) -> dict[str, Any] | None:
    """The lowest confidence threshold whose accepted images reach ``target`` accuracy (most images kept).

    ``{"target", "threshold", "coverage", "accuracy"}``, or None when no threshold reaches it.
    Images with the same confidence are kept or left together.
    """
    thr, cov, acc = curve["threshold"], curve["coverage"], curve["accuracy"]
    last_of_tie = np.r_[thr[1:] != thr[:-1], True] if len(thr) else np.zeros(0, bool)
    ok = np.flatnonzero((acc >= target - 1e-12) & last_of_tie)
    if not len(ok):
        return None
    i = int(ok.max())
    return {"target": float(target), "threshold": float(thr[i]), "coverage": float(cov[i]),
            "accuracy": float(acc[i])}


def curve_points(curve: dict[str, np.ndarray], most: int = 101) -> list[dict[str, float]]:
    """At most ``most`` evenly spaced points of a coverage curve (for JSON and plots)."""
    n = len(curve["coverage"])
    pick = np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int)) if n else []
    return [{"threshold": float(curve["threshold"][i]), "coverage": float(curve["coverage"][i]),
             "accuracy": float(curve["accuracy"][i])} for i in pick]


def calibrate(probs: np.ndarray, targets: np.ndarray, multi_label: bool, *, split: str = "val",
              class_names: Sequence[str] = (), target: float = TARGET_ACCURACY) -> dict[str, Any]:
    """The calibration of a model from its raw probabilities on a labelled split (``config.json``'s block).

    ``{"method", "temperature", "ece_before", "ece_after", "bins", "split", "n"}``, multi-label
    also ``thresholds`` (per class name), and ``at_target``: the confidence that reaches
    ``target`` accuracy on that split after scaling (see :func:`threshold_for_accuracy`).
    """
    t = fit_temperature(probs, targets, multi_label)
    after = rescale(probs, t, multi_label)
    out: dict[str, Any] = {
        "method": "temperature", "temperature": round(t, 6), "bins": ECE_BINS, "split": split, "n": int(len(probs)),
        "ece_before": round(expected_calibration_error(probs, targets, multi_label), 6),
        "ece_after": round(expected_calibration_error(after, targets, multi_label), 6)}
    if _confidence_correct(probs, targets, multi_label)[1].all():
        out["note"] = "every decision on these images is right: the temperature stays 1"
    thresholds: np.ndarray | float = 0.5
    if multi_label:
        thresholds = class_thresholds(after, targets)
        out["thresholds"] = {c: float(v) for c, v in zip(class_names, thresholds, strict=True)}
    out["at_target"] = threshold_for_accuracy(coverage_curve(after, targets, multi_label, thresholds), target)
    return out


def evaluation_report(probs: np.ndarray, targets: np.ndarray, multi_label: bool, *, temperature: float = 1.0,
                      fitted: dict[str, Any] | None = None, thresholds: np.ndarray | float = 0.5,
                      target: float = TARGET_ACCURACY) -> dict[str, Any]:
    """What ``evaluate`` says about trust on a labelled split (``probs``: the calibrated probabilities).

    ``calibration`` (when the model has one, ``fitted``: its ``config.json`` block): the
    temperature and the expected calibration error on these images without and with it;
    ``coverage``: the confidence threshold reaching ``target`` accuracy (null when none does),
    its coverage and accuracy, and up to 101 points of the curve.
    """
    out: dict[str, Any] = {}
    if fitted:
        raw = rescale(probs, 1.0 / temperature, multi_label)
        out["calibration"] = {"temperature": temperature,
                              "ece_before": expected_calibration_error(raw, targets, multi_label),
                              "ece_after": expected_calibration_error(probs, targets, multi_label),
                              "bins": ECE_BINS, "fitted_on": fitted.get("split", "val"), "fitted_n": fitted.get("n")}
    curve = coverage_curve(probs, targets, multi_label, thresholds)
    reach = threshold_for_accuracy(curve, target) or {"target": float(target), "threshold": None, "coverage": 0.0,
                                                      "accuracy": None}
    out["coverage"] = {**reach, "curve": curve_points(curve)}
    return out


def describe(trust: dict[str, Any]) -> list[str]:
    """Human lines of :func:`evaluation_report`: the calibration, and the coverage at the target accuracy."""
    lines = []
    cal, cov = trust.get("calibration"), trust["coverage"]
    if cal:
        lines.append(f"calibration: temperature {cal['temperature']:.3g}; expected calibration error "
                     f"{cal['ece_before']:.3f} without, {cal['ece_after']:.3f} with it ({cal['bins']} bins)")
    if cov["threshold"] is not None:
        lines.append(f"{cov['accuracy']:.1%} accurate on {cov['coverage']:.0%} of the images at confidence "
                     f">= {cov['threshold']:.3f} (target {cov['target']:.0%})")
    else:
        lines.append(f"no confidence threshold reaches {cov['target']:.0%} accuracy on these images")
    return lines

