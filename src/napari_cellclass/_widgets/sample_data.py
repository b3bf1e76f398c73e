"""npe2 sample data: the synthetic U2OS arrestin-GFP project, written once to a cache folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.project import CONFIG_NAME, Project
from ..core.sample import make_sample_project
from .layers import PAGE_SIZE, project_layer_data
from .reader import _current_viewer, labelling_widget


def sample_folder() -> Path:
    """Where the sample project lives (``$CELLCLASS_SAMPLE_DIR`` or the user cache)."""
    env = os.environ.get("CELLCLASS_SAMPLE_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "napari-cellclass" / "sample-u2os"


def u2os_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """Create the sample project if needed and return its first page as layers."""
    folder = sample_folder()
    project = Project.open(folder) if (folder / CONFIG_NAME).exists() else make_sample_project(folder)
    viewer = _current_viewer()
    if viewer is not None:
        # napari inserts these layers one by one: with the grid on, each insert re-lays out
        # the whole grid; the labelling dock takes them over and turns the grid back on
        viewer.canvas.grid.enabled = False
        labelling_widget(viewer)
    return project_layer_data(project, project.image_ids[:PAGE_SIZE])
