"""npe2 sample data: the synthetic U2OS arrestin-GFP project, written once to a cache folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.project import CONFIG_NAME, Project
from ..core.sample import make_sample_project
from .layers import PAGE_SIZE, project_layer_data
from .reader import _dock_labelling_widget


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
    if (folder / CONFIG_NAME).exists():
        project = Project.open(folder)
    else:
        project = make_sample_project(folder)
    layers = project_layer_data(project, project.image_ids[:PAGE_SIZE])
    _dock_labelling_widget()
    return layers
