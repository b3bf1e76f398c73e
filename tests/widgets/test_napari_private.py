"""The private napari API we use still exists in the napari installed (fails loudly on an upgrade)."""
from __future__ import annotations

import napari
import numpy as np

from napari_cellclass._widgets import napari_private as private


def test_checked_against_this_napari():
    minor = ".".join(napari.__version__.split(".")[:2])
    assert minor in private.CHECKED_NAPARI, (
        f"napari {napari.__version__}: check napari_private's accessors, then add {minor} to CHECKED_NAPARI")


def test_every_accessor_reaches_what_it_names(make_napari_viewer):
    from qtpy.QtWidgets import QAbstractItemView, QMainWindow, QWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((4, 4)))
    assert private.real_viewer(viewer) is viewer
    assert "bounding_box" in private.layer_overlays(layer)
    assert isinstance(private.main_window(viewer), QMainWindow)
    assert isinstance(private.canvas_widget(viewer), QWidget)
    assert isinstance(private.layer_list_view(viewer), QAbstractItemView)
