"""Regression tests: the page stays one image per grid cell, and reopening a project is instant."""
from __future__ import annotations

from napari_cellclass._widgets.borders import border_colors
from napari_cellclass._widgets.labelling import LabellingWidget
from napari_cellclass._widgets.labelling_model import FILTER_ALL, FILTER_UNLABELLED

from .conftest import write_project

RED_RGBA = (1.0, 0.0, 0.0, 1.0)


def cells(viewer) -> list[set[str]]:
    """The image ids shown in each grid cell, in grid order."""
    grid = viewer.canvas.grid
    layers = list(viewer.layers)
    out = []
    for _pos, indices in grid.iter_viewboxes(layers):
        if indices:
            out.append({layers[i].metadata.get("cellclass", {}).get("image_id", layers[i].name)
                        for i in indices})
    return out


def test_unlabelled_filter_keeps_one_image_per_cell(open_widget, notifications):
    viewer, w, project = open_widget(n=10, channels=2, page_size=4, display="composite")
    ids = project.image_ids
    labelled = [ids[1], ids[2], ids[5]]
    project.assign(labelled, "alpha")
    w.image_filter.value = FILTER_UNLABELLED
    assert [m for sev, m in notifications if sev == "error"] == []
    expect = [i for i in ids if i not in labelled][:4]
    assert w.pager.page_ids == tuple(expect)
    assert [lyr.metadata["cellclass"]["image_id"] for lyr in viewer.layers] == [i for i in expect for _ in (0, 1)]
    assert cells(viewer) == [{i} for i in expect]
    for i in expect:
        assert border_colors(w._shown[i].layers[0]) == []
    assert w.page_label.value.startswith("page 1 / 2 (7 images)")
    w.image_filter.value = FILTER_ALL
    assert cells(viewer) == [{i} for i in ids[:4]]
    assert border_colors(w._shown[ids[1]].layers[0]) == [RED_RGBA]
    assert w.page_label.value.startswith("page 1 / 3 (10 images)")


def test_failed_redraw_is_drawn_afresh(open_widget, monkeypatch, notifications):
    viewer, w, project = open_widget(n=6, channels=2, page_size=3, display="composite")
    from napari_cellclass._widgets import page_view

    calls = {"n": 0}
    real = page_view.recycle

    def broken_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated failure while recycling")
        return real(*args, **kwargs)

    monkeypatch.setattr(page_view, "recycle", broken_once)
    w.next_page()
    ids = project.image_ids
    assert w.pager.page_ids == ids[3:6]
    assert cells(viewer) == [{i} for i in ids[3:6]]
    assert len(viewer.layers) == 6
    assert w.page_label.value.startswith("page 2 / 2")


def test_unexpected_errors_are_one_line_notifications(open_widget, monkeypatch, notifications):
    viewer, w, project = open_widget(n=3)
    def broken(*_args, **_kwargs):
        raise KeyError("boom")

    from napari_cellclass._widgets.page_view import PageView

    monkeypatch.setattr(PageView, "_draw_page", broken)
    w.image_filter.value = FILTER_UNLABELLED  # must not raise into Qt
    errors = [m for sev, m in notifications if sev == "error"]
    assert errors and "boom" in errors[-1] and "\n" not in errors[-1]


def test_opening_the_open_project_again_keeps_the_page(open_widget, qtbot):
    viewer, w, project = open_widget(n=20, channels=2, page_size=4, display="composite")
    w.next_page()
    w.label_selected()
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value))
    before = list(viewer.layers)
    viewer.open(str(project.root), plugin="napari-cellclass")
    assert inserted == [] and list(viewer.layers) == before
    assert w.pager.page_ids == project.image_ids[4:8]
    assert w.session.can_undo  # the same project object: the undo history is kept
    docked = [wd for wd in (d.inner_widget() for d in viewer.window._wrapped_dock_widgets.values())
              if isinstance(wd, LabellingWidget)]
    assert docked == [w]


def test_opening_another_project_switches_without_inserting_into_the_grid(open_widget, tmp_path):
    viewer, w, project = open_widget(n=8, channels=2, page_size=4, display="composite")
    other = write_project(tmp_path / "other", n=5, channels=2)
    before = list(viewer.layers)
    changes = []
    viewer.layers.events.inserted.connect(lambda e: changes.append("inserted"))
    viewer.layers.events.removed.connect(lambda e: changes.append("removed"))
    viewer.open(str(other.root), plugin="napari-cellclass")
    assert w.project.root == other.root
    assert cells(viewer) == [{i} for i in other.image_ids[:4]]
    assert changes == [] and set(viewer.layers) == set(before)  # the layers were recycled
    assert {lyr.metadata["cellclass"]["project"] for lyr in viewer.layers} == {str(other.root)}


def test_extra_layer_gets_its_own_cell_and_the_grid_is_refitted(open_widget, qtbot):
    import numpy as np

    viewer, w, project = open_widget(n=12, channels=2, page_size=4, display="composite")
    ids = project.image_ids
    qtbot.wait(20)
    zoom = viewer.scene.camera.zoom
    extra = viewer.add_image(np.ones((24, 24), np.float32), name="extra", colormap="red",
                             contrast_limits=(0, 1))
    qtbot.wait(20)
    assert viewer.scene.camera.zoom != zoom  # 5 cells instead of 4: the view fits the new grid
    w.next_page()
    qtbot.wait(20)
    assert cells(viewer) == [{i} for i in ids[4:8]] + [{"extra"}]
    shot = viewer.screenshot(canvas_only=True, flash=False)
    red = (shot[..., 0] > 200) & (shot[..., 1] < 60) & (shot[..., 2] < 60)
    rows, cols = np.nonzero(red)
    h, wd = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert red.sum() > 100
    assert abs(h - wd) <= 3 and red.sum() > 0.95 * h * wd  # the whole square image, not a clipped part
    viewer.layers.remove(extra)
    assert cells(viewer) == [{i} for i in ids[4:8]]


def test_the_page_is_refitted_when_the_canvas_changes_size(open_widget, qtbot):
    from napari_cellclass._widgets.napari_private import main_window

    viewer, w, project = open_widget(n=8, channels=2, page_size=4, display="composite")
    window = main_window(viewer)
    qtbot.wait(300)
    zoom = viewer.scene.camera.zoom
    window.resize(window.width() + 400, window.height() + 300)
    qtbot.waitUntil(lambda: viewer.scene.camera.zoom != zoom, timeout=3000)


def test_open_with_an_empty_folder_field_opens_nothing(make_napari_viewer, notifications, monkeypatch, tmp_path):
    from napari_cellclass._widgets.labelling import LabellingWidget

    write_project(tmp_path / "here", n=2)
    monkeypatch.chdir(tmp_path / "here")  # an empty field must not mean "the working directory"
    viewer = make_napari_viewer()
    w = LabellingWidget(viewer)
    w.open_button.clicked.emit()
    assert w.project is None and len(viewer.layers) == 0
    assert any("pick the project folder" in m for _, m in notifications)
