"""``napari-cellclass gui``: napari opens with the project's images and the labelling widget."""
from __future__ import annotations

from napari_cellclass._widgets.napari_private import main_window

from .conftest import write_project


def test_open_viewer_shows_project_and_docks_widgets(tmp_path, qtbot):
    from napari_cellclass._widgets.launch import open_viewer
    from napari_cellclass._widgets.layers import METADATA_KEY

    write_project(tmp_path / "p", n=4)
    viewer = open_viewer(tmp_path / "p", run=False)
    try:
        ids = {layer.metadata[METADATA_KEY]["image_id"] for layer in viewer.layers}
        assert ids == {f"img{i:02d}.tif" for i in range(4)}
        docked = viewer.window._wrapped_dock_widgets
        assert {"Labelling", "Training", "Predictions", "Metrics"} <= {k.split(" ")[0] for k in docked}
        labelling = next(d.inner_widget() for k, d in docked.items() if k.startswith("Labelling"))
        qtbot.waitUntil(lambda: labelling.project is not None)
        assert labelling.summary.value == "p: labelled 0 / 4"
        # the four docks are tabs of one dock area, the Labelling tab in front
        docks = {k.split(" ")[0]: d for k, d in docked.items()}
        others = [docks[name] for name in ("Training", "Predictions", "Metrics")]
        assert set(others) <= set(main_window(viewer).tabifiedDockWidgets(docks["Labelling"]))
        qtbot.waitUntil(lambda: not docks["Labelling"].visibleRegion().isEmpty())
        assert all(dock.visibleRegion().isEmpty() for dock in others)
    finally:
        viewer.close()
