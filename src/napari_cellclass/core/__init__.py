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
    "DEFAULT_PALETTE", "ClassInfo", "CellclassError", "ClassNameError", "ImageReadError", "ProjectError",
    "IMAGE_SUFFIXES", "ImageData", "read_image", "Project", "looks_like_project", "read_sidecar", "sidecar_path", "Split",
    "stratified_split",
]
