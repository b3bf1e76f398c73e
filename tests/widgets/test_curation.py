"""Suggest N and Check labels in the labelling dock: marks on the canvas and in the gallery, F2 walks them."""
from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_cellclass._widgets.borders import MISTAKE_KEY, SUGGESTED_KEY, has_mark

pytestmark = pytest.mark.slow


def _docked(viewer, w, qtbot):
    from napari_cellclass._widgets.gallery import GalleryDock

    g = GalleryDock(viewer)
    viewer.window.add_dock_widget(g, name="Gallery", area="right")
    qtbot.waitUntil(lambda: g.view.isVisible(), timeout=5000)
    return g


def _marked(w, key):
    return {iid for iid, shown in w.page.shown.items() if shown.layers and has_mark(shown.layers[0], key)}


def test_suggest_marks_the_images_lists_them_in_order_and_f2_walks_them(open_widget, qtbot):
    viewer, w, project = open_widget(n=12, page_size=4)
    g = _docked(viewer, w, qtbot)
    panel = w.curation
    panel.n.value = 5
    assert panel.suggest_button.text == "Suggest 5"
    panel.suggest_button.native.click()
    qtbot.waitUntil(lambda: len(w.shared.suggested) == 5 and not panel.job.running, timeout=60000)
    order = list(w.shared.suggested)
    assert set(order) <= set(project.unlabelled_ids()) and "typical" in panel.status.value
    assert g.image_filter.currentText() == "suggested" and g.model.ids == order  # suggestion order
    assert g.badge(order[0]) == "★ 1" and g.badge(order[4]) == "★ 5"
    assert w.image_filter.value == "suggested" and list(w.page.shown) == order[:4]  # "Show: suggested", page 1
    assert g.selected_ids() == [order[0]] and w.selected()[0] == [order[0]]
    assert _marked(w, SUGGESTED_KEY) == set(order[:4])  # gold corners on the canvas
    for k in range(4):  # F2 walks them in suggestion order, onto the next page
        QTest.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_F2)
        assert project.labels(order[k]) == ("alpha",)
    assert list(w.page.shown) == [order[4]] and w.selected()[0] == [order[4]]
    assert g.selected_ids() == [order[4]]


def test_check_labels_lists_likely_mistakes_with_the_suggested_class(open_widget, qtbot, tmp_path):
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn.label_check import check_labels

    project = make_sample_project(tmp_path / "s", n=40, seed=4, labelled_fraction=1.0)
    ids = project.labelled_ids()
    for i in (ids[2], ids[11]):
        project.set_labels(i, [c for c in project.class_names if c != project.label(i)])
    viewer, w, _ = open_widget(n=2, page_size=4)
    w.open_project(project.root)
    g = _docked(viewer, w, qtbot)
    w.curation.check_button.native.click()
    qtbot.waitUntil(lambda: bool(w.shared.mistakes) and not w.curation.job.running, timeout=120000)
    expected = check_labels(w.project, device="cpu")
    assert list(w.shared.mistakes) == [i.image_id for i in expected.issues]
    first = expected.issues[0]
    assert g.image_filter.currentText() == "likely mistakes" and g.model.ids == list(w.shared.mistakes)
    assert g.badge(first.image_id) == f"→ {first.suggested}"
    assert first.image_id in _marked(w, MISTAKE_KEY) and g.selected_ids() == [first.image_id]
    assert w.image_filter.value == "likely mistakes" and w.selected()[0] == [first.image_id]
    assert "likely mistake" in w.curation.status.value
