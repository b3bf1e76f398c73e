"""A project's one observer hook: callbacks told which image ids changed (an empty tuple: the classes did)."""
from __future__ import annotations

from collections.abc import Callable

#: ``callback(changed_ids)``; an empty tuple means the class list or the whole folder changed
ChangeCallback = Callable[[tuple[str, ...]], None]


class Listeners:
    """The callbacks to call after every change, in the order they were added.

    Core stays free of signal libraries; the napari side subscribes one session object here
    and re-emits the changes as its own signals.
    """

    def __init__(self) -> None:
        self._callbacks: list[ChangeCallback] = []

    def add(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def remove(self, callback: ChangeCallback) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def notify(self, ids: tuple[str, ...]) -> None:
        for callback in list(self._callbacks):
            callback(ids)
