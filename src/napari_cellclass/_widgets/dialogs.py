"""Small Qt helpers the docks share: dialogs (injected as callables so tests answer them), raising a dock."""
from __future__ import annotations

from typing import Any


def ask_yes_no(parent: Any, question: str) -> bool:
    """Ask a yes/no question in a modal message box; True for yes."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(parent, "napari-cellclass", question)
    return answer == QMessageBox.StandardButton.Yes


def ask_color(parent: Any, current: str) -> str | None:
    """A colour dialog starting at ``current``; the chosen ``#rrggbb`` or None when cancelled."""
    from qtpy.QtGui import QColor
    from qtpy.QtWidgets import QColorDialog

    color = QColorDialog.getColor(QColor(current), parent, "Class colour")
    return color.name() if color.isValid() else None


def raise_dock(widget: Any) -> None:
    """Show the dock (and its tab) that holds ``widget`` in front."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is not None:
        dock.show()
        dock.raise_()
