"""The predictions dock's per-well part in a real viewer (Xvfb): a plate with known fractions, clicking wells."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_cellclass._widgets.training_model import import_learning_libraries  # noqa: E402

import_learning_libraries()  # before any OpenGL context (see the function)

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtTest import QTest  # noqa: E402

from napari_cellclass._widgets.labelling import LabellingWidget  # noqa: E402
from napari_cellclass._widgets.plate_panel import EMPTY_WELL  # noqa: E402
from napari_cellclass._widgets.predict_panel import PredictionsWidget  # noqa: E402
from napari_cellclass._widgets.session import session_for  # noqa: E402
from napari_cellclass._widgets.viewer_link import image_layers  # noqa: E402
from napari_cellclass.core.plates import parse_well, well_name  # noqa: E402
from napari_cellclass.core.predictions import Prediction, write_predictions  # noqa: E402
from napari_cellclass.core.project import Project  # noqa: E402

#: Wells of the plate and how many of their 4 fields are predicted alpha.
ALPHA = {"B02": 0, "B03": 1, "C05": 2, "D07": 3, "H12": 4}
FIELDS = 4


def _screen(folder):
    """``plate1/<well>_f<k>.tif`` images and stored predictions with a known alpha fraction per well."""
    import tifffile

    rng = np.random.default_rng(0)
    for well in ALPHA:
        for k in range(FIELDS):
            path = folder / "plate1" / f"{well}_f{k + 1}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, rng.integers(100, 4000, (16, 16), dtype=np.uint16))
    project = Project.open(folder, fsync=False)
    project.add_class("alpha", "#ff0000")
    project.add_class("beta", "#0000ff")
    preds = []
    for well, k_alpha in ALPHA.items():
        for k in range(FIELDS):
            cls = "alpha" if k < k_alpha else "beta"
            conf = 0.6 if k == 0 else 0.95
            preds.append(Prediction(f"plate1/{well}_f{k + 1}.tif", (cls,), conf,
                                    {"alpha": conf if cls == "alpha" else 1 - conf,
                                     "beta": conf if cls == "beta" else 1 - conf}, "m", "t"))
    write_predictions(project.root, preds)
    return project


@pytest.fixture
def dock(make_napari_viewer, tmp_path):
    project = _screen(tmp_path / "screen")
    viewer = make_napari_viewer(show=True)
    panel = PredictionsWidget(viewer, project, confirm=lambda q: True)
    viewer.window.add_dock_widget(panel, name="Predictions")
    panel.uncertain.slider.value = 0.0
    return viewer, panel, project


def _table(panel) -> dict[str, list]:
    """``{group: [n, fraction]}`` of the per-group table, in order."""
    split = panel.table.to_dict("split")
    return {g: list(row) for g, row in zip(split["index"], split["data"], strict=True)}


def _click(table, row: int, column: int) -> None:
    rect = table.visualRect(table.model().index(row, column))
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())


def test_table_and_heatmap_show_the_known_fractions(qtbot, dock):
    viewer, panel, project = dock
    plates = panel.plates
    assert not plates.body.visible and plates.summary is None  # folded away: nothing computed
    plates.open.value = True
    plates.class_choice.value = "alpha"
    assert _table(plates) == {f"plate1/{w}": [FIELDS, f"{k / FIELDS:.3f}"] for w, k in ALPHA.items()}
    assert list(_table(plates)) == [f"plate1/{w}" for w in ALPHA]
    grid = plates.grid
    assert (grid.rowCount(), grid.columnCount()) == (8, 12) and grid.isVisible()
    assert grid.verticalHeaderItem(7).text() == "H" and grid.horizontalHeaderItem(11).text() == "12"
    import matplotlib

    for well, k in ALPHA.items():
        r, c = parse_well(well)
        expected = [round(255 * v) for v in matplotlib.colormaps["viridis"](k / FIELDS)[:3]]
        color = grid.item(r, c).background().color()
        assert [color.red(), color.green(), color.blue()] == pytest.approx(expected, abs=1)
    empty = grid.item(0, 0).background()
    assert empty.style() == Qt.BrushStyle.BDiagPattern and empty.color() == EMPTY_WELL
    plates.class_choice.value = "beta"
    assert _table(plates)["plate1/B02"] == [FIELDS, "1.000"]


def test_clicking_a_well_shows_exactly_its_images(qtbot, dock):
    viewer, panel, project = dock
    panel.plates.open.value = True
    panel.plates.class_choice.value = "beta"
    r, c = parse_well("C05")
    _click(panel.plates.grid, r, c)
    assert set(image_layers(viewer, project)) == {f"plate1/C05_f{k + 1}.tif" for k in range(FIELDS)}
    assert panel.plates.class_choice.value == "beta"  # new layers keep the choices (napari resets them)
    assert panel.plates.class_choice.choices == ("alpha", "beta")
    _click(panel.plates.grid, 0, 0)  # an empty well shows nothing new
    assert set(image_layers(viewer, project)) == {f"plate1/C05_f{k + 1}.tif" for k in range(FIELDS)}
    panel.plates.table.native.cellClicked.emit(4, 0)  # a row of the table: well H12
    assert set(image_layers(viewer, project)) == {f"plate1/H12_f{k + 1}.tif" for k in range(FIELDS)}


def test_a_well_shows_in_the_labelling_dock_when_there_is_one(qtbot, make_napari_viewer, tmp_path):
    project = _screen(tmp_path / "screen")
    viewer = make_napari_viewer(show=True)
    labelling = LabellingWidget(viewer, project)
    viewer.window.add_dock_widget(labelling, name="Labelling")
    panel = PredictionsWidget(viewer, confirm=lambda q: True)
    viewer.window.add_dock_widget(panel, name="Predictions")
    panel.plates.open.value = True
    _click(panel.plates.grid, *parse_well("B03"))
    assert set(image_layers(viewer, project)) == {f"plate1/B03_f{k + 1}.tif" for k in range(FIELDS)}


def test_it_follows_the_predictions_the_uncertain_slider_and_the_group_by(qtbot, dock):
    viewer, panel, project = dock
    plates = panel.plates
    plates.open.value = True
    session = session_for(viewer)
    moved = {i: p for i, p in session.predictions.items() if not i.startswith("plate1/H12")}
    moved["plate1/A01_f1.tif"] = Prediction("plate1/A01_f1.tif", ("alpha",), 0.9, {"alpha": 0.9, "beta": 0.1})
    session.set_predictions(moved)
    groups = list(_table(plates))
    assert "plate1/H12" not in groups and groups[0] == "plate1/A01"
    assert np.isnan(plates.summary.grid("plate1", "alpha")[0][7, 11])

    panel.uncertain.slider.value = 0.9  # the first field of each well (confidence 0.6) is uncertain
    assert "uncertain" in plates.class_choice.choices
    plates.class_choice.value = "uncertain"
    data = _table(plates)
    assert data["plate1/B02"] == [FIELDS, f"{1 / FIELDS:.3f}"] and data["plate1/A01"] == [1, "0.000"]

    plates.group_by.value = "folder"
    assert list(_table(plates)) == ["plate1"] and not plates.grid.isVisible()
    plates.group_by.value = "(?P<well"
    assert "not a valid regular expression" in plates.note.value and plates.summary is None
    plates.group_by.value = ""
    assert plates.summary is not None and well_name(0, 0) in [g.well for g in plates.summary.groups]
