"""npe2 reader: open a project folder (in a viewer: in the labelling dock, one page of images)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import CellclassError
from ..core.project import Project
from ..core.scan import enclosing_project, looks_like_project
from .layers import PAGE_SIZE, project_layer_data

LayerData = tuple[Any, ...]
#: npe2's "read, nothing to add" answer: the labelling dock shows the images itself.
NO_LAYERS: list[LayerData] = [(None,)]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for a project folder (one holding ``cellclass.json`` or images).

    Any other folder (a home folder, ``/tmp``) is left to other readers, and nothing is
    written into it.
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.is_dir():
        return None
    return read_project if looks_like_project(p) else None


def read_project(path: str | list[str]) -> list[LayerData]:
    """Open a project folder.

    In a napari window the labelling dock opens it (or, when it already shows this project,
    simply comes to the front) and draws the first page itself: grid, borders, hotkeys. So
    ``viewer.open(folder, plugin="napari-cellclass")``, File > Open Folder and dropping the
    folder on the window all start labelling. Without a window (a script reading through npe2)
    the first page is returned as layer data. A subfolder of a project opens that project.
    """
    folder = path[0] if isinstance(path, list) else path
    outer = enclosing_project(folder)  # a subfolder of a project opens that project
    root = str(outer) if outer is not None else folder
    viewer = _current_viewer()
    if viewer is None:
        project = Project.open(root, create=False)
        return project_layer_data(project, project.image_ids[:PAGE_SIZE])
    widget = labelling_widget(viewer)
    if widget.shows_folder(root):  # already open: the dock comes to the front, nothing more
        viewer.status = f"{Path(root).name} is already open in the Labelling dock"
        return NO_LAYERS
    try:
        widget.open_project(folder)  # the dock says so when a subfolder opens its project
    except CellclassError as exc:
        from napari.utils.notifications import show_error

        show_error(str(exc))
    return NO_LAYERS


def _current_viewer() -> Any | None:
    import napari

    return napari.current_viewer()


def labelling_widget(viewer: Any) -> Any:
    """The labelling dock of ``viewer`` (docked now when there is none), in front."""
    from .napari_private import dock_inner_widget
    from .session import session_for

    widget = session_for(viewer).page_view
    if widget is None:
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-cellclass", "Labelling")
        widget = dock_inner_widget(widget)
    widget.raise_dock()
    return widget
