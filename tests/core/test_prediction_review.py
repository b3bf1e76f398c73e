"""Reviewing predictions without Qt: accepting never replaces a human label, NaN never passes."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cellclass.core.prediction_review import (
    accept_predictions,
    acceptable,
    filter_predictions,
    predict_ids,
)
from napari_cellclass.core.predictions import Prediction
from napari_cellclass.core.project import Project
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path


@pytest.fixture
def project(tmp_path):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"img{i}.tif", np.zeros((8, 8), np.uint16))
    p = Project.open(tmp_path, fsync=False)
    p.add_class("alpha")
    p.add_class("beta")
    return p


def test_accept_keeps_human_labels_and_records_source(project):
    human, free = project.image_ids[0], project.image_ids[1]
    project.assign(human, "alpha")
    before = sidecar_path(project.root / human).read_bytes()
    preds = {i: Prediction(i, ("beta",), 0.99, {"alpha": 0.01, "beta": 0.99}, "m") for i in (human, free)}
    assert accept_predictions(project, preds, [human, free]) == [free]
    assert project.labels(human) == ("alpha",)
    assert sidecar_path(project.root / human).read_bytes() == before
    assert read_sidecar(sidecar_path(project.root / free))["source"] == "prediction"
    assert project.undo() == [free] and project.labels(free) == ()


def test_nan_confidence_is_never_accepted(project):
    preds = {i: Prediction(i, ("beta",), float("nan"), {"alpha": float("nan"), "beta": float("nan")}, "m")
             for i in project.image_ids}
    assert acceptable(project, preds, 0.99) == []
    assert acceptable(project, preds, 0.0) == []
    assert filter_predictions(preds, min_confidence=0.5) == []


def test_scopes(project):
    project.assign(project.image_ids[0], "alpha")
    assert predict_ids(project, "unlabelled") == list(project.image_ids[1:])
    assert predict_ids(project, "current page", ["img2.tif", "nope.tif"]) == ["img2.tif"]
    assert predict_ids(project, "whole project") == list(project.image_ids)


def test_a_protected_image_does_not_block_accepting_the_others(project):
    import numpy as np

    bad = project.root / "cellclass_labels" / "img2.npz"
    bad.parent.mkdir(exist_ok=True)
    np.savez(bad, format_version=np.array(1, np.int32), classes=np.array(["a/b"]), image=np.array("img2.tif"),
             timestamp=np.array(""), source=np.array("human"))
    reopened = Project.open(project.root, fsync=False)
    preds = {i: Prediction(i, ("beta",), 0.95, {"alpha": 0.05, "beta": 0.95}, "m") for i in reopened.image_ids}
    ids = acceptable(reopened, preds, 0.5)
    assert "img2.tif" not in ids and len(ids) == 2
    assert sorted(accept_predictions(reopened, preds, ids)) == sorted(ids)
    assert bad.exists()  # the untrusted label file is kept as it is
