"""Open napari with a project and the plugin's dock widgets (used by ``napari-cellclass gui``)."""
from __future__ import annotations

import os
from pathlib import Path

PLUGIN = "napari-cellclass"
EXTRA_WIDGETS = ("Training", "Predictions", "Metrics")


def open_viewer(folder: str | os.PathLike | None = None, *, run: bool = True):
    """Start a napari viewer with the project ``folder`` opened (labelling widget docked)
    and the other cellclass widgets docked beside it. Returns the viewer."""
    import napari

    from .layers import METADATA_KEY  # noqa: F401 - fail early if the glue is broken

    viewer = napari.Viewer(title="napari-cellclass")
    if folder is not None:
        viewer.open(str(Path(folder)), plugin=PLUGIN)
    else:
        viewer.window.add_plugin_dock_widget(PLUGIN, "Labelling")
    docks = []
    for k, name in enumerate(EXTRA_WIDGETS):
        try:  # Training, Predictions and Metrics share one dock area as tabs
            docks.append(viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=k > 0)[0])
        except KeyError:
            continue  # not contributed by this version
    if docks:
        docks[0].raise_()  # Training is the tab shown first
    if run:
        napari.run()
    return viewer
