"""Open napari with a project and the plugin's dock widgets (``napari-cellclass gui`` runs this module)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .napari_private import main_window

PLUGIN = "napari-cellclass"
EXTRA_WIDGETS = ("Training", "Predictions", "Metrics")


def open_viewer(folder: str | os.PathLike | None = None, *, run: bool = True):
    """Start a napari viewer with the project ``folder`` opened in the labelling dock and the
    other cellclass docks beside it (see :func:`dock_all`). Returns the viewer."""
    import napari

    from .layers import METADATA_KEY  # noqa: F401 - fail early if the glue is broken

    viewer = napari.Viewer(title="napari-cellclass")
    dock_all(viewer, folder)
    if run:
        napari.run()
    return viewer


def dock_all(viewer: Any, folder: str | os.PathLike | None = None) -> None:
    """Open ``folder`` (if any) in the labelling dock and dock the other cellclass widgets.

    The Training, Predictions and Metrics docks are tabs beside Labelling in the same dock area,
    the Labelling tab in front, the gallery below them, and the window fits the screen.
    """
    from .reader import labelling_widget

    if folder is not None:
        viewer.open(str(Path(folder)), plugin=PLUGIN)
    labelling = labelling_widget(viewer)
    for name in EXTRA_WIDGETS:
        try:  # one dock area, one tab per dock: each dock gets the area's full height
            viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        except KeyError:
            continue  # not contributed by this version
    from .gallery import GalleryDock

    if labelling.shared.gallery is None:  # beside the canvas, under the tabs: the whole project at a glance
        gallery = viewer.window.add_dock_widget(GalleryDock(viewer), name="Gallery", area="right", tabify=False)
        qt = main_window(viewer)
        dock = labelling.native.parent()
        while dock is not None and not hasattr(dock, "setFloating"):
            dock = dock.parent()
        if qt is not None and dock is not None:
            from qtpy.QtCore import Qt

            qt.resizeDocks([dock, gallery], [420, 560], Qt.Orientation.Vertical)
    labelling.raise_dock()
    fit_to_screen(viewer)


def fit_to_screen(viewer: Any) -> None:
    """Shrink napari's main window to the screen it is on (napari restores its last size)."""
    from qtpy.QtWidgets import QApplication

    qt = main_window(viewer)
    screen = (qt.screen() if qt is not None else None) or QApplication.primaryScreen()
    if qt is None or screen is None or qt.isMaximized() or qt.isFullScreen():
        return
    room = screen.availableGeometry()
    frame, inner = qt.frameGeometry(), qt.geometry()
    extra_w, extra_h = frame.width() - inner.width(), frame.height() - inner.height()
    width = min(inner.width(), room.width() - extra_w)
    height = min(inner.height(), room.height() - extra_h)
    if (width, height) == (inner.width(), inner.height()):
        return
    qt.resize(width, height)
    x = max(room.left(), min(frame.left(), room.left() + room.width() - width - extra_w))
    y = max(room.top(), min(frame.top(), room.top() + room.height() - height - extra_h))
    qt.move(x, y)


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_cellclass._widgets.launch [FOLDER]``: napari with the project and every dock."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    open_viewer(args[0] if args else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
