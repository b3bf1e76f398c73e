"""The labelling hotkeys work whatever has focus in the viewer and never start a layer rename."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QAbstractItemView, QApplication

from napari_cellclass._widgets.napari_private import layer_list_view


def _focus(widget) -> None:
    window = widget.window()
    window.activateWindow()
    window.raise_()
    widget.setFocus()
    QApplication.processEvents()


def _layer_list(viewer):
    return layer_list_view(viewer)


def test_f2_on_the_layer_list_labels_and_never_renames(open_widget):
    viewer, w, project = open_widget(n=4)
    ids = project.image_ids
    extra = viewer.add_image(np.zeros((8, 8)), name="extra")
    layer_list = _layer_list(viewer)
    viewer.layers.selection.active = extra
    _focus(layer_list)
    QTest.keyClick(layer_list, Qt.Key.Key_F2)
    QApplication.processEvents()
    assert layer_list.state() != QAbstractItemView.State.EditingState
    QTest.keyClick(layer_list, Qt.Key.Key_X)
    assert extra.name == "extra"

    viewer.layers.selection.active = w._shown[ids[0]].layers[0]
    _focus(layer_list)
    QTest.keyClick(layer_list, Qt.Key.Key_F1)
    assert project.labels(ids[0]) == ("alpha",)
    QTest.keyClick(layer_list, Qt.Key.Key_F2)  # label again and move on
    assert w.selected()[0] == [ids[1]]
    assert layer_list.state() != QAbstractItemView.State.EditingState
    QTest.keyClick(layer_list, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClick(layer_list, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert project.labels(ids[0]) == ()


def test_text_fields_keep_ctrl_z_but_f_keys_still_label(open_widget):
    viewer, w, project = open_widget(n=3)
    ids = project.image_ids
    w.select_image(ids[0])
    w.label_selected()
    field = w.class_name.native
    _focus(field)
    QTest.keyClicks(field, "mito")
    QTest.keyClick(field, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert project.labels(ids[0]) == ("alpha",)  # Ctrl+Z undid typing, not the label
    w.select_image(ids[1])
    _focus(field)
    QTest.keyClick(field, Qt.Key.Key_F1)
    assert project.labels(ids[1]) == ("alpha",)


def test_keys_are_released_when_the_dock_closes(open_widget):
    viewer, w, project = open_widget(n=2)
    ids = project.image_ids
    w.unbind_hotkeys()
    layer_list = _layer_list(viewer)
    viewer.layers.selection.active = w._shown[ids[0]].layers[0]
    _focus(layer_list)
    QTest.keyClick(layer_list, Qt.Key.Key_F1)
    assert project.labels(ids[0]) == ()
