"""The model part of the Training dock: the active model, loading a model folder, saving a copy."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt

from ..core.errors import CellclassError
from .session import CellclassSession
from .training_model import check_model_folder, copy_model_folder


def fixed_lines(label: Label, lines: int) -> None:
    """Word-wrap a label in a fixed height of ``lines`` lines: new text never relayouts the dock."""
    native = label.native
    native.setWordWrap(True)
    native.setFixedHeight(native.fontMetrics().lineSpacing() * lines + 4)
    native.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)


class ModelPanel(Container):
    """Which model is active; load a model folder as the active model, or save a copy of it."""

    def __init__(self, shared: CellclassSession) -> None:
        super().__init__(labels=False)
        self.shared = shared
        self.active_label = Label(value="active model: none")
        fixed_lines(self.active_label, 2)
        self.model_folder = FileEdit(label="model folder", mode="d")
        self.load_model_button = PushButton(text="Load model")
        self.save_model_button = PushButton(text="Save model to folder")
        self.extend([self.active_label, Container(widgets=[self.model_folder], labels=True),
                     Container(widgets=[self.load_model_button, self.save_model_button], layout="horizontal",
                               labels=False)])
        self.margins = (0, 0, 0, 0)
        self.load_model_button.changed.connect(lambda _v: self._on_load_model())
        self.save_model_button.changed.connect(lambda _v: self._on_save_model())

    def show_active(self) -> None:
        model = self.shared.model
        self.active_label.value = f"active model: {model.name if model else 'none'}"
        self.active_label.tooltip = str(model) if model else ""

    def load_model(self, folder: str | Path) -> Path:
        """Make a model folder the active model of the project."""
        if self.shared.project is None:
            raise CellclassError("open a project first (Labelling widget or File > Open Folder)")
        path = check_model_folder(folder)
        self.shared.set_model(path)
        return path

    def save_model(self, dest: str | Path) -> Path:
        """Copy the active model folder to ``dest``."""
        model = self.shared.model if self.shared.project is not None else None
        if model is None:
            raise CellclassError("no active model: train one or load a model folder first")
        return copy_model_folder(model, dest)

    def _picked_folder(self, what: str) -> str:
        """The folder in the 'model folder' field; CellclassError asking for ``what`` when it is empty."""
        folder = self.model_folder.value
        if not folder or str(folder) in ("", "."):
            raise CellclassError(f"pick {what} in 'model folder' first")
        return folder

    def _on_load_model(self) -> None:
        try:
            show_info(f"active model: {self.load_model(self._picked_folder('a model folder'))}")
        except CellclassError as exc:
            show_error(f"cannot load the model: {exc}")

    def _on_save_model(self) -> None:
        try:
            show_info(f"model saved to {self.save_model(self._picked_folder('a destination folder'))}")
        except (CellclassError, OSError) as exc:
            show_error(f"cannot save the model: {exc}")
