"""Exceptions raised by napari-cellclass, each with a message a user can act on."""
from __future__ import annotations


class CellclassError(Exception):
    """Base class: a problem the user can fix; the message names the file and the fix."""


class ImageReadError(CellclassError):
    """An image file could not be read (corrupt, empty, truncated or unsupported)."""


class ProjectError(CellclassError):
    """A project folder, its settings or its labels are not usable as asked."""


class SidecarCorruptError(ProjectError):
    """A label sidecar is damaged (not a valid ``.npz``); it is moved aside, never deleted."""


class SidecarUnreadableError(ProjectError):
    """A label sidecar cannot be read now (I/O error, newer format); it is left in place."""


class ClassNameError(ProjectError):
    """A class name is empty, duplicated, unknown or not allowed."""


class ConfigError(CellclassError):
    """A training setting has a bad value; the message names the field and what is allowed."""


class TrainingError(CellclassError):
    """Training cannot start or go on (no labelled images, a class without images, ...)."""


class ChannelMismatchError(TrainingError):
    """An image has a different number of channels than the model expects."""


class DeviceMemoryError(TrainingError):
    """The accelerator ran out of memory; the message names a batch size that fits."""


class ModelFolderError(CellclassError):
    """A model folder is missing files, is from another tool or format, or was altered."""


class ModelError(CellclassError):
    """A backbone, a model or its settings are not usable as asked."""


class WeightsError(ModelError):
    """A pretrained-weights file or download does not fit the model (nothing was loaded)."""
