"""The Explain part of the predictions dock in a real viewer (Xvfb): a saliency layer beside its image."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("captum")

from napari_cellclass._widgets.training_model import import_learning_libraries  # noqa: E402

import_learning_libraries()  # before any OpenGL context (see the function)
import captum.attr  # noqa: E402, F401  (in the main thread, before a worker uses it)

from napari_cellclass._widgets.labelling import LabellingWidget  # noqa: E402
from napari_cellclass._widgets.layers import SALIENCY_KEY  # noqa: E402
from napari_cellclass._widgets.predict_panel import PredictionsWidget  # noqa: E402
from napari_cellclass._widgets.scripted import is_scripted  # noqa: E402
from napari_cellclass._widgets.session import session_for  # noqa: E402
from napari_cellclass._widgets.viewer_link import image_layers  # noqa: E402

from ._trained import trained_sample  # noqa: E402


def test_explain_adds_a_saliency_layer_beside_the_image_until_the_page_turns(qtbot, make_napari_viewer,
                                                                             tmp_path):
    project, model = trained_sample(tmp_path)
    viewer = make_napari_viewer(show=True)
    labelling = LabellingWidget(viewer, project)
    labelling.page_size.value = 4
    viewer.window.add_dock_widget(labelling, name="Labelling")
    panel = PredictionsWidget(viewer, confirm=lambda q: True)
    viewer.window.add_dock_widget(panel, name="Predictions")
    session_for(viewer).set_model(model)
    part = panel.explain_part
    assert part.class_choice.choices == ("predicted class", *project.class_names)

    page = image_layers(viewer, project)
    iid = list(page)[1]
    image = page[iid][0]
    viewer.layers.selection.active = image
    part.button.native.click()
    qtbot.waitUntil(lambda: not part.job.running and bool(part.maps.layers), timeout=60_000)

    (layer,) = part.maps.layers
    meta = layer.metadata[SALIENCY_KEY]
    assert meta["image_id"] == iid and meta["class"] == meta["predicted"] in project.class_names
    stem = iid.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert layer.name == f"saliency gradcam: {stem} → {meta['class']}"
    assert layer.blending == "additive" and layer.opacity == pytest.approx(0.5)
    assert np.allclose(layer.translate, image.translate) and np.allclose(layer.scale, image.scale)
    shape = image.data.shape[:2] if image.rgb else image.data.shape
    assert layer.data.shape == shape and layer.data.dtype == np.float32
    assert list(viewer.layers).index(layer) == list(viewer.layers).index(image) + 1  # the next grid cell
    assert iid in part.status.value
    assert not is_scripted(layer)  # a map is no image to label: F1 on it labels nothing

    # a chosen class and the second method: another layer for the same image
    other = next(c for c in project.class_names if c != meta["class"])
    part.class_choice.value = other
    part.method.value = "integrated-gradients"
    part.explain()
    qtbot.waitUntil(lambda: not part.job.running and len(part.maps.layers) == 2, timeout=60_000)
    assert part.maps.layers[1].name == f"saliency integrated-gradients: {stem} → {other}"

    labelling.next_page()  # the image's layer now shows another image: its maps go
    qtbot.waitUntil(lambda: not part.maps.layers, timeout=10_000)
    assert not [lyr for lyr in viewer.layers if SALIENCY_KEY in lyr.metadata]
    panel.close()
