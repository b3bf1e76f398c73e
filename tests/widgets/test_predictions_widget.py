"""The predictions dock in a real viewer (Xvfb): predictions on layers and borders, accepting them."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from napari_cellclass._widgets.training_model import import_learning_libraries  # noqa: E402

import_learning_libraries()  # before any OpenGL context (see the function)

from napari_cellclass._widgets.borders import border_colors  # noqa: E402
from napari_cellclass._widgets.labelling import LabellingWidget  # noqa: E402
from napari_cellclass._widgets.labelling_model import (  # noqa: E402
    FILTER_UNCERTAIN,
    PREDICTION_OPACITY,
    UNCERTAIN_COLOR,
)
from napari_cellclass._widgets.predict_panel import PredictionsWidget  # noqa: E402
from napari_cellclass._widgets.session import session_for  # noqa: E402
from napari_cellclass._widgets.viewer_link import image_layers  # noqa: E402
from napari_cellclass.core.predictions import read_predictions  # noqa: E402
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path  # noqa: E402

from ._trained import trained_sample  # noqa: E402
from .conftest import press  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_sample(tmp_path_factory.mktemp("predict"))


def _docks(make_napari_viewer, project, model):
    """A shown viewer with the labelling (24 a page) and predictions docks, ``model`` active."""
    viewer = make_napari_viewer(show=True)
    labelling = LabellingWidget(viewer, project)
    labelling.page_size.value = 24
    viewer.window.add_dock_widget(labelling, name="Labelling")
    panel = PredictionsWidget(viewer, confirm=lambda q: True)
    viewer.window.add_dock_widget(panel, name="Predictions")
    session_for(viewer).set_model(model)
    return viewer, labelling, panel


def test_predict_accept_and_filter(qtbot, make_napari_viewer, trained):
    project, model = trained
    viewer, labelling, panel = _docks(make_napari_viewer, project, model)
    panel.uncertain.slider.value = 0.0  # every prediction in its class colour (test_uncertain_* covers the rest)
    unlabelled = project.unlabelled_ids()
    labelled_before = {i: project.labels(i) for i in project.labelled_ids()}

    panel.predict("unlabelled")
    qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
    assert set(panel.predictions) == set(unlabelled)
    assert set(read_predictions(project.root)) == set(unlabelled)
    assert {i: project.labels(i) for i in project.labelled_ids()} == labelled_before  # labels untouched

    layers = image_layers(viewer, project)
    iid = unlabelled[0]
    meta = layers[iid][0].metadata["cellclass"]
    assert meta["prediction"] in project.class_names
    assert set(meta["probabilities"]) == set(project.class_names)
    assert meta["model"] == model.name and 0.5 <= meta["confidence"] <= 1.0
    colors = border_colors(layers[iid][0])
    assert len(colors) == 1 and colors[0][3] == pytest.approx(PREDICTION_OPACITY)
    labelled_id = next(iter(labelled_before))
    assert border_colors(layers[labelled_id][0])[0][3] == 1.0  # a human label keeps its border

    # F5 accepts the prediction of the selected image: sidecar written, border becomes a label
    viewer.layers.selection.active = layers[iid][0]
    press(viewer, "F5")
    assert project.labels(iid) == (meta["prediction"],)
    assert read_sidecar(sidecar_path(project.root / iid))["classes"] == (meta["prediction"],)
    assert border_colors(layers[iid][0])[0][3] == 1.0

    # filter and sort by class and confidence
    cls = meta["prediction"]
    panel.class_filter.value = cls
    listed = panel.listed()
    assert listed and all(cls in p.classes for p in listed)
    assert [p.confidence for p in listed] == sorted(p.confidence for p in listed)
    panel.class_filter.value = "all classes"
    panel.order.value = "confidence (high first)"
    confs = [p.confidence for p in panel.listed()]
    assert confs == sorted(confs, reverse=True)

    # accept all unlabelled above a confidence
    threshold = sorted(confs)[len(confs) // 2]
    expected = {p.image_id for p in panel.predictions.values()
                if p.confidence >= threshold and not project.labels(p.image_id)}
    changed = panel.accept_above(threshold)
    assert set(changed) == expected
    for i in expected:
        assert sidecar_path(project.root / i).exists()

    # a page turn keeps the predictions on the layers
    panel.close()


def test_uncertain_predictions_are_grey_and_a_filter(qtbot, make_napari_viewer, trained):
    project, model = trained
    viewer, labelling, panel = _docks(make_napari_viewer, project, model)
    session = session_for(viewer)
    reach = json.loads((model / "config.json").read_text())["calibration"]["at_target"]
    expected = round(reach["threshold"], 2) if reach else 0.0
    assert panel.uncertain.slider.value == pytest.approx(expected)  # the model's calibrated threshold
    panel.predict("unlabelled")
    qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
    preds = panel.predictions
    unlabelled = [i for i in project.unlabelled_ids() if i in preds]
    cut = sorted(preds[i].confidence for i in unlabelled)[len(unlabelled) // 2]  # about half below it

    panel.uncertain.slider.value = round(cut + 0.005, 2)
    below = [i for i in unlabelled if preds[i].confidence < panel.uncertain.slider.value]
    assert below and len(below) < len(unlabelled)
    assert set(session.uncertain) == set(below)  # least sure first
    assert [preds[i].confidence for i in session.uncertain] == sorted(preds[i].confidence for i in below)
    layers = image_layers(viewer, project)
    grey = tuple(int(UNCERTAIN_COLOR[k:k + 2], 16) / 255 for k in (1, 3, 5))
    for iid in unlabelled:
        (r, g, b, _a), = border_colors(layers[iid][0])
        assert ((r, g, b) == pytest.approx(grey, abs=0.01)) == (iid in below), iid
    assert FILTER_UNCERTAIN in labelling.controls.image_filter.choices
    labelling.show_filter(FILTER_UNCERTAIN)
    assert list(labelling.pager.page_ids) == list(session.uncertain)[:24]

    panel.uncertain.slider.value = 0.0  # none uncertain: class colours again, the filter goes
    assert session.uncertain == ()
    iid = below[0]
    (r, g, b, _a), = border_colors(layers[iid][0])
    assert (r, g, b) != pytest.approx(grey, abs=0.01)

