"""Accepting predictions labels only unlabelled images; human labels are never replaced."""
from __future__ import annotations

from napari_cellclass._widgets.training_model import accept_predictions
from napari_cellclass.core.predictions import Prediction
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path

from .conftest import write_project


def test_accept_keeps_human_labels_and_records_source(tmp_path):
    project = write_project(tmp_path / "p", n=3)
    human, free = project.image_ids[0], project.image_ids[1]
    project.assign(human, "alpha")
    before = sidecar_path(project.root / human).read_bytes()
    preds = {i: Prediction(i, ("beta",), 0.99, {"alpha": 0.01, "beta": 0.99}, "m") for i in (human, free)}
    changed = accept_predictions(project, preds, [human, free])
    assert changed == [free]
    assert project.labels(human) == ("alpha",)
    assert sidecar_path(project.root / human).read_bytes() == before
    assert read_sidecar(sidecar_path(project.root / free))["source"] == "prediction"
    assert project.undo() == [free] and project.labels(free) == ()
