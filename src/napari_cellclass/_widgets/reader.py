"""npe2 reader: open a project folder as image layers (one page of images)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.images import is_image_file
from ..core.project import CONFIG_NAME, Project
from .layers import PAGE_SIZE, project_layer_data

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for a project folder (a folder holding ``cellclass.json`` or images)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / CONFIG_NAME).exists() or any(is_image_file(e.name) or e.is_dir() for e in os.scandir(p)):
        return read_project
    return None


def read_project(path: str | list[str]) -> list[LayerData]:
    """Layers for the first page of a project's images.

    In a napari window the labelling widget is docked too: it takes these layers over (grid,
    borders, hotkeys), so ``viewer.open(folder, plugin="napari-cellclass")`` or dropping the
    folder on the window is enough to start labelling.
    """
    folder = path[0] if isinstance(path, list) else path
    project = Project.open(folder)
    layers = project_layer_data(project, project.image_ids[:PAGE_SIZE])
    _dock_labelling_widget()
    return layers


def _dock_labelling_widget() -> None:
    """Open the labelling dock widget in the current napari window (once)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return  # no napari window (a script reading through npe2): layers only
    viewer.window.add_plugin_dock_widget("napari-cellclass", "Labelling")
