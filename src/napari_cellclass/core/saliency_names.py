"""The names of the saliency methods, for the command line, the widgets and ``learn.saliency`` (no torch)."""
from __future__ import annotations

#: How ``explain`` makes a map, the default first (see :mod:`napari_cellclass.learn.saliency`).
METHODS: tuple[str, ...] = ("gradcam", "integrated-gradients")
