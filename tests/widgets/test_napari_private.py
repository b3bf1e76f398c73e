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


def test_the_page_turn_shortcuts_do_what_napari_would(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((4, 6), np.float32))
    extent = layer.extent.world.copy()
    assert private.swap_data(layer, np.ones((4, 6), np.float32)) is True  # same shape: the short path
    assert np.array_equal(layer.data, np.ones((4, 6))) and np.array_equal(layer.extent.world, extent)
    assert float(layer._slice.image.view.max()) == 1.0  # the slice shown is the new data
    assert private.swap_data(layer, np.ones((5, 6), np.float32)) is False  # another shape: napari's path
    assert layer.data.shape == (5, 6)
    with private.one_dims_update(viewer, [layer]):
        layer.data = np.zeros((9, 6), np.float32)
    assert viewer.dims.range[0].stop >= 8  # updated once at the end
    layer.data = np.zeros((20, 6), np.float32)
    assert viewer.dims.range[0].stop >= 19  # and the viewer follows the layer again afterwards
    with private.no_select_on_insert(viewer):
        other = viewer.add_image(np.zeros((4, 4)))
    assert other not in viewer.layers.selection
    assert viewer.add_image(np.zeros((4, 4))) in viewer.layers.selection  # napari's behaviour is back
