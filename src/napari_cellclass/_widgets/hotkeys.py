"""Labelling hotkeys: bound on the viewer while the dock lives, and working whatever has focus.

napari dispatches key presses through its keymaps only when the canvas has focus. When the layer
list has it, F2 would start napari's rename editor (and the next keys would rename a layer), and
F1 would do nothing. :class:`Hotkeys` therefore binds the keys on the viewer's keymap (the canvas
path, where layer keymaps keep their precedence) and also catches them with an application event
filter for every other widget of the same window, except where the user types text.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QTextEdit,
    QWidget,
)

from .napari_private import canvas_widget, main_window

#: Hotkeys (napari key names) and the actions they call.
HOTKEYS: dict[str, str] = {
    "F1": "label_selected",
    "F2": "label_and_next",
    "Control-Z": "undo",
    "F3": "previous_class",
    "F4": "next_class",
    "PageDown": "next_page",
    "PageUp": "previous_page",
}
HOTKEY_HELP = (
    "F1 label selected image(s) (multi-label: toggle) · F2 label and go to next · "
    "Ctrl+Z undo · F3/F4 previous/next class · PageUp/PageDown page"
)
_QT_NAMES = {"Control-": "Ctrl+", "PageDown": "PgDown", "PageUp": "PgUp"}


def qt_key_text(napari_key: str) -> str:
    """The portable Qt text of a napari key name (``Control-Z`` -> ``Ctrl+Z``)."""
    text = napari_key
    for old, new in _QT_NAMES.items():
        text = text.replace(old, new)
    return QKeySequence(text).toString()


def _types_text(widget: QObject) -> bool:
    """True for widgets where keys edit text (they keep Ctrl+Z and PageUp/PageDown)."""
    if isinstance(widget, QComboBox):
        return widget.isEditable()
    return isinstance(widget, (QLineEdit, QTextEdit, QPlainTextEdit, QAbstractSpinBox))


class _WindowKeys(QObject):
    """Application event filter: our keys pressed anywhere in the viewer's window but the canvas."""

    def __init__(self, owner: Hotkeys) -> None:
        super().__init__()
        self._owner = owner

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        etype = event.type()
        if etype not in (QEvent.Type.KeyPress, QEvent.Type.ShortcutOverride):
            return False
        if not isinstance(obj, QWidget) or obj.window() is not self._owner.window():
            return False
        action = self._owner.action_for(QKeySequence(event.keyCombination()).toString())
        if action is None or self._owner.is_canvas(obj):
            return False  # not ours, or napari's keymap handles it (layer keymaps first)
        if _types_text(obj) and not action[0].startswith("F"):
            return False  # Ctrl+Z and paging stay with the text field
        if etype == QEvent.Type.ShortcutOverride:
            event.accept()  # deliver it as a key press, never as another widget's shortcut
            return True
        action[1]()
        return True


class Hotkeys:
    """Bind ``HOTKEYS`` for ``target`` (an object with the action methods) on a viewer.

    ``bind()`` remembers what each key did before; ``unbind()`` restores it and removes the
    window-wide filter. Both may be called any number of times.
    """

    def __init__(self, viewer: Any, target: Any, keys: Mapping[str, str] = HOTKEYS) -> None:
        self.viewer = viewer
        self._target = target
        self._keys = dict(keys)
        self._by_qt = {qt_key_text(k): k for k in self._keys}
        self._bound: dict[str, tuple[Callable, Any]] = {}  # key -> (our func, previous binding)
        self._filter: _WindowKeys | None = None

    @property
    def bound(self) -> bool:
        return bool(self._bound)

    def bind(self) -> None:
        """Bind the keys on the viewer and catch them in the rest of its window."""
        if self._bound:
            return
        for key, method in self._keys.items():
            func = self._handler(method)
            self._bound[key] = (func, self.viewer.bind_key(key, func, overwrite=True))
        app = QApplication.instance()
        if app is not None and self._filter is None:
            self._filter = _WindowKeys(self)
            app.installEventFilter(self._filter)

    def unbind(self) -> None:
        """Remove our keys and restore whatever was bound before."""
        from napari.utils.key_bindings import coerce_keybinding

        for key, (func, previous) in list(self._bound.items()):
            if self.viewer.keymap.get(coerce_keybinding(key)) is func:
                self.viewer.bind_key(key, previous, overwrite=True)
            del self._bound[key]
        app = QApplication.instance()
        if app is not None and self._filter is not None:
            app.removeEventFilter(self._filter)
        self._filter = None

    def action_for(self, qt_text: str) -> tuple[str, Callable[[], None]] | None:
        """``(napari key name, callable)`` for a pressed key, when it is one of ours."""
        key = self._by_qt.get(qt_text)
        if key is None or key not in self._bound:
            return None
        return key, getattr(self._target, self._keys[key])

    def window(self) -> QWidget | None:
        return main_window(self.viewer)

    def is_canvas(self, widget: QWidget) -> bool:
        canvas = canvas_widget(self.viewer)
        return canvas is not None and (widget is canvas or canvas.isAncestorOf(widget))

    def _handler(self, method: str) -> Callable[[Any], None]:
        def handler(_viewer: Any) -> None:
            getattr(self._target, method)()

        handler.__name__ = f"cellclass_{method}"
        handler.__doc__ = f"napari-cellclass: {method.replace('_', ' ')}"
        return handler
