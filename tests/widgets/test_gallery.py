"""The gallery dock with real clicks and keys: selection shared with the canvas, hotkeys, sort/filter, thumbnails."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest

from napari_cellclass.core.predictions import Prediction


@pytest.fixture
def gallery(open_widget, qtbot):
    """``gallery(n=12, channels=2, page_size=4)`` -> (viewer, labelling dock, gallery dock, project)."""
    from napari_cellclass._widgets.gallery import GalleryDock

    def make(n: int = 12, channels: int = 2, page_size: int = 4):
        viewer, w, project = open_widget(n=n, channels=channels, page_size=page_size)
        g = GalleryDock(viewer)
        viewer.window.add_dock_widget(g, name="Gallery", area="right")
        qtbot.waitUntil(lambda: g.view.isVisible(), timeout=5000)
        return viewer, w, g, project

    yield make


def click_item(g, row: int, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    """Scroll to a thumbnail (as a user would) and click it."""
    g.view.scrollTo(g.model.index(row))
    rect = g.view.visualRect(g.model.index(row))
    assert rect.isValid() and g.view.viewport().rect().contains(rect.center())
    QTest.mouseClick(g.view.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


def layer_ids(viewer) -> set[str]:
    return {lyr.metadata["cellclass"]["image_id"] for lyr in viewer.layers.selection}


def test_the_gallery_lists_the_whole_project_and_makes_thumbnails_in_the_canvas_colours(gallery, qtbot):
    viewer, w, g, project = gallery(n=12)
    assert g.model.ids == list(project.image_ids) and len(viewer.layers) == 4  # the canvas shows one page
    qtbot.waitUntil(lambda: g.model.pixmap(project.image_ids[0]) is not None, timeout=10000)
    img = g.model.pixmap(project.image_ids[0]).toImage()
    px = img.pixelColor(img.width() // 2, img.height() // 2)
    assert px.red() < px.green() or px.red() < px.blue()  # blue + green composite, not grey
    cached = list(project.root.joinpath("cellclass_cache", "thumbnails").rglob("*.png"))
    assert cached  # on disk inside the project
    assert "12 shown of 12" in g.counts.text()


def test_a_click_in_the_gallery_selects_the_image_layers_and_the_hotkeys_label_it(gallery, qtbot):
    viewer, w, g, project = gallery(n=12)
    ids = project.image_ids
    click_item(g, 1)
    assert g.selected_ids() == [ids[1]] and layer_ids(viewer) == {ids[1]}  # both channel layers
    QTest.keyClick(g.view, Qt.Key.Key_F1)
    assert project.labels(ids[1]) == ("alpha",)
    click_item(g, 9, Qt.KeyboardModifier.ControlModifier)  # not on the canvas page
    click_item(g, 10, Qt.KeyboardModifier.ControlModifier)
    assert g.selected_ids() == [ids[1], ids[9], ids[10]]
    QTest.keyClick(g.view, Qt.Key.Key_F4)  # next class
    QTest.keyClick(g.view, Qt.Key.Key_F1)
    assert [project.labels(i) for i in (ids[1], ids[9], ids[10])] == [("beta",)] * 3
    QTest.keyClick(g.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert [project.labels(i) for i in (ids[1], ids[9], ids[10])] == [("alpha",), (), ()]
    assert "1 labelled" in g.counts.text()  # counts follow live


def test_f2_in_the_gallery_follows_the_gallery_order_and_the_canvas_follows(gallery, qtbot):
    viewer, w, g, project = gallery(n=12)
    ids = project.image_ids
    project.assign([ids[0], ids[1], ids[2]], "alpha")
    g.image_filter.setCurrentText("unlabelled")
    assert g.model.ids == list(ids[3:])
    click_item(g, 0)
    for _ in range(3):
        QTest.keyClick(g.view, Qt.Key.Key_F2)
    assert [project.labels(i) for i in ids[3:6]] == [("alpha",)] * 3
    assert g.selected_ids() == [ids[6]] and g.model.ids == list(ids[3:])  # the list stays while labelling
    assert w.shows_image(ids[6]) and layer_ids(viewer) == {ids[6]}  # shown and selected on the canvas


def test_selecting_layers_selects_their_thumbnails(gallery, qtbot):
    viewer, w, g, project = gallery(n=12)
    ids = project.image_ids
    w.select_image(ids[2])
    assert g.selected_ids() == [ids[2]]
    from napari_cellclass._widgets.borders import is_highlighted

    assert is_highlighted(w._shown[ids[2]].layers[0]) and not is_highlighted(w._shown[ids[1]].layers[0])


def test_sort_and_filters_and_double_click_shows_the_image_on_the_canvas(gallery, qtbot):
    viewer, w, g, project = gallery(n=12)
    ids = project.image_ids
    project.assign(ids[5], "beta")
    project.assign(ids[7], "alpha")
    g.sort.setCurrentText("class")
    assert g.model.ids[:2] == [ids[7], ids[5]]
    g.image_filter.setCurrentText("beta")
    assert g.model.ids == [ids[5]]
    g.image_filter.setCurrentText("all images")
    g.sort.setCurrentText("name")
    g.name_filter.setText("IMG1")
    assert g.model.ids == [i for i in ids if "img1" in i]
    g.name_filter.setText("")
    preds = {i: Prediction(i, ("beta",), c) for i, c in zip(ids[:3], (0.9, 0.6, 0.99), strict=True)}
    g.shared.set_predictions(preds)
    g.sort.setCurrentText("confidence (lowest first)")
    assert g.model.ids[:3] == [ids[1], ids[0], ids[2]]
    g.image_filter.setCurrentText("predicted: beta")
    assert sorted(g.model.ids) == sorted(ids[:3])
    g.image_filter.setCurrentText("all images")
    g.sort.setCurrentText("name")
    g.view.scrollTo(g.model.index(10))
    rect = g.view.visualRect(g.model.index(10))
    QTest.mouseClick(g.view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    QTest.mouseDClick(g.view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    assert w.shows_image(ids[10]) and layer_ids(viewer) == {ids[10]}
    assert w.pager.page_ids == tuple(ids[8:12])


def test_a_click_on_the_canvas_selects_the_image_under_it(gallery, qtbot):
    viewer, w, g, project = gallery(n=4, channels=1)
    ids = project.image_ids
    qt_canvas = viewer.window._qt_viewer.canvas
    qtbot.waitUntil(lambda: len(qt_canvas.grid_views) >= 4, timeout=5000)
    grid = viewer.canvas.grid
    views = dict(zip((c for c, _ in grid.iter_viewboxes(viewer.layers)), qt_canvas.grid_views, strict=False))
    native = qt_canvas.native

    def click(target, modifier=Qt.KeyboardModifier.NoModifier):
        (index,) = [k for k, lyr in enumerate(viewer.layers) if lyr.metadata["cellclass"]["image_id"] == target]
        vb = views[grid.position(index, viewer.layers)]
        x, y = (np.asarray(vb.transform.translate[:2]) + np.asarray(vb.inner_rect.size) / 2).astype(int)
        ratio = native.devicePixelRatioF()
        QTest.mouseClick(native, Qt.MouseButton.LeftButton, modifier, QPoint(int(x / ratio), int(y / ratio)))

    click(ids[3])
    qtbot.waitUntil(lambda: layer_ids(viewer) == {ids[3]}, timeout=3000)
    assert g.selected_ids() == [ids[3]]
    click(ids[1], Qt.KeyboardModifier.ControlModifier)  # adds one
    qtbot.waitUntil(lambda: layer_ids(viewer) == {ids[1], ids[3]}, timeout=3000)
    assert g.selected_ids() == [ids[1], ids[3]]
    click(ids[3], Qt.KeyboardModifier.ControlModifier)  # and removes it again
    qtbot.waitUntil(lambda: layer_ids(viewer) == {ids[1]}, timeout=3000)


def test_long_names_are_never_cut_in_the_middle(qapp):
    from qtpy.QtGui import QFont, QFontMetrics

    from napari_cellclass._widgets.gallery import name_lines

    metrics = QFontMetrics(QFont())
    name = "plate_0001/well_B07/very_long_experiment_name_field_0042.tif"
    text = name_lines(name, metrics, 80)
    lines = text.split("\n")
    assert len(lines) <= 2 and all(metrics.horizontalAdvance(x) <= 80 for x in lines)
    assert text.replace("\n", "").endswith("field_0042.tif")  # the end that tells images apart stays
    assert lines[0].startswith("…")  # only the start is left out
    assert name_lines("a.tif", metrics, 80) == "a.tif"
    width = metrics.horizontalAdvance("u2os_0001.tif") + 2
    assert name_lines("images/u2os_0001.tif", metrics, width) == "images/\nu2os_0001.tif"  # broken at the folder


def test_f2_keeps_the_gallery_order_across_canvas_pages(gallery, qtbot):
    viewer, w, g, project = gallery(n=8, page_size=2)
    ids = project.image_ids
    order = [ids[k] for k in (7, 2, 5, 0, 6, 1, 3, 4)]
    g.shared.set_predictions({iid: Prediction(iid, ("beta",), 0.99 - 0.1 * k) for k, iid in enumerate(order)})
    g.sort.setCurrentText("confidence (highest first)")
    assert g.model.ids == order
    click_item(g, 0)
    for _ in range(5):  # crosses three canvas pages
        QTest.keyClick(g.view, Qt.Key.Key_F2)
    assert [project.labels(i) for i in order[:5]] == [("alpha",)] * 5
    assert [project.labels(i) for i in order[5:]] == [(), (), ()]
    assert g.selected_ids() == [order[5]] and layer_ids(viewer) == {order[5]}


def test_an_unreadable_image_gets_a_thumbnail_saying_so(gallery, qtbot):
    viewer, w, g, project = gallery(n=3, channels=1)
    qtbot.waitUntil(lambda: all(g.model.pixmap(i) is not None for i in project.image_ids), timeout=10000)
    bad = project.root / project.image_ids[1]
    bad.write_bytes(b"not an image any more")
    g.model.clear_thumbnails()
    g.view.viewport().update()
    qtbot.waitUntil(lambda: g.model.unreadable(project.image_ids[1]), timeout=10000)
    assert not g.model.unreadable(project.image_ids[0])


def test_a_layer_of_your_own_selected_after_the_gallery_is_what_f1_labels(gallery, qtbot):
    viewer, w, g, project = gallery(n=4, channels=1)
    click_item(g, 1)
    g.select([])  # nothing selected in the gallery any more
    plain = viewer.add_image(np.zeros((8, 8), np.uint8), name="from a script")
    viewer.layers.selection.active = plain
    QTest.keyClick(g.view, Qt.Key.Key_F1)
    assert plain.metadata["cellclass"]["labels"] == ["alpha"]
    assert all(project.labels(i) == () for i in project.image_ids)


def test_thumbnails_finished_for_the_previous_project_are_not_shown_for_the_next(qapp, tmp_path):
    from napari_cellclass._widgets.gallery import ThumbnailLoader

    loader = ThumbnailLoader(threads=1)
    try:
        loader._done.append(("img00.tif", np.zeros((4, 4, 3), np.uint8)))  # finished just before the switch
        loader.set_store(None)  # another project (the same image names can recur there)
        assert loader.take() == []
    finally:
        loader.close()


def test_opening_the_folder_again_lists_images_added_meanwhile(gallery, qtbot):
    import tifffile

    viewer, w, g, project = gallery(n=3, channels=1)
    tifffile.imwrite(project.root / "img99.tif", np.full((24, 24), 500, np.uint16))
    w.open_project(project.root)  # the same folder again: listed anew
    assert "img99.tif" in g.model.ids and "4 shown of 4" in g.counts.text()
