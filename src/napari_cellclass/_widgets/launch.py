"""Open napari with a project and the plugin's dock widgets (used by ``napari-cellclass gui``)."""
from __future__ import annotations

import os
from pathlib import Path

PLUGIN = "napari-cellclass"
EXTRA_WIDGETS = ("Training", "Metrics")


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
    for name in EXTRA_WIDGETS:
        try:
            viewer.window.add_plugin_dock_widget(PLUGIN, name)
        except KeyError:
            continue  # not contributed by this version
    if run:
        napari.run()
    return viewer
