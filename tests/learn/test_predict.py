"""Prediction and evaluation: project file, never the labels; arrays, files, CSV; evaluate splits."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_cellclass.core.errors import ChannelMismatchError
from napari_cellclass.core.predictions import read_predictions, read_predictions_csv
from napari_cellclass.learn import evaluate, load_model, predict, train


@pytest.fixture(scope="module")
def trained(tiny_sample, tmp_path_factory):
    from napari_cellclass.learn.config import TrainConfig

    from .conftest import FAST

    out = tmp_path_factory.mktemp("pm") / "m"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 1}), out)
    return load_model(out)


def _sidecars(project):
    return {p.relative_to(project.root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in project.root.rglob("cellclass_labels/*.npz")}


def test_predictions_go_to_the_project_file_never_to_the_labels(trained, tiny_sample, tmp_path):
    before = _sidecars(tiny_sample)
    labels_before = {i: tiny_sample.labels(i) for i in tiny_sample.image_ids}
    res = predict(trained, tiny_sample, all_images=True, tta=True, csv=tmp_path / "out.csv")
    assert res.ids == list(tiny_sample.image_ids)
    assert res.probabilities.shape == (len(res), 2)
    np.testing.assert_allclose(res.probabilities.sum(axis=1), 1, atol=1e-5)
    assert _sidecars(tiny_sample) == before
    from napari_cellclass.core.project import Project

    reopened = Project.open(tiny_sample.root)
    assert {i: reopened.labels(i) for i in reopened.image_ids} == labels_before
    stored = read_predictions(tiny_sample.root)
    assert set(stored) == set(res.ids)
    one = stored[res.ids[0]]
    assert one.classes == (res.top_class[0],) and one.model == trained.name
    assert one.probabilities[res.top_class[0]] == pytest.approx(one.confidence, abs=1e-5)
    assert read_predictions_csv(tmp_path / "out.csv").keys() == stored.keys()


def test_unlabelled_by_default_and_merging(trained, tiny_sample):
    res = predict(trained, tiny_sample)
    assert res.ids == tiny_sample.unlabelled_ids()
    assert set(res.ids) <= set(read_predictions(tiny_sample.root))


def test_arrays_and_files(trained, tiny_sample):
    img = tiny_sample.read_image(tiny_sample.image_ids[0]).pixels
    by_array = predict(trained, img)
    by_file = predict(trained, tiny_sample.path(tiny_sample.image_ids[0]))
    np.testing.assert_allclose(by_array.probabilities, by_file.probabilities, atol=1e-4)
    stack = predict(trained, np.stack([img, img]))
    assert len(stack) == 2 and stack.ids == ["array:0", "array:1"]
    with pytest.raises(ChannelMismatchError, match="has 3 channel"):
        predict(trained, np.zeros((3, 40, 40), np.uint8))


def test_evaluate_uses_the_saved_split(trained, tiny_sample):
    res = evaluate(trained, tiny_sample)
    assert res["split"] == "val" and res["n"] == len(trained.split["val"])
    m = res["metrics"]
    assert {"loss", "accuracy", "balanced_accuracy", "f1_macro", "per_class", "confusion_matrix"} <= set(m)
    everything = evaluate(trained, tiny_sample, split="all")
    assert everything["n"] == len(tiny_sample.labelled_ids())
    assert sum(map(sum, everything["metrics"]["confusion_matrix"])) == everything["n"]


def test_predictions_module_is_torch_free():
    import subprocess
    import sys

    code = ("import sys, napari_cellclass.core.predictions as p; "
            "assert 'torch' not in sys.modules and "
            "not any(m.startswith(('qtpy', 'PyQt', 'napari.')) for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
