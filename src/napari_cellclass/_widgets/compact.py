"""Dock sizes: every cellclass dock fits a 1920x1080 screen, alone, stacked or as tabs.

napari puts a dock's widget straight into its ``QDockWidget`` without a scroll area, so a dock's
minimum height is the sum of its rows, and the main window grows to hold every stacked dock (four
docks made it 2866 px tall). magicgui's ``Container(scrollable=True)`` does not help: napari docks
``container.native``, the widget *inside* magicgui's scroll area, and leaves the scroll area out.

:func:`compact_dock` moves a dock's rows into a vertical scroll area of its own: the dock asks for
little height (it scrolls when the dock area is short) and is as wide as its rows need, so nothing
is cut off; nested rows lose their extra margins. :func:`show_rows` keeps a table tall enough to be
useful.
"""
from __future__ import annotations

from typing import Any

from magicgui.widgets.bases import ContainerWidget
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QApplication, QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

#: Height (px) a dock's content asks for at least: four docks stacked in one dock area (each with
#: its title bar) fit the height left by a 1080-pixel screen's menu and status bars.
MIN_DOCK_HEIGHT = 160
#: Share of the screen's height a dock asks for at most when napari lays it out.
MAX_HINT_SHARE = 0.8

_EXPANDING = (QSizePolicy.Policy.Expanding, QSizePolicy.Policy.MinimumExpanding,
              QSizePolicy.Policy.Ignored)


class DockScrollArea(QScrollArea):
    """Scrolls a dock's rows vertically; as wide as the rows need, never taller than the screen."""

    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setObjectName("cellclassDockScroll")
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setWidget(content)

    def _bar(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        content = self.widget()
        width = content.minimumSizeHint().width() if content is not None else 0
        return QSize(width + self._bar(), min(MIN_DOCK_HEIGHT, self._content_height()))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        content = self.widget()
        hint = content.sizeHint() if content is not None else QSize(0, 0)
        screen = self.screen() or QApplication.primaryScreen()
        most = int(screen.availableGeometry().height() * MAX_HINT_SHARE) if screen else 800
        return QSize(hint.width() + self._bar(), max(MIN_DOCK_HEIGHT, min(hint.height(), most)))

    def _content_height(self) -> int:
        content = self.widget()
        return content.sizeHint().height() if content is not None else 0


def compact_dock(container: Any) -> DockScrollArea:
    """Move the rows of a dock (a magicgui ``Container``) into a vertical scroll area.

    Call it once the dock's rows are all added: the container keeps its widgets (and their
    ``reset_choices``), only their Qt parent changes. Rows that are containers themselves (a row
    of buttons, a form) lose their own margins, so rows line up and sit close together. A stretch
    below the rows keeps them at the top unless a row (a table) takes the spare height itself.
    Word-wrapped texts use the dock's width (magicgui gives labels a fixed width).
    """
    _no_nested_margins(container)
    outer = container.native
    for label in outer.findChildren(QLabel):
        if label.wordWrap():
            policy = label.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
            label.setSizePolicy(policy)
    layout = outer.layout()
    content = QWidget()
    content.setObjectName("cellclassDockContent")
    rows = QVBoxLayout(content)
    rows.setContentsMargins(layout.contentsMargins())
    rows.setSpacing(layout.spacing())
    expanding = False
    while layout.count():
        item = layout.takeAt(0)
        widget = item.widget()
        if widget is None:
            rows.addItem(item)
            continue
        rows.addWidget(widget)
        expanding = expanding or widget.sizePolicy().verticalPolicy() in _EXPANDING
    if not expanding:
        rows.addStretch(1)
    scroll = DockScrollArea(content)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(scroll)
    return scroll


def _no_nested_margins(container: Any) -> None:
    for child in container:
        if isinstance(child, ContainerWidget):
            child.margins = (0, 0, 0, 0)
            _no_nested_margins(child)


def show_rows(table: Any, rows: int) -> None:
    """A magicgui ``Table`` shows at least ``rows`` rows below its header and takes spare height."""
    qt = table.native
    height = (qt.horizontalHeader().sizeHint().height() + rows * qt.verticalHeader().defaultSectionSize()
              + qt.horizontalScrollBar().sizeHint().height() + 2 * qt.frameWidth())
    qt.setMinimumHeight(height)
    qt.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
