"""The metrics dock in a real viewer (Xvfb): table, confusion matrix review, CSV export."""
from __future__ import annotations

import csv

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from napari_cellclass._widgets.training_model import import_learning_libraries  # noqa: E402

import_learning_libraries()  # before any OpenGL context (see the function)

from napari_cellclass._widgets.labelling import LabellingWidget  # noqa: E402
from napari_cellclass._widgets.metrics_dock import MetricsDock  # noqa: E402
from napari_cellclass._widgets.session import session_for  # noqa: E402
from napari_cellclass._widgets.viewer_link import cellclass_meta  # noqa: E402

from ._trained import trained_sample  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_sample(tmp_path_factory.mktemp("metrics"))


def test_metrics_fill_and_confusion_cell_opens_images(qtbot, make_napari_viewer, trained, tmp_path):
    project, model = trained
    viewer = make_napari_viewer()
    labelling = LabellingWidget(viewer, project)
    viewer.window.add_dock_widget(labelling, name="Labelling")
    dock = MetricsDock(viewer)
    viewer.window.add_dock_widget(dock, name="Metrics")
    assert dock.project is project  # shared with the labelling widget

    session_for(viewer).set_model(model)  # as after training: evaluates the validation split
    qtbot.waitUntil(lambda: dock.evaluation is not None and not dock.running, timeout=60_000)
    ev = dock.evaluation
    table = dock.table.to_dict("split")
    first_col = list(table["index"])
    assert first_col[:2] == ["negative control", "positive control"]
    assert {"accuracy", "balanced accuracy", "macro avg", "weighted avg"} <= set(first_col)
    assert sum(int(r[3]) for r in table["data"][:2]) == len(ev.ids)
    cm = dock.confusion.to_dict("split")["data"]
    assert sum(map(sum, cm)) == len(ev.ids)

    # calibration: the model's temperature, the coverage at the target accuracy and the reliability diagram
    trust = dock.trust.report
    assert trust["calibration"]["temperature"] == pytest.approx(ev.calibration["temperature"])
    assert trust["coverage"]["target"] == pytest.approx(0.95) and "temperature" in dock.trust.text.value
    height, width, _ = dock.trust.pixels.shape
    assert width > 300 and height > 150 and dock.trust.picture.pixmap().width() == width
    dock.trust.target.value = 0.6  # a lower target keeps at least as many images
    assert dock.trust.report["coverage"]["target"] == pytest.approx(0.6)
    assert dock.trust.report["coverage"]["coverage"] >= trust["coverage"]["coverage"]

    # the whole project: every cell's images, misclassified and most confident first
    dock.evaluate("all")
    qtbot.waitUntil(lambda: dock.evaluation is not ev and not dock.running, timeout=60_000)
    ev = dock.evaluation
    assert ev.split == "all" and len(ev.ids) == len(project.labelled_ids())
    cells = [(i, j) for i in range(2) for j in range(2) if ev.confusion[i, j]]
    i, j = next(((a, b) for a, b in cells if a != b), cells[0])
    expected = ev.cell_ids(i, j)
    assert len(expected) == ev.confusion[i, j]
    for iid in expected:
        assert project.labels(iid)[0] == ev.classes[i]
    dock.confusion.native.cellClicked.emit(i, j)
    qtbot.wait(50)
    shown = []
    for layer in viewer.layers:
        meta = cellclass_meta(layer)
        if meta and meta["image_id"] not in shown:
            shown.append(meta["image_id"])
    assert shown == list(expected)  # in the cell's order: most confident mistakes first
    assert labelling.page_label.value.startswith(f"true {ev.classes[i]} / predicted {ev.classes[j]}: "
                                                 f"{len(expected)} images")

    paths = dock.export(tmp_path / "export")
    names = sorted(p.name.split("_", 1)[-1] for p in paths)
    assert any(n.endswith("metrics.csv") for n in names)
    with open(paths[2], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][1:] == ["negative control", "positive control"]
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == len(ev.ids)
