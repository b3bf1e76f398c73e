"""GUI-free project model: images, classes, label sidecars, splits, import/export, sample data.

Imports only numpy, tifffile and Pillow (never Qt, napari or torch).
"""
from .classes import DEFAULT_PALETTE, ClassInfo
from .errors import CellclassError, ClassNameError, ImageReadError, ProjectError
from .images import IMAGE_SUFFIXES, ImageData, read_image
from .project import Project
from .scan import looks_like_project
from .sidecars import read_sidecar, sidecar_path
from .splits import Split, stratified_split

__all__ = [
    "DEFAULT_PALETTE",
    "IMAGE_SUFFIXES",
    "CellclassError",
    "ClassInfo",
    "ClassNameError",
    "ImageData",
    "ImageReadError",
    "Project",
    "ProjectError",
    "Split",
    "looks_like_project",
    "read_image",
    "read_sidecar",
    "sidecar_path",
    "stratified_split",
]
