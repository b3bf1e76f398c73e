"""Labels of layers a script made from arrays are not silently lost: the user is offered to save them."""
from __future__ import annotations

import numpy as np

from napari_cellclass._widgets.borders import border_colors
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path

from .conftest import press

RED_RGBA = (1.0, 0.0, 0.0, 1.0)
BLUE_RGBA = (0.0, 0.0, 1.0, 1.0)


def _offers(monkeypatch):
    from napari.utils.notifications import notification_manager

    seen = []
    real = notification_manager.dispatch

    def record(notification):
        seen.append(notification)
        return real(notification)

    monkeypatch.setattr(notification_manager, "dispatch", record)
    return seen


def test_labelling_an_array_layer_offers_to_save_it(open_widget, monkeypatch):
    offers = _offers(monkeypatch)
    viewer, w, project = open_widget(n=2)
    cells = viewer.add_image(np.arange(64, dtype=np.uint16).reshape(8, 8), name="crop 7")
    viewer.layers.selection.active = cells
    press(viewer, "F1")
    assert cells.metadata["cellclass"]["labels"] == ["alpha"]
    warned = [n for n in offers if "lost when napari closes" in str(n.message)]
    assert len(warned) == 1 and "'crop 7'" in str(warned[0].message)
    press(viewer, "F1")  # told once per layer
    assert len([n for n in offers if "lost when napari closes" in str(n.message)]) == 1

    name, action = warned[0].actions[0]
    assert name == "Save into project"
    action()
    iid = "added_images/crop_7.tif"
    assert iid in project
    assert np.array_equal(project.read_image(iid).pixels[0], cells.data)
    assert read_sidecar(sidecar_path(project.root / iid))["classes"] == ("alpha",)
    assert border_colors(cells) == [RED_RGBA]

    press(viewer, "F4")
    viewer.layers.selection.active = cells
    press(viewer, "F1")  # the layer now labels its project image
    assert project.labels(iid) == ("beta",) and border_colors(cells) == [BLUE_RGBA]
    press(viewer, "Z", ctrl=True)
    assert project.labels(iid) == ("alpha",) and border_colors(cells) == [RED_RGBA]


def test_saving_never_overwrites_a_file(open_widget):
    viewer, w, project = open_widget(n=1)
    (project.root / "added_images").mkdir()
    (project.root / "added_images" / "same.tif").write_bytes(b"somebody's file")
    layer = viewer.add_image(np.ones((6, 6), np.uint8), name="same")
    viewer.layers.selection.active = layer
    press(viewer, "F1")
    ids = w.save_scripted_layers()
    assert ids == ["added_images/same-1.tif"]
    assert (project.root / "added_images" / "same.tif").read_bytes() == b"somebody's file"
    assert project.read_image(ids[0]).pixels.max() == 1
    assert w.save_scripted_layers() == []  # nothing left unsaved
