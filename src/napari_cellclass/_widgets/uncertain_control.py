"""The "uncertain below" slider of the predictions dock: predictions less sure than it get grey borders and a filter."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FloatSlider, Label

from ..core.errors import CellclassError
from ..core.model_folder import read_model_config
from .session import CellclassSession


def calibrated_threshold(folder: Path | None) -> tuple[float, str]:
    """The confidence at which a model reached its target accuracy on validation, and a line saying so
    (``(0.0, why not)`` for a model without one)."""
    if folder is None:
        return 0.0, ""
    try:
        reach = (read_model_config(folder).get("calibration") or {}).get("at_target")
    except CellclassError:
        return 0.0, ""
    if not isinstance(reach, dict) or reach.get("threshold") is None:
        return 0.0, f"{folder.name}: no calibrated threshold (0 = nothing is uncertain)"
    return float(reach["threshold"]), (f"{folder.name} was {reach['accuracy']:.0%} accurate on "
                                       f"{reach['coverage']:.0%} of its validation images at confidence "
                                       f"≥ {reach['threshold']:.2f}")


class UncertainControl(Container):
    """Sets the session's minimum confidence; a new active model brings its calibrated threshold."""

    def __init__(self, session: CellclassSession) -> None:
        super().__init__(labels=False)
        self.session = session
        self.slider = FloatSlider(label="uncertain below", value=session.min_confidence, min=0.0, max=1.0, step=0.01,
                                  tooltip="predictions less sure than this get a grey border, a '?' in the gallery "
                                          "and the 'uncertain' filter; 0: none")
        self.note = Label(value="")
        self.note.native.setWordWrap(True)
        self.extend([Container(widgets=[self.slider], labels=True), self.note])
        self.slider.changed.connect(self._on_slider)
        session.model_changed.connect(self.use_model)
        self.use_model(session.model)

    def use_model(self, folder: Path | None) -> None:
        """Start from the model's calibrated threshold (kept when the model has none)."""
        value, text = calibrated_threshold(folder)
        if value > 0:
            self.slider.value = round(value, 2)
        self.note.value = text
        self._on_slider(self.slider.value)

    def _on_slider(self, value: float) -> None:
        self.session.set_min_confidence(float(value))

    def disconnect(self) -> None:
        """Stop following the session (the dock closed)."""
        self.session.model_changed.disconnect(self.use_model)
