"""The logic behind the labelling widget, free of napari and Qt (tested without a viewer).

- :class:`Pager` pages through a project's images under a filter (all, unlabelled, labelled,
  one class), Piximi's category filter.
- :class:`LabellingSession` holds the selected class, labels project images and *scripted*
  targets (arrays a script put in the viewer) and keeps one undo history for both.
- :func:`border_specs` turns an image's classes into border styles (human label or prediction).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..core.atomic import atomic_write_bytes
from ..core.errors import ClassNameError, ProjectError
from ..core.project import Project
from ..core.sidecars import sidecar_path, write_sidecar

BorderKind = Literal["label", "prediction"]

#: Filter choices besides one class name.
FILTER_ALL = "all images"
FILTER_UNLABELLED = "unlabelled"
FILTER_LABELLED = "labelled"
SPECIAL_FILTERS: tuple[str, ...] = (FILTER_ALL, FILTER_UNLABELLED, FILTER_LABELLED)
#: Filters of marked images, listed in their own order (suggestion order, most suspicious first).
FILTER_SUGGESTED = "suggested"
FILTER_MISTAKES = "likely mistakes"
FILTER_UNCERTAIN = "uncertain"
MARK_FILTERS: tuple[str, ...] = (FILTER_SUGGESTED, FILTER_MISTAKES, FILTER_UNCERTAIN)
#: The border of a prediction less sure than the minimum confidence: grey, whatever the class.
UNCERTAIN_COLOR = "#a0a0a0"

LABEL_THICKNESS = 10.0
PREDICTION_THICKNESS = 4.0
PREDICTION_OPACITY = 0.55


# ---------------------------------------------------------------------------- borders
@dataclass(frozen=True)
class BorderSpec:
    """One rectangle drawn around an image.

    Attributes
    ----------
    color : str
        ``#rrggbb`` class colour.
    thickness : float
        Line width in screen pixels.
    opacity : float
        0-1; predictions are drawn semi-transparent.
    kind : str
        ``"label"`` (a human label) or ``"prediction"``.
    """

    color: str
    thickness: float
    opacity: float = 1.0
    kind: BorderKind = "label"


def border_specs(classes: Sequence[str], color_of: Callable[[str], str],
                 kind: BorderKind = "label") -> list[BorderSpec]:
    """Border rectangles for an image with ``classes``, drawn in list order (last on top).

    One class gives one thick border. Several classes (multi-label) give nested bands: each
    rectangle is thinner than the one below, so every class colour stays visible. Predictions
    are thinner and semi-transparent so they never look like a human label.
    """
    if not classes:
        return []
    n = len(classes)
    if kind == "label":
        base = LABEL_THICKNESS if n == 1 else LABEL_THICKNESS + 2.0
        opacity = 1.0
    else:
        base, opacity = PREDICTION_THICKNESS, PREDICTION_OPACITY
    return [BorderSpec(color_of(name), max(1.5, base * (n - i) / n), opacity, kind)
            for i, name in enumerate(classes)]


def image_border_specs(labels: Sequence[str], prediction: Sequence[str],
                       color_of: Callable[[str], str], uncertain: bool = False) -> list[BorderSpec]:
    """The border of an image: its human labels, or else its predicted classes (grey when uncertain)."""
    if labels:
        return border_specs(labels, color_of, "label")
    if uncertain:
        return [BorderSpec(UNCERTAIN_COLOR, PREDICTION_THICKNESS, 1.0, "prediction")]
    return border_specs(prediction, color_of, "prediction")


def class_color(project: Project | None, name: str) -> str:
    """A class's colour: the project's, or a stable fallback for a class it does not know."""
    if project is not None and name in project.class_names:
        return project.class_color(name)
    return fallback_color(name)


def fallback_color(name: str) -> str:
    """A stable colour for a class the project does not know (e.g. in layer metadata)."""
    from ..core.classes import DEFAULT_PALETTE

    return DEFAULT_PALETTE[sum(name.encode("utf-8")) % len(DEFAULT_PALETTE)]


# ---------------------------------------------------------------------------- paging
class Pager:
    """Pages of image ids under a filter; the current page's ids stay fixed until it turns.

    Labelling under the "unlabelled" filter therefore never reshuffles the page the user is
    looking at; the next page starts after the last image of this one, in project order.
    """

    def __init__(self, project: Project, page_size: int = 16, image_filter: str = FILTER_ALL) -> None:
        self.project = project
        self.page_size = max(1, int(page_size))
        self.image_filter = image_filter
        self._page_ids: tuple[str, ...] = ()
        self.list_title = ""  # set while the page shows a chosen list (e.g. a confusion cell)
        self.marks: Mapping[str, Sequence[str]] = {}  # filters of marked images (suggested, ...), in their order
        self._order: dict[str, int] = {}
        self._order_of: Sequence[str] | None = None

    @property
    def page_ids(self) -> tuple[str, ...]:
        """The ids of the page shown (fixed until the page turns)."""
        return self._page_ids

    @page_ids.setter
    def page_ids(self, ids: tuple[str, ...]) -> None:
        self._page_ids = tuple(ids)
        self.list_title = ""

    def show_list(self, ids: tuple[str, ...], title: str) -> None:
        """Show a chosen list of images as the page; the next page continues in project order."""
        self.page_ids = ids
        self.list_title = title

    def page_text(self) -> str:
        """What the page label says: the page number, or the list being shown."""
        if self.list_title:
            return f"{self.list_title}: {len(self.page_ids)} images (next page: project order)"
        page, n_pages, n = self.page_info()
        return f"page {page} / {n_pages} ({n} images)"

    # ------------------------------------------------------------------ helpers
    def _position(self, image_id: str) -> int:
        """Place in the filter's order: a marked list's own order, else project order."""
        order = self.marks.get(self.image_filter, self.project.image_ids)
        if self._order_of is not order:
            self._order = {iid: i for i, iid in enumerate(order)}
            self._order_of = order
        return self._order.get(image_id, -1)

    def filtered_ids(self) -> list[str]:
        """Image ids that pass the filter, in project order (a marked list: in its own order)."""
        f = self.image_filter
        p = self.project
        if f == FILTER_ALL:
            return list(p.image_ids)
        if f in self.marks:
            return [i for i in self.marks[f] if i in p]
        if f == FILTER_UNLABELLED:
            return p.unlabelled_ids()
        if f == FILTER_LABELLED:
            return p.labelled_ids()
        if f in p.class_names:
            return p.ids_with_class(f)
        raise ClassNameError(f"cannot filter by {f!r}: no such class; classes are {list(p.class_names)}")

    # ------------------------------------------------------------------ turning
    def set_filter(self, image_filter: str) -> tuple[str, ...]:
        """Change the filter and go to its first page."""
        old = self.image_filter
        self.image_filter = image_filter
        try:
            return self.first_page()
        except ClassNameError:
            self.image_filter = old
            raise

    def set_page_size(self, size: int) -> tuple[str, ...]:
        """Change the page size, keeping the first image of the page in view."""
        self.page_size = max(1, int(size))
        ids = self.filtered_ids()
        start = self._start_index(ids)
        self.page_ids = tuple(ids[start:start + self.page_size])
        return self.page_ids

    def first_page(self) -> tuple[str, ...]:
        self.page_ids = tuple(self.filtered_ids()[: self.page_size])
        return self.page_ids

    def page_of(self, image_id: str) -> tuple[str, ...]:
        """Go to the page holding ``image_id`` (under the current filter)."""
        ids = self.filtered_ids()
        if image_id not in ids:
            return self.page_ids
        k = ids.index(image_id) // self.page_size * self.page_size
        self.page_ids = tuple(ids[k:k + self.page_size])
        return self.page_ids

    def peek_next(self) -> tuple[str, ...]:
        """The ids the next page would show (empty at the end); the page does not turn."""
        ids = self.filtered_ids()
        if not self.page_ids:
            return tuple(ids[: self.page_size])
        last = self._position(self.page_ids[-1])
        after = [i for i in ids if self._position(i) > last]
        return tuple(after[: self.page_size])

    def next_page(self) -> tuple[str, ...] | None:
        """Turn to the next page; None (page unchanged) when this is the last one."""
        page = self.peek_next()
        if not page:
            return None
        self.page_ids = page
        return page

    def previous_page(self) -> tuple[str, ...] | None:
        """Turn to the previous page; None (page unchanged) when this is the first one."""
        if not self.page_ids:
            return None
        ids = self.filtered_ids()
        first = self._position(self.page_ids[0])
        before = [i for i in ids if self._position(i) < first]
        if not before:
            return None
        self.page_ids = tuple(before[-self.page_size:])
        return self.page_ids

    def _start_index(self, ids: list[str]) -> int:
        if not self.page_ids:
            return 0
        first = self._position(self.page_ids[0])
        for k, i in enumerate(ids):
            if self._position(i) >= first:
                return k
        return max(0, len(ids) - self.page_size)

    def page_info(self) -> tuple[int, int, int]:
        """``(page number from 1, number of pages, images under the filter)``."""
        ids = self.filtered_ids()
        n_pages = max(1, -(-len(ids) // self.page_size))
        page = min(n_pages, int(self._start_index(ids) / self.page_size + 0.5) + 1)  # nearest page
        return page, n_pages, len(ids)

    def next_image(self, image_id: str) -> tuple[str | None, bool]:
        """The image after ``image_id`` and whether reaching it needs a page turn.

        Returns ``(None, False)`` at the very end.
        """
        if image_id in self.page_ids:
            k = self.page_ids.index(image_id)
            if k + 1 < len(self.page_ids):
                return self.page_ids[k + 1], False
        pos = self._position(image_id)
        last = self._position(self.page_ids[-1]) if self.page_ids else -1
        anchor = max(pos, last)
        for i in self.filtered_ids():
            if self._position(i) > anchor:
                return i, True
        return None, False


# ---------------------------------------------------------------------------- labelling
class ScriptedTarget(Protocol):
    """Something a script put in the viewer (not a project image) that can carry labels."""

    def get_labels(self) -> tuple[str, ...]: ...

    def set_labels(self, classes: tuple[str, ...]) -> None: ...

    @property
    def source_path(self) -> Path | None: ...


@dataclass(frozen=True)
class _ScriptedUndo:
    before: tuple[tuple[ScriptedTarget, tuple[str, ...], bytes | None], ...]


@dataclass(frozen=True)
class _ProjectUndo:
    pass


@dataclass
class LabellingSession:
    """The selected class and labelling actions with one undo history.

    Project images are labelled through :class:`~napari_cellclass.core.project.Project`
    (sidecar written at once, undo restores the exact bytes). Scripted targets keep their
    classes themselves (the widget stores them in ``layer.metadata``) and get a sidecar beside
    their source file when they have one.
    """

    project: Project
    selected_class: str | None = None
    _history: list[_ScriptedUndo | _ProjectUndo] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ensure_selection()

    # ------------------------------------------------------------------ classes
    def ensure_selection(self) -> None:
        """Keep the selected class valid after classes change."""
        names = self.project.class_names
        if self.selected_class not in names:
            self.selected_class = names[0] if names else None

    def select_class(self, name: str) -> None:
        if name not in self.project.class_names:
            raise ClassNameError(f"no class named {name!r}; classes are {list(self.project.class_names)}")
        self.selected_class = name

    def cycle_class(self, step: int) -> str | None:
        """Select the next (``step=1``) or previous (``-1``) class, wrapping around."""
        names = self.project.class_names
        if not names:
            self.selected_class = None
            return None
        k = names.index(self.selected_class) if self.selected_class in names else -step
        self.selected_class = names[(k + step) % len(names)]
        return self.selected_class

    def _require_class(self) -> str:
        self.ensure_selection()
        if self.selected_class is None:
            raise ClassNameError("the project has no classes yet; add one in the Classes panel")
        return self.selected_class

    # ------------------------------------------------------------------ labelling
    def label(self, image_ids: Sequence[str], targets: Sequence[ScriptedTarget] = ()) -> list[str]:
        """F1: give the selected class to images (multi-label projects toggle it).

        Returns the project ids whose labels changed.
        """
        name = self._require_class()
        changed: list[str] = []
        if image_ids:
            if self.project.multi_label:
                changed = self.project.toggle(list(image_ids), name)
            else:
                changed = self.project.assign(list(image_ids), name)
            if changed:
                self._history.append(_ProjectUndo())
        if targets:
            self._label_targets(targets, name)
        return changed

    def clear(self, image_ids: Sequence[str], targets: Sequence[ScriptedTarget] = ()) -> list[str]:
        """Remove every label of the given images."""
        changed = self.project.clear(list(image_ids)) if image_ids else []
        if changed:
            self._history.append(_ProjectUndo())
        if targets:
            self._set_targets({t: () for t in targets})
        return changed

    def _label_targets(self, targets: Sequence[ScriptedTarget], name: str) -> None:
        multi = self.project.multi_label
        add = any(name not in t.get_labels() for t in targets)
        new: dict[ScriptedTarget, tuple[str, ...]] = {}
        order = {n: k for k, n in enumerate(self.project.class_names)}
        for t in targets:
            cur = t.get_labels()
            if not multi:
                new[t] = (name,)
            elif add:
                new[t] = tuple(sorted(set(cur) | {name}, key=lambda c: order.get(c, len(order))))
            else:
                new[t] = tuple(c for c in cur if c != name)
        self._set_targets(new)

    def _set_targets(self, new: dict[ScriptedTarget, tuple[str, ...]]) -> None:
        real = {t: c for t, c in new.items() if t.get_labels() != c}
        if not real:
            return
        before = []
        for t in real:
            sc = sidecar_path(t.source_path) if t.source_path is not None else None
            old = None
            if sc is not None and sc.exists():
                try:
                    old = sc.read_bytes()
                except OSError:
                    old = None
            before.append((t, t.get_labels(), old))
        for t, classes in real.items():
            _write_target_sidecar(t, classes, fsync=self.project.fsync)
            t.set_labels(classes)
        self._history.append(_ScriptedUndo(tuple(before)))

    @property
    def can_undo(self) -> bool:
        return bool(self._history) or self.project.can_undo

    def undo(self) -> list[str]:
        """Ctrl+Z: undo the last labelling action (project or scripted). Returns changed ids."""
        while self._history:
            entry = self._history.pop()
            if isinstance(entry, _ScriptedUndo):
                for t, classes, raw in entry.before:
                    _restore_target_sidecar(t, raw, fsync=self.project.fsync)
                    t.set_labels(classes)
                return []
            changed = self.project.undo()
            if changed:
                return changed
            # the project's history was cleared (class renamed or removed): try older steps
        return self.project.undo()  # labels changed through the project by a script


def _write_target_sidecar(target: ScriptedTarget, classes: tuple[str, ...], fsync: bool = True) -> None:
    """Write (or delete, for no classes) the sidecar beside a scripted target's source file."""
    src = target.source_path
    if src is None:
        return
    if classes:
        write_sidecar(sidecar_path(src), src.name, classes, fsync=fsync)
    else:
        _remove(sidecar_path(src))


def _restore_target_sidecar(target: ScriptedTarget, raw: bytes | None, fsync: bool = True) -> None:
    """Put back the exact sidecar bytes a target had (``None``: it had no sidecar)."""
    src = target.source_path
    if src is None:
        return
    if raw is not None:
        atomic_write_bytes(sidecar_path(src), raw, fsync=fsync)
    else:
        _remove(sidecar_path(src))


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ProjectError(f"cannot remove {path}: {exc.strerror}; make the folder writable") from None
