"""napari-cellclass: sort microscopy images into classes with deep learning.

The scripting API (no Qt needed)::

    from napari_cellclass import Project, make_sample_project
    project = Project.open("my_images")

Training, prediction and evaluation live in :mod:`napari_cellclass.learn` (imported on first
use, since it loads torch).
"""
from __future__ import annotations

from typing import Any

from .core import (
    CellclassError,
    ClassInfo,
    ImageData,
    ImageReadError,
    Project,
    ProjectError,
    Split,
    read_image,
    stratified_split,
)
from .core.sample import make_sample_project
from .core.transfer import export_csv, import_csv, import_folders

__version__ = "0.1.0"

_LEARN_NAMES = ("TrainConfig", "train", "predict", "evaluate", "load_model", "list_backbones", "suggest",
                "check_labels", "explain", "export_model")

__all__ = [
    "CellclassError", "ClassInfo", "ImageData", "ImageReadError", "Project", "ProjectError", "Split",
    "read_image", "stratified_split", "make_sample_project", "export_csv", "import_csv",
    "import_folders", "__version__", *_LEARN_NAMES,
]


def __getattr__(name: str) -> Any:
    """Load the torch-based API lazily so that ``import napari_cellclass`` stays fast."""
    if name in _LEARN_NAMES:
        from . import learn

        return getattr(learn, name)
    raise AttributeError(f"module 'napari_cellclass' has no attribute {name!r}")
