"""Per-image evaluation results and their CSV files (what the Metrics dock and `evaluate --out` write)."""
from __future__ import annotations

import csv

import numpy as np

from napari_cellclass.learn.evaluate import Evaluation
from napari_cellclass.learn.metrics import multi_label_metrics, single_label_metrics

CLASSES = ("a", "b", "c")


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_single_label_files_and_confusion_cells(tmp_path):
    true = np.array([0, 0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2, 0])
    conf = np.array([0.9, 0.6, 0.8, 0.7, 0.95])
    ev = Evaluation("m", "val", CLASSES, ["i0", "i1", "i2", "i3", "i4"], true, pred, conf,
                    dict(single_label_metrics(true, pred, 3, CLASSES)))
    assert ev.cell_ids(2) == ["i4", "i3"]  # misclassified first, then by confidence
    paths = ev.export(tmp_path / "out")
    assert [p.name for p in paths] == ["m_val_metrics.csv", "m_val_predictions.csv", "m_val_confusion_matrix.csv"]
    metrics, preds, cm = (_read(p) for p in paths)
    assert metrics[0] == ["class", "precision", "recall", "f1", "support"] and metrics[1][0] == "a"
    assert [r[0] for r in metrics[4:]] == ["accuracy", "balanced accuracy", "macro avg", "weighted avg"]
    assert preds[1] == ["i0", "a", "a", "0.900000", "True"] and preds[2][-1] == "False"
    assert cm == [["true \\ predicted", "a", "b", "c"], ["a", "1", "1", "0"], ["b", "0", "1", "0"],
                  ["c", "1", "0", "1"]]


def test_multi_label_files(tmp_path):
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.4]])
    true = np.array([[1, 0, 1], [0, 1, 1]])
    pred = (probs >= 0.5).astype(np.int64)
    ev = Evaluation("m", "test", CLASSES, ["x", "y"], true, pred, probs.max(axis=1),
                    dict(multi_label_metrics(true, pred, CLASSES)), multi_label=True, probabilities=probs)
    paths = ev.export(tmp_path)
    metrics, preds, cm, reliability, coverage = (_read(p) for p in paths[:5])
    assert paths[5].name == "m_test_reliability.png"
    assert sum(int(r[2]) for r in reliability[1:]) == probs.size  # one decision per image and class
    assert len(coverage) == 1 + len(probs)
    assert metrics[0][0] == "class" and {"accuracy", "macro avg"} <= {r[0] for r in metrics}
    assert preds[0] == ["image_id", "true", "predicted", "correct", "p:a", "p:b", "p:c"]
    assert preds[1][:4] == ["x", "a;c", "a;c", "True"] and preds[2][:4] == ["y", "b;c", "b", "False"]
    assert cm[0] == ["class", "true positive", "false positive", "false negative", "true negative"]
    assert cm[3] == ["c", "1", "0", "1", "0"]
