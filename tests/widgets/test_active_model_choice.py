"""A finished run never silently replaces a better active model."""
from __future__ import annotations

import json
import shutil

import pytest

from napari_cellclass._widgets.training_model import choose_active_model

from ._trained import trained_sample


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """The tiny trained model as 'good' (accuracy 0.917) and a copy as 'worse' (0.792)."""
    project, model = trained_sample(tmp_path_factory.mktemp("choice"))
    good, worse = model.parent / "good", model.parent / "worse"
    for folder, acc in ((good, 0.917), (worse, 0.792)):
        shutil.copytree(model, folder)
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["monitor"] = {"metric": "accuracy", "mode": "max"}
        cfg["best_metrics"] = {**cfg.get("best_metrics", {}), "accuracy": acc}
        cfg_path.write_text(json.dumps(cfg))
    return project, good, worse


def test_worse_run_keeps_the_active_model(two_models):
    _project, good, worse = two_models
    choice = choose_active_model(worse, good)
    assert choice.keep_active
    assert "0.792" in choice.reason and "0.917" in choice.reason and "good" in choice.reason
    assert not choose_active_model(good, worse).keep_active
    assert not choose_active_model(worse, None).keep_active  # nothing active yet


def test_models_validated_on_different_images_are_not_compared(two_models, tmp_path):
    """More labels mean a new validation set: its figures say nothing against the old ones."""
    _project, good, worse = two_models
    other = tmp_path / "other"
    shutil.copytree(worse, other)
    cfg = json.loads((other / "config.json").read_text())
    assert cfg["split"]["ids"]["val"]  # the folder records its validation images
    cfg["split"]["ids"]["val"] = cfg["split"]["ids"]["val"][:-1]
    (other / "config.json").write_text(json.dumps(cfg))
    assert not choose_active_model(other, good).keep_active


def test_training_dock_says_so_and_keeps_the_better_model(two_models, make_napari_viewer, notifications):
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass._widgets.training import TrainingWidget
    from napari_cellclass._widgets.training_model import TrainingSession
    from napari_cellclass.learn.events import Finished

    project, good, worse = two_models
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer, project)
    widget.session = TrainingSession(project)
    session_for(viewer).set_model(good)
    widget._on_finished(Finished(str(worse), 2, {"accuracy": 0.792}, False, True, 3, 1.0))
    assert session_for(viewer).model == good
    assert "not made active" in widget.status.value.lower()
    assert any("was not made active" in m for _, m in notifications)
    widget._on_finished(Finished(str(good), 2, {"accuracy": 0.917}, False, False, 3, 1.0))
    assert session_for(viewer).model == good
    session_for(viewer).set_model(worse)
    widget._on_finished(Finished(str(good), 2, {"accuracy": 0.917}, False, False, 3, 1.0))
    assert session_for(viewer).model == good  # a better run becomes active
    widget.close()
