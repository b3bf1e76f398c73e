"""The names of the suggestion strategies, for the command line, the widgets and ``learn.suggest`` (no torch)."""
from __future__ import annotations

#: How ``suggest`` chooses the images to label next (see :mod:`napari_cellclass.learn.suggest`).
STRATEGIES: tuple[str, ...] = ("auto", "typical", "margin", "entropy", "random")
#: ``auto`` switches from typical to margin once every class has this many labels (and a model exists).
AUTO_MIN_PER_CLASS = 3
