"""One Qt-free session per viewer: the open project, its label changes and the active model.

Every dock of a viewer gets the same :class:`CellclassSession` from :func:`session_for` and
subscribes to its signals instead of looking for other docks, so a count, a class list, a page
label or the active model never goes stale. The labelling dock registers itself as the page
view, so other docks and the reader reach it without searching the window. Tests drive a
session without a viewer.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from psygnal import Signal

from ..core.predictions import Prediction, is_uncertain
from ..core.project import Project
from .labelling_model import FILTER_MISTAKES, FILTER_SUGGESTED, FILTER_UNCERTAIN


class PageView(Protocol):
    """What the labelling dock offers the other docks and the reader."""

    def show_images(self, image_ids: Sequence[str], title: str = "", select: str | None = None) -> None: ...

    def open_project(self, project: Project | str | Path) -> None: ...

    def shows_folder(self, folder: str | Path) -> bool: ...

    def raise_dock(self) -> None: ...

    def select_image(self, image_id: str) -> None: ...

    def shows_image(self, image_id: str) -> bool: ...

    def page_length(self) -> int: ...


class Gallery(Protocol):
    """What the gallery dock offers the other docks (F2 follows the gallery's order; a filter to show)."""

    def select_after(self, image_id: str) -> bool: ...

    def show_filter(self, name: str) -> None: ...


#: Where the selection was made.
CANVAS = "canvas"
GALLERY = "gallery"


class CellclassSession:
    """The state the docks of one viewer share.

    Signals
    -------
    project_changed(project)
        Another project (or ``None``) is open; the active model is reset.
    labels_changed(ids)
        Labels of these image ids changed; an empty tuple means the class list changed.
    model_changed(folder)
        Another model folder (or ``None``) is the active model.
    selection_changed(ids, source)
        The selected images changed, in the gallery (``"gallery"``) or on the canvas (``"canvas"``).
    predictions_changed()
        The predictions shown changed (:attr:`predictions`).
    marks_changed()
        The suggested images (:attr:`suggested`), the likely mistakes (:attr:`mistakes`) or the
        uncertain predictions (:attr:`uncertain`, below :attr:`min_confidence`) changed.
    """

    project_changed = Signal(object)
    labels_changed = Signal(tuple)
    model_changed = Signal(object)
    selection_changed = Signal(tuple, str)
    predictions_changed = Signal()
    marks_changed = Signal()

    def __init__(self) -> None:
        self.project: Project | None = None
        self.model: Path | None = None
        self.page_view: PageView | None = None
        self.gallery: Gallery | None = None
        self.selection: tuple[str, ...] = ()
        self.selection_source = CANVAS
        self.predictions: dict[str, Prediction] = {}
        self.suggested: dict[str, str] = {}  # image id -> reason, in suggestion order
        self.mistakes: dict[str, dict[str, Any]] = {}  # image id -> {"given", "suggested", "score"}, worst first
        self.min_confidence = 0.0  # predictions less sure than this are "uncertain" (0: none)
        self.uncertain: tuple[str, ...] = ()  # their image ids, least sure first
        self.uncertain_ids: frozenset[str] = frozenset()  # the same, for lookups

    # ------------------------------------------------------------------ project
    def set_project(self, project: Project | None) -> None:
        """Make ``project`` the open project (its label changes are relayed)."""
        if project is self.project:
            return
        if self.project is not None:
            self.project.remove_listener(self._relay)
        self.project = project
        self.model = None
        self.selection, self.selection_source = (), CANVAS
        self.predictions = {}
        self.suggested, self.mistakes, self.uncertain, self.uncertain_ids = {}, {}, (), frozenset()
        if project is not None:
            project.add_listener(self._relay)
        self.project_changed.emit(project)
        self.model_changed.emit(None)
        self.predictions_changed.emit()
        self.marks_changed.emit()

    def use_project(self, project: Project | str | os.PathLike) -> Project:
        """The open project when ``project`` names its folder, else open it and make it the open one."""
        if isinstance(project, Project):
            self.set_project(project)
            return project
        root = Path(project).expanduser().resolve()
        if self.project is None or self.project.root != root:
            self.set_project(Project.open(root))
        assert self.project is not None
        return self.project

    def _relay(self, ids: tuple[str, ...]) -> None:
        self.labels_changed.emit(tuple(ids))

    # ------------------------------------------------------------------ model
    def set_model(self, folder: str | os.PathLike | None) -> None:
        """Make a model folder (or nothing) the active model of the open project."""
        self.model = Path(folder) if folder is not None else None
        self.model_changed.emit(self.model)

    # ------------------------------------------------------------------ selection and predictions
    def select(self, ids: Sequence[str], source: str) -> None:
        """The user selected these images (in the gallery or on the canvas)."""
        ids = tuple(ids)
        if ids == self.selection and source == self.selection_source:
            return
        self.selection, self.selection_source = ids, source
        self.selection_changed.emit(ids, source)

    def set_predictions(self, predictions: Mapping[str, Prediction]) -> None:
        """The predictions every dock shows (the predictions dock sets them)."""
        self.predictions = dict(predictions)
        self._find_uncertain()
        self.predictions_changed.emit()

    def set_min_confidence(self, value: float) -> None:
        """Predictions less sure than ``value`` become uncertain (grey borders, the "uncertain" filter)."""
        if float(value) == self.min_confidence:
            return
        self.min_confidence = float(value)
        self._find_uncertain()

    def is_uncertain(self, prediction: Prediction) -> bool:
        """True when the prediction is less sure than :attr:`min_confidence`."""
        multi = self.project is not None and self.project.multi_label
        return self.min_confidence > 0 and is_uncertain(prediction, self.min_confidence, multi)

    def _find_uncertain(self) -> None:
        found = [p for p in self.predictions.values() if self.is_uncertain(p)]
        found.sort(key=lambda p: p.confidence)
        ids = tuple(p.image_id for p in found)
        if ids != self.uncertain:
            self.uncertain, self.uncertain_ids = ids, frozenset(ids)
            self.marks_changed.emit()

    def set_suggestions(self, items: Sequence[Mapping[str, Any]]) -> None:
        """The images suggested for labelling (``{"image_id", "score", "reason"}``, best first)."""
        self.suggested = {str(i["image_id"]): str(i.get("reason", "")) for i in items}
        self.marks_changed.emit()

    def set_mistakes(self, items: Sequence[Mapping[str, Any]]) -> None:
        """The likely labelling mistakes (``{"image_id", "given", "suggested", "score"}``, worst first)."""
        self.mistakes = {str(i["image_id"]): dict(i) for i in items}
        self.marks_changed.emit()

    def marked_lists(self) -> dict[str, tuple[str, ...]]:
        """The marked images by filter name ("suggested", "likely mistakes", "uncertain"), each in its own order."""
        return {FILTER_SUGGESTED: tuple(self.suggested), FILTER_MISTAKES: tuple(self.mistakes),
                FILTER_UNCERTAIN: self.uncertain}

    # ------------------------------------------------------------------ page view
    def register_page_view(self, view: PageView | None) -> None:
        """The labelling dock of this viewer (``None`` when it closes)."""
        self.page_view = view

    def register_gallery(self, gallery: Gallery | None) -> None:
        """The gallery dock of this viewer (``None`` when it closes)."""
        self.gallery = gallery

    def show_images(self, ids: Sequence[str], title: str, select: str | None = None) -> bool:
        """Show these images as the page of the labelling dock; False when there is none."""
        if self.page_view is None:
            return False
        self.page_view.show_images(ids, title, select)
        return True


_SESSIONS: weakref.WeakKeyDictionary[Any, CellclassSession] = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> CellclassSession:
    """The session of ``viewer`` (made on first use; it lives as long as the viewer)."""
    from .napari_private import real_viewer

    viewer = real_viewer(viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = CellclassSession()
    return session
