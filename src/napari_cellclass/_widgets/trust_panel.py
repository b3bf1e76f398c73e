"""The metrics dock's trust part: calibration, the confidence reaching a target accuracy, the reliability diagram."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, Label
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel

from ..learn.calibration import TARGET_ACCURACY, describe
from ..learn.evaluate import Evaluation
from ..learn.figures import figure_rgba, trust_figure

#: Size (inches at 100 dpi) of the figure in the dock: fits the dock's width.
FIGURE_SIZE = (5.0, 2.3)


class TrustPanel(Container):
    """What an evaluation says about trusting the model's confidence (single-label models)."""

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.target = FloatSpinBox(label="target accuracy", value=TARGET_ACCURACY, min=0.5, max=1.0, step=0.01,
                                   tooltip="the accuracy the confidence threshold below must reach")
        self.text = Label(value="")
        self.text.native.setWordWrap(True)
        self.extend([Container(widgets=[self.target], labels=True), self.text])
        self.picture = QLabel()
        self.native.layout().addWidget(self.picture)
        self.evaluation: Evaluation | None = None
        self.report: dict[str, Any] = {}
        self.pixels: np.ndarray | None = None  # the drawn figure (RGBA), for tests and screenshots
        self.target.changed.connect(lambda _v: self.show(self.evaluation))

    def show(self, ev: Evaluation | None) -> None:
        """Describe and draw an evaluation (``None``: clear)."""
        self.evaluation = ev
        if ev is None or ev.probabilities is None or not len(ev.ids):
            self.report, self.pixels, self.text.value = {}, None, ""
            self.picture.clear()
            return
        ev = dataclasses.replace(ev, target_accuracy=float(self.target.value))
        self.report = ev.trust()
        self.text.value = "\n".join(describe(self.report))
        fig = trust_figure(ev.reliability(), ev.coverage(), self.report, size=FIGURE_SIZE)
        self.pixels = figure_rgba(fig)
        h, w = self.pixels.shape[:2]
        image = QImage(self.pixels.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        self.picture.setPixmap(QPixmap.fromImage(image))
