"""Exceptions raised by napari-cellclass, each with a message a user can act on."""
from __future__ import annotations


class CellclassError(Exception):
    """Base class: a problem the user can fix; the message names the file and the fix."""


class ImageReadError(CellclassError):
    """An image file could not be read (corrupt, empty, truncated or unsupported)."""


class ProjectError(CellclassError):
    """A project folder, its settings or its labels are not usable as asked."""


class ClassNameError(ProjectError):
    """A class name is empty, duplicated, unknown or not allowed."""


class ModelError(CellclassError):
    """A backbone, a model or its settings are not usable as asked."""


class WeightsError(ModelError):
    """A pretrained-weights file or download does not fit the model (nothing was loaded)."""
