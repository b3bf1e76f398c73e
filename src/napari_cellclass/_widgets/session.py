"""One Qt-free session per viewer: the open project and its label changes, shared by every dock.

The labelling dock sets the project; the other docks subscribe to :class:`CellclassSession`'s
signals instead of looking for each other, so a count, a class list or a page label never goes
stale. Tests drive a session without a viewer.
"""
from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal

from ..core.project import Project


class CellclassSession:
    """The state the docks of one viewer share.

    Signals
    -------
    project_changed(project)
        Another project (or ``None``) is open.
    labels_changed(ids)
        Labels of these image ids changed; an empty tuple means the class list changed.
    """

    project_changed = Signal(object)
    labels_changed = Signal(tuple)

    def __init__(self) -> None:
        self.project: Project | None = None

    def set_project(self, project: Project | None) -> None:
        """Make ``project`` the open project (its label changes are relayed)."""
        if project is self.project:
            return
        if self.project is not None:
            self.project.remove_listener(self._relay)
        self.project = project
        if project is not None:
            project.add_listener(self._relay)
        self.project_changed.emit(project)

    def _relay(self, ids: tuple[str, ...]) -> None:
        self.labels_changed.emit(tuple(ids))


_SESSIONS: weakref.WeakKeyDictionary[Any, CellclassSession] = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> CellclassSession:
    """The session of ``viewer`` (made on first use; it lives as long as the viewer)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = CellclassSession()
    return session
