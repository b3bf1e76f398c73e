"""The labelling dock widget in a real napari viewer (run under Xvfb), driven by real key events."""
from __future__ import annotations

import numpy as np

from napari_cellclass._widgets.borders import border_colors
from napari_cellclass._widgets.labelling import LabellingWidget
from napari_cellclass._widgets.labelling_model import FILTER_UNLABELLED
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path

from .conftest import press, write_project

RED_RGBA = (1.0, 0.0, 0.0, 1.0)
BLUE_RGBA = (0.0, 0.0, 1.0, 1.0)


def sidecar_classes(project, image_id):
    path = sidecar_path(project.root / image_id)
    return read_sidecar(path)["classes"] if path.exists() else None


def layer_of(widget, image_id):
    return widget._shown[image_id].layers[0]


def test_f1_f2_ctrl_z_with_real_keys(open_widget):
    viewer, w, project = open_widget(n=5)
    ids = project.image_ids
    assert w.selected()[0] == [ids[0]]
    assert border_colors(layer_of(w, ids[0])) == []

    press(viewer, "F1")
    assert sidecar_classes(project, ids[0]) == ("alpha",)
    assert border_colors(layer_of(w, ids[0])) == [RED_RGBA]
    assert viewer.layers[0].metadata["cellclass"]["labels"] == ["alpha"]

    press(viewer, "F4")  # next class
    assert w.class_choice.value == "beta"
    press(viewer, "F2")  # relabel ids[0] as beta and go to ids[1]
    assert sidecar_classes(project, ids[0]) == ("beta",)
    assert border_colors(layer_of(w, ids[0])) == [BLUE_RGBA]
    assert w.selected()[0] == [ids[1]]
    press(viewer, "F2")
    assert sidecar_classes(project, ids[1]) == ("beta",)
    assert w.selected()[0] == [ids[2]]
    assert "labelled 2 / 5" in w.summary.value

    press(viewer, "Z", ctrl=True)
    assert sidecar_classes(project, ids[1]) is None
    assert border_colors(layer_of(w, ids[1])) == []
    press(viewer, "Z", ctrl=True)
    assert sidecar_classes(project, ids[0]) == ("alpha",)
    assert border_colors(layer_of(w, ids[0])) == [RED_RGBA]
    press(viewer, "F3")
    assert w.class_choice.value == "alpha"


def test_screenshot_shows_class_colour_around_labelled_image(open_widget):
    viewer, w, project = open_widget(n=4)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    red = (shot[..., 0] > 200) & (shot[..., 1] < 60) & (shot[..., 2] < 60)
    assert red.sum() == 0
    w.select_image(project.image_ids[0])
    w.label_selected()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    red = (shot[..., 0] > 200) & (shot[..., 1] < 60) & (shot[..., 2] < 60)
    assert red.sum() > 100
    rows, cols = np.nonzero(red)
    # a frame: red on all four sides of one grid cell (the top-left image), not a filled square
    h, wd = rows.max() - rows.min(), cols.max() - cols.min()
    assert h > 20 and wd > 20 and red.sum() < 0.5 * h * wd
    assert cols.max() < shot.shape[1] * 0.6 and rows.max() < shot.shape[0] * 0.6


def test_page_turning_and_f2_at_page_end(open_widget):
    viewer, w, project = open_widget(n=5, page_size=2)
    ids = project.image_ids
    image_layers = [lyr for lyr in viewer.layers]
    assert len(image_layers) == 2 and viewer.canvas.grid.enabled
    assert w.page_label.value.startswith("page 1 / 3")
    press(viewer, "F2")
    press(viewer, "F2")  # second image of page 1: turns the page
    assert w.pager.page_ids == ids[2:4]
    assert w.selected()[0] == [ids[2]]
    assert {lyr.metadata["cellclass"]["image_id"] for lyr in viewer.layers} == set(ids[2:4])
    assert [lyr.name for lyr in viewer.layers] == [i.rsplit(".", 1)[0] for i in ids[2:4]]  # no extension
    assert w.page_label.value.startswith("page 2 / 3")
    press(viewer, "PageDown")
    assert w.pager.page_ids == ids[4:] and len(viewer.layers) == 1
    w.previous_page()
    assert w.pager.page_ids == ids[2:4]
    w.previous_page()
    assert border_colors(layer_of(w, ids[0])) == [RED_RGBA]  # labels come back with the page


def test_rename_recolour_and_remove_class(open_widget):
    viewer, w, project = open_widget(n=3)
    ids = project.image_ids
    w.select_image(ids[0])
    w.label_selected()
    w.class_choice.value = "alpha"
    w.class_name.value = "mitotic"
    w.rename_button.clicked.emit()
    assert project.class_names == ("mitotic", "beta")
    assert sidecar_classes(project, ids[0]) == ("mitotic",)
    assert w.class_choice.value == "mitotic"
    assert border_colors(layer_of(w, ids[0])) == [RED_RGBA]

    w.color_button.clicked.emit()  # the injected picker answers green
    assert project.class_color("mitotic") == "#00ff00"
    assert border_colors(layer_of(w, ids[0])) == [(0.0, 1.0, 0.0, 1.0)]

    w.answers["confirm"] = False
    w.remove_button.clicked.emit()
    assert "mitotic" in project.class_names  # the user said no
    w.answers["confirm"] = True
    w.remove_button.clicked.emit()
    assert project.class_names == ("beta",)
    assert sidecar_classes(project, ids[0]) is None
    assert border_colors(layer_of(w, ids[0])) == []

    w.class_name.value = "gamma"
    w.add_button.clicked.emit()
    assert project.class_names == ("beta", "gamma") and w.class_choice.value == "gamma"


def test_filter_unlabelled_and_by_class(open_widget):
    viewer, w, project = open_widget(n=4)
    ids = project.image_ids
    project.assign(ids[1], "beta")
    assert border_colors(layer_of(w, ids[1])) == [BLUE_RGBA]  # scripted change shows at once
    w.image_filter.value = FILTER_UNLABELLED
    assert w.pager.page_ids == (ids[0], ids[2], ids[3])
    assert {lyr.metadata["cellclass"]["image_id"] for lyr in viewer.layers} == set(w.pager.page_ids)
    w.image_filter.value = "beta"
    assert [lyr.metadata["cellclass"]["image_id"] for lyr in viewer.layers] == [ids[1]]


def test_multi_select_labels_all(open_widget):
    viewer, w, project = open_widget(n=4)
    ids = project.image_ids
    viewer.layers.selection.active = layer_of(w, ids[0])
    viewer.layers.selection.add(layer_of(w, ids[2]))
    press(viewer, "F1")
    assert sidecar_classes(project, ids[0]) == ("alpha",) == sidecar_classes(project, ids[2])
    assert sidecar_classes(project, ids[1]) is None
    press(viewer, "Z", ctrl=True)  # one undo step for the whole selection
    assert sidecar_classes(project, ids[0]) is None and sidecar_classes(project, ids[2]) is None


def test_multi_label_toggle_and_nested_borders(open_widget):
    viewer, w, project = open_widget(n=2, multi_label=True)
    ids = project.image_ids
    press(viewer, "F1")
    press(viewer, "F4")
    press(viewer, "F1")
    assert sidecar_classes(project, ids[0]) == ("alpha", "beta")
    assert border_colors(layer_of(w, ids[0])) == [RED_RGBA, BLUE_RGBA]
    press(viewer, "F1")  # toggles beta off
    assert sidecar_classes(project, ids[0]) == ("alpha",)
    assert border_colors(layer_of(w, ids[0])) == [RED_RGBA]


def test_multichannel_composite_shares_grid_cell(open_widget):
    viewer, w, project = open_widget(n=3, channels=2, display="composite")
    ids = project.image_ids
    assert len(viewer.layers) == 6 and viewer.canvas.grid.stride == 2
    first, second = viewer.layers[0], viewer.layers[1]
    assert first.metadata["cellclass"]["image_id"] == second.metadata["cellclass"]["image_id"] == ids[0]
    assert viewer.canvas.grid.position(0, viewer.layers) == viewer.canvas.grid.position(1, viewer.layers)
    assert first.contrast_limits[1] < 5000  # percentiles, not the 16-bit range
    viewer.layers.selection.active = second  # the second channel stands for the image
    press(viewer, "F1")
    assert sidecar_classes(project, ids[0]) == ("alpha",)
    w.channels.value = "RGB blend"
    assert len(viewer.layers) == 3 and viewer.canvas.grid.stride == 1 and viewer.layers[0].rgb
    assert border_colors(viewer.layers[0]) == [RED_RGBA]


def test_scripted_layers_are_labelled_via_metadata(open_widget, tmp_path):
    from napari.layers import Image
    from napari.layers._source import layer_source

    viewer, w, project = open_widget(n=1)
    plain = viewer.add_image(np.zeros((8, 8), np.uint8), name="from a script")
    src = tmp_path / "elsewhere" / "cell.tif"
    src.parent.mkdir()
    src.write_bytes(b"")
    with layer_source(path=str(src)):
        filed = Image(np.zeros((8, 8), np.uint8), name="from a file",
                      metadata={"cellclass": {"labels": ["beta"]}})
    viewer.add_layer(filed)
    assert border_colors(filed) == [BLUE_RGBA]  # labels a script put in metadata are drawn
    viewer.layers.selection.active = plain
    viewer.layers.selection.add(filed)
    press(viewer, "F1")
    assert plain.metadata["cellclass"]["labels"] == ["alpha"] == filed.metadata["cellclass"]["labels"]
    assert read_sidecar(sidecar_path(src))["classes"] == ("alpha",)
    assert border_colors(plain) == [RED_RGBA]
    press(viewer, "Z", ctrl=True)
    assert plain.metadata["cellclass"]["labels"] == []
    assert filed.metadata["cellclass"]["labels"] == ["beta"]
    assert not sidecar_path(src).exists()
    assert project.labelled_ids() == []


def test_errors_become_notifications(open_widget, notifications, tmp_path):
    viewer, w, project = open_widget(n=3)
    ids = project.image_ids
    # corrupt image on a page: the rest of the page shows, the user is told
    (project.root / "img01.tif").write_bytes(b"not a tiff at all")
    w.next_page()  # single page: nothing happens
    w.open_project(project.root)
    assert ids[1] not in w._shown and ids[0] in w._shown and ids[2] in w._shown
    assert any("img01.tif" in msg for _, msg in notifications)
    # a folder that cannot be written: error notification, widget keeps working
    (project.root / "cellclass_labels").write_bytes(b"a file where the label folder should be")
    w.select_image(ids[0])
    press(viewer, "F1")
    assert any(sev == "error" and "cannot write" in msg for sev, msg in notifications)
    assert w.project.labels(ids[0]) == ()
    # unknown class
    w.controls._on_filter("no such class")
    assert any("no such class" in msg for _, msg in notifications)
    # nothing selected
    viewer.layers.selection.clear()
    press(viewer, "F1")
    assert any("select an image" in msg for _, msg in notifications)


def test_reader_opens_project_and_docks_widget(make_napari_viewer, tmp_path, qtbot):
    project = write_project(tmp_path / "p", n=3)
    project.assign(project.image_ids[1], "beta")
    viewer = make_napari_viewer(show=True)
    viewer.open(str(project.root), plugin="napari-cellclass")
    widgets = [dw.inner_widget() for dw in viewer.window._wrapped_dock_widgets.values()]
    widget = next(wd for wd in widgets if isinstance(wd, LabellingWidget))
    qtbot.waitUntil(lambda: widget.project is not None and len(widget._shown) == 3, timeout=10_000)
    assert len(viewer.layers) == 3  # the reader's layers were taken over, not duplicated
    assert border_colors(widget._shown[project.image_ids[1]].layers[0]) == [BLUE_RGBA]
    viewer.layers.selection.active = widget._shown[project.image_ids[0]].layers[0]
    press(viewer, "F1")
    assert sidecar_classes(project, project.image_ids[0]) == ("alpha",)


def test_opening_a_subfolder_of_a_project_opens_the_project(make_napari_viewer, tmp_path, qtbot, notifications):
    """Labelling a subfolder as a project of its own would hide its images from the project."""
    import tifffile

    project = write_project(tmp_path / "p", n=2)
    (project.root / "plate2").mkdir()
    tifffile.imwrite(project.root / "plate2" / "x.tif", np.full((24, 24), 500, np.uint16))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(project.root / "plate2"), plugin="napari-cellclass")
    widgets = [dw.inner_widget() for dw in viewer.window._wrapped_dock_widgets.values()]
    widget = next(wd for wd in widgets if isinstance(wd, LabellingWidget))
    qtbot.waitUntil(lambda: widget.project is not None and len(widget._shown) == 3, timeout=10_000)
    assert widget.project.root == project.root and "plate2/x.tif" in widget._shown
    assert not (project.root / "plate2" / "cellclass.json").exists()
    assert any("part of the project" in msg for _, msg in notifications)


def test_hotkeys_unbound_and_restored_on_close(make_napari_viewer, tmp_path):
    from napari.utils.key_bindings import coerce_keybinding

    write_project(tmp_path / "p", n=1)
    viewer = make_napari_viewer()

    def mine(v):
        return None

    viewer.bind_key("F1", mine)
    widget = LabellingWidget(viewer, tmp_path / "p")
    dock = viewer.window.add_dock_widget(widget, name="Labelling")
    assert viewer.keymap[coerce_keybinding("F1")] is not mine
    assert coerce_keybinding("F2") in viewer.keymap
    viewer.window.remove_dock_widget(dock)
    assert viewer.keymap[coerce_keybinding("F1")] is mine
    assert coerce_keybinding("F2") not in viewer.keymap
    assert coerce_keybinding("Control-Z") not in viewer.keymap
    widget.close()  # closing again is harmless


def test_manifest_declares_widget_reader_and_sample():
    from pathlib import Path

    import npe2

    import napari_cellclass

    path = Path(napari_cellclass.__file__).parent / "napari.yaml"
    assert path.is_file() and not path.is_symlink()
    manifest = npe2.PluginManifest.from_file(path)
    manifest.validate_imports()
    widgets = {c.display_name: c.command for c in manifest.contributions.widgets}
    assert widgets["Labelling"] == "napari-cellclass.labelling"
    assert manifest.contributions.readers and manifest.contributions.sample_data
