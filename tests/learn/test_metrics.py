"""Metrics agree with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from napari_cellclass.learn.metrics import compute_metrics, multi_label_metrics, single_label_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 4
    y = rng.integers(0, k, 60)
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, k, 60))
    p[p == 3] = 2  # class 3 never predicted: zero-division paths
    m = single_label_metrics(y, p, k)
    labels = list(range(k))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, labels=labels, average=avg, zero_division=0)
        assert m[f"precision_{avg}"] == pytest.approx(pr)
        assert m[f"recall_{avg}"] == pytest.approx(rc)
        assert m[f"f1_{avg}"] == pytest.approx(f1)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    for j, name in enumerate(m["per_class"]):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((pr[j], rc[j], f1[j], sup[j]))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p, labels=labels).tolist()


def test_balanced_accuracy_ignores_absent_classes():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 2, 1, 1])
    m = single_label_metrics(y, p, 3)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))


@pytest.mark.parametrize("seed", [0, 3])
def test_multi_label_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.random((50, 5)) < 0.4
    p = np.where(rng.random((50, 5)) < 0.75, t, ~t)
    p[:, 4] = False
    m = multi_label_metrics(t, p)
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(t, p))
    assert m["hamming_accuracy"] == pytest.approx(1 - skm.hamming_loss(t, p))
    for avg in ("micro", "macro"):
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(t, p, average=avg, zero_division=0))
        assert m[f"precision_{avg}"] == pytest.approx(skm.precision_score(t, p, average=avg, zero_division=0))
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(t, p, average=avg, zero_division=0))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(t, p, average="weighted", zero_division=0))
    f1 = skm.f1_score(t, p, average=None, zero_division=0)
    assert [v["f1"] for v in m["per_class"].values()] == pytest.approx(list(f1))


def test_compute_metrics_from_probabilities_and_threshold():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m = compute_metrics(np.array([0, 1, 1]), probs, multi_label=False, class_names=("a", "b"), loss=0.5)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["loss"] == 0.5 and list(m["per_class"]) == ["a", "b"]
    ml = compute_metrics(np.array([[1, 0], [1, 1]]), np.array([[0.7, 0.2], [0.6, 0.55]]), multi_label=True,
                         class_names=("a", "b"), threshold=0.5)
    assert ml["exact_match"] == 1.0
    ml = compute_metrics(np.array([[1, 0], [1, 1]]), np.array([[0.7, 0.2], [0.6, 0.55]]), multi_label=True,
                         class_names=("a", "b"), threshold=0.6)
    assert ml["exact_match"] == 0.5
