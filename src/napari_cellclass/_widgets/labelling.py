"""The labelling dock widget: a project's images as layers in a grid, classes, hotkeys, borders.

The widget is thin: paging and filtering live in :class:`~.labelling_model.Pager`, labelling and
undo in :class:`~.labelling_model.LabellingSession`, labels and sidecars in
:class:`~napari_cellclass.core.project.Project`. The widget turns them into layers, borders and
notifications.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer

from ..core.errors import CellclassError, ImageReadError
from ..core.images import ImageData
from ..core.project import Project
from .borders import apply_border, prepare_border
from .compact import compact_dock
from .dialogs import ask_color, ask_yes_no
from .hotkeys import HOTKEY_HELP, HOTKEYS, Hotkeys  # noqa: F401 - HOTKEYS re-exported
from .labelling_model import (
    SPECIAL_FILTERS,
    LabellingSession,
    Pager,
    fallback_color,
    image_border_specs,
)
from .layers import (
    BLEND,
    COMPOSITE,
    METADATA_KEY,
    PAGE_SIZE,
    layer_data_from_image,
    layer_metadata,
    natural_layer_count,
)
from .napari_private import real_viewer
from .session import session_for

if TYPE_CHECKING:
    import napari

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

GRID_SPACING = 0.06
#: ``layer.metadata["cellclass"]`` key: the project image a scripted layer was saved as.
SAVED_AS_KEY = "saved_as"


def _reports_errors(method: F) -> F:
    """Show project and file errors as napari notifications instead of raising."""

    @functools.wraps(method)
    def wrapper(self: LabellingWidget, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except CellclassError as exc:
            show_error(str(exc))
        except OSError as exc:
            show_error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        except Exception as exc:  # noqa: BLE001 - a notification, never a raw traceback in the viewer
            log.exception("napari-cellclass: %s failed", method.__name__)
            text = " ".join(str(exc).split())
            show_error(f"napari-cellclass: unexpected {type(exc).__name__}{': ' + text if text else ''} "
                       "(nothing was lost; details in the log, please report it)")
        return None

    return wrapper  # type: ignore[return-value]


class _quiet:
    """Block a few magicgui widgets' ``changed`` signals while setting values."""

    def __init__(self, *widgets: Any) -> None:
        self._widgets = widgets

    def __enter__(self) -> None:
        for w in self._widgets:
            w.changed.block()

    def __exit__(self, *exc: object) -> None:
        for w in self._widgets:
            w.changed.unblock()


@dataclass
class _Shown:
    """The layers showing one image of the page."""

    key: str | int  # display mode the layers were made with
    layers: list[Layer]
    natural: int  # layers the image makes as a composite


class _LayerTarget:
    """A layer a script added (not a project image), labelled through ``layer.metadata``."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer

    def get_labels(self) -> tuple[str, ...]:
        meta = self.layer.metadata.get(METADATA_KEY) or {}
        return tuple(meta.get("labels", ()))

    def set_labels(self, classes: tuple[str, ...]) -> None:
        meta = dict(self.layer.metadata.get(METADATA_KEY) or {})
        meta["labels"] = list(classes)
        self.layer.metadata[METADATA_KEY] = meta

    @property
    def source_path(self) -> Path | None:
        path = self.layer.source.path
        return Path(path) if path else None

    def __hash__(self) -> int:
        return id(self.layer)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _LayerTarget) and other.layer is self.layer


class _LifetimeFilter(QObject):
    """Binds the hotkeys while the widget is docked; unbinds when it is closed or undocked."""

    def __init__(self, widget: LabellingWidget) -> None:
        super().__init__()
        self._widget = widget

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        etype = event.type()
        if etype == QEvent.Type.Close:
            self._widget.unbind_hotkeys()
        elif etype == QEvent.Type.ParentChange:
            if obj.parent() is None:
                self._widget.unbind_hotkeys()
            else:
                self._widget.bind_hotkeys()
        return False


def _recycle(layers: list[Layer], data: Any, kwargs: dict[str, Any]) -> None:
    """Show new image data in existing layers (one per channel for a composite)."""
    names = kwargs["name"] if isinstance(kwargs["name"], list) else [kwargs["name"]]
    metas = kwargs["metadata"] if isinstance(kwargs["metadata"], list) else [kwargs["metadata"]]
    limits = kwargs.get("contrast_limits")
    for k, layer in enumerate(layers):
        layer.data = data[k] if kwargs.get("channel_axis") is not None else data
        if limits is not None:
            layer.contrast_limits = limits[k] if isinstance(limits[0], list) else limits
        layer.metadata = dict(metas[min(k, len(metas) - 1)])
        layer.name = names[min(k, len(names) - 1)]


def _page_layout(natural: dict[str, int], mode: str | int) -> tuple[dict[str, str | int], int]:
    """How each image of a page is drawn (its layer key) and the grid stride.

    One grid cell per image: the channel layers of a composite share a cell (grid stride); a
    page mixing channel counts shows multi-channel images blended into one RGB layer.
    """
    counts = set(natural.values())
    if mode == BLEND or (mode == COMPOSITE and len(counts) > 1):
        return {i: (BLEND if natural[i] > 1 else COMPOSITE) for i in natural}, 1
    if mode != COMPOSITE:
        return {i: mode for i in natural}, 1
    if not counts:
        return {}, 1
    return {i: COMPOSITE for i in natural}, counts.pop()


def _bring_to_front(layers: Any, order: Sequence[Layer]) -> None:
    """Put ``order`` at the start of the layer list, in that order; other layers follow.

    One move per misplaced layer, each from a valid index (napari's ``move_multiple`` needs
    ascending source indices, which a recycled page does not have).
    """
    if list(layers)[: len(order)] == list(order):
        return
    with layers.events.reordered.blocker():
        for k, layer in enumerate(order):
            src = layers.index(layer)
            if src != k:
                layers.move(src, k)
    layers.events.reordered(value=layers)


class LabellingWidget(Container):
    """Label a project's images with hotkeys; each image's class is a coloured border.

    Parameters
    ----------
    viewer
        The napari viewer (injected by napari when opened from the Plugins menu).
    project
        A project or folder to open now (else: the folder field, or layers opened with the
        napari-cellclass reader are picked up).
    confirm
        ``confirm(question) -> bool`` asked before destructive actions (a Qt dialog by default).
    pick_color
        ``pick_color(current) -> '#rrggbb' | None`` for recolouring (a Qt dialog by default).
    """

    def __init__(self, viewer: napari.viewer.Viewer, project: Project | str | Path | None = None, *,
                 confirm: Callable[[str], bool] | None = None,
                 pick_color: Callable[[str], str | None] | None = None) -> None:
        super().__init__(labels=False)
        self.viewer = real_viewer(viewer)
        self.shared = session_for(self.viewer)
        self.project: Project | None = None
        self.pager: Pager | None = None
        self.session: LabellingSession | None = None
        self.confirm: Callable[[str], bool] = confirm or (lambda q: ask_yes_no(self.native, q))
        self.pick_color: Callable[[str], str | None] = pick_color or (
            lambda c: ask_color(self.native, c))
        self._shown: dict[str, _Shown] = {}
        self._rendering = False
        self._reload = False
        self._grid_shape: tuple[int, int] | None = None
        self._offered: set[int] = set()  # scripted layers told that their labels are not saved
        self._adopt_scheduled = False
        self._hotkeys = Hotkeys(self.viewer, self)
        self._max_channels = 1
        self._build()
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        self.shared.register_page_view(self)
        self.shared.labels_changed.connect(self._on_project_changed)
        self.shared.project_changed.connect(self._on_session_project)
        self._lifetime = _LifetimeFilter(self)
        self.native.installEventFilter(self._lifetime)
        self.bind_hotkeys()
        if project is not None:
            self.open_project(project)
        elif self.shared.project is not None:  # another dock opened one first
            self._on_session_project(self.shared.project)
        else:
            self._adopt_layers()
        self._refresh_panel()

    # ================================================================== building
    def _build(self) -> None:
        self.folder = FileEdit(mode="d", label="Project folder")
        self.open_button = PushButton(text="Open folder")
        self.multi_label = CheckBox(text="multi-label (an image may have several classes)")
        self.summary = Label(value="No project open: pick a folder or use File > Open Folder")
        self.class_choice = ComboBox(label="Class (F3/F4)", choices=self._class_choices)
        self.counts = Label(value="")
        self.class_name = LineEdit(label="Name", value="")
        self.add_button = PushButton(text="Add class")
        self.rename_button = PushButton(text="Rename to name")
        self.color_button = PushButton(text="Colour…")
        self.remove_button = PushButton(text="Remove class")
        self.image_filter = ComboBox(label="Show", choices=self._filter_choices)
        self.page_size = SpinBox(label="Page size", value=PAGE_SIZE, min=1, max=100)
        self.channels = ComboBox(label="Channels", choices=self._channel_choices)
        self.prev_button = PushButton(text="◀ Previous page")
        self.page_label = Label(value="")
        self.next_button = PushButton(text="Next page ▶")
        self.label_button = PushButton(text="Label (F1)")
        self.label_next_button = PushButton(text="Label + next (F2)")
        self.undo_button = PushButton(text="Undo (Ctrl+Z)")
        self.clear_button = PushButton(text="Clear labels")
        self.help = Label(value=HOTKEY_HELP)
        self.help.native.setWordWrap(True)
        self.counts.native.setWordWrap(True)

        def row(*widgets: Any) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        def form(*widgets: Any) -> Container:
            return Container(widgets=list(widgets), labels=True)

        self.extend([
            form(self.folder), row(self.open_button, self.multi_label), self.summary,
            form(self.class_choice), self.counts,
            form(self.class_name),
            row(self.add_button, self.rename_button, self.color_button, self.remove_button),
            form(self.image_filter, self.page_size, self.channels),
            row(self.prev_button, self.page_label, self.next_button),
            row(self.label_button, self.label_next_button, self.undo_button, self.clear_button),
            self.help,
        ])
        compact_dock(self)  # rows scroll in a short dock; the window never outgrows the screen
        self.open_button.changed.connect(self._on_open_clicked)
        self.multi_label.changed.connect(self._on_multi_label)
        self.class_choice.changed.connect(self._on_class_choice)
        self.add_button.changed.connect(self._on_add_class)
        self.rename_button.changed.connect(self._on_rename_class)
        self.color_button.changed.connect(self._on_recolor_class)
        self.remove_button.changed.connect(self._on_remove_class)
        self.image_filter.changed.connect(self._on_filter)
        self.page_size.changed.connect(self._on_page_size)
        self.channels.changed.connect(self._on_channels)
        self.prev_button.changed.connect(self.previous_page)
        self.next_button.changed.connect(self.next_page)
        self.label_button.changed.connect(self.label_selected)
        self.label_next_button.changed.connect(self.label_and_next)
        self.undo_button.changed.connect(self.undo)
        self.clear_button.changed.connect(self.clear_selected)

    def _class_choices(self, _widget: Any = None) -> list[str]:
        return list(self.project.class_names) if self.project is not None else []

    def _filter_choices(self, _widget: Any = None) -> list[str]:
        return list(SPECIAL_FILTERS) + self._class_choices()

    def _channel_choices(self, _widget: Any = None) -> list[str]:
        return [COMPOSITE, BLEND] + [f"channel {k + 1}" for k in range(self._max_channels if self._max_channels > 1 else 0)]

    # ================================================================== hotkeys
    def bind_hotkeys(self) -> None:
        """Bind the hotkeys (remembering what they replace); they work wherever focus is."""
        self._hotkeys.bind()

    def unbind_hotkeys(self) -> None:
        """Remove our hotkeys and restore whatever was bound before."""
        self._hotkeys.unbind()

    def close(self) -> None:
        """Unbind the hotkeys and stop listening to the viewer and the project."""
        self.unbind_hotkeys()
        self.viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self.shared.labels_changed.disconnect(self._on_project_changed)
        self.shared.project_changed.disconnect(self._on_session_project)
        if self.shared.page_view is self:
            self.shared.register_page_view(None)
        super().close()

    # ================================================================== project
    @_reports_errors
    def _on_open_clicked(self) -> None:
        folder = self.folder.value
        if not folder or not Path(folder).is_dir():
            show_warning("pick the project folder first")
            return
        self.open_project(folder)

    def open_project(self, project: Project | str | Path) -> None:
        """Open a project (or folder) and show its first page.

        Opening the folder that is already open lists it again (new or changed files show)
        and redraws the page, keeping the undo history.
        """
        if not isinstance(project, Project):
            if self.shows_folder(project):
                assert self.project is not None and self.pager is not None
                self.project.rescan()
                self._render_page(reload=True)
                return
            root = Path(project).expanduser().resolve()
            shared = self.shared.project
            project = shared if shared is not None and shared.root == root else Project.open(root)
        self._set_project(project)
        self._render_page()

    def shows_folder(self, folder: str | Path) -> bool:
        """True when ``folder`` is the project this widget has open."""
        root = Path(folder).expanduser()
        return self.project is not None and root.is_dir() and root.resolve() == self.project.root

    def raise_dock(self) -> None:
        """Show this widget's dock (and its tab) in front."""
        from qtpy.QtWidgets import QDockWidget

        dock = self.native.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is not None:
            dock.show()
            dock.raise_()

    @_reports_errors
    def _on_session_project(self, project: Project | None) -> None:
        """Another dock opened a project: show it here too."""
        if project is not None and project is not self.project:
            self._set_project(project)
            self._render_page()

    def _set_project(self, project: Project) -> None:
        if self.project is not None:
            self._remove_page_layers(list(self._shown))
        self.project = project
        self.pager = Pager(project, int(self.page_size.value))
        self.session = LabellingSession(project)
        self.shared.set_project(project)
        with _quiet(self.folder, self.multi_label):
            self.folder.value = project.root
            self.multi_label.value = project.multi_label
        self._refresh_choices()
        self._refresh_panel()
        for problem in project.problems:
            show_warning(problem)

    # ================================================================== adopting reader layers
    def _project_meta(self, layer: Layer) -> dict[str, Any] | None:
        meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
        if isinstance(meta, dict) and meta.get("project") and meta.get("image_id"):
            return meta
        return None

    def _on_layer_inserted(self, event: Any) -> None:
        if self._rendering:
            return
        layer = event.value
        if self._project_meta(layer) is not None:
            if not self._adopt_scheduled:
                self._adopt_scheduled = True
                QTimer.singleShot(0, self._adopt_layers)
        elif isinstance(layer, Image):
            self._draw_scripted(layer)
        self._fit_grid()

    def _on_layer_removed(self, event: Any) -> None:
        if self._rendering:
            return
        layer = event.value
        for iid, shown in list(self._shown.items()):
            if layer in shown.layers:
                shown.layers.remove(layer)
                if not shown.layers:
                    del self._shown[iid]
        self._fit_grid()

    def _fit_grid(self, force: bool = False) -> None:
        """Fit the grid in the canvas again when its shape changed (a layer came or went)."""
        if self.project is None:
            return
        grid = self.viewer.canvas.grid
        shape = grid.actual_shape(list(self.viewer.layers)) if grid.enabled else None
        if force or shape != self._grid_shape:
            self._grid_shape = shape
            if shape is not None:
                self.viewer.reset_view()
                # once more when Qt has laid the window out (a new dock shrinks the canvas)
                QTimer.singleShot(0, self._reset_view_later)

    def _reset_view_later(self) -> None:
        if self.project is not None and self.viewer.canvas.grid.enabled:
            self.viewer.reset_view()

    @_reports_errors
    def _adopt_layers(self) -> None:
        """Take over layers a napari-cellclass reader added (e.g. ``viewer.open(folder)``)."""
        self._adopt_scheduled = False
        foreign: dict[str, list[Layer]] = {}
        root: str | None = None
        for layer in self.viewer.layers:
            meta = self._project_meta(layer)
            if meta is None or any(layer in s.layers for s in self._shown.values()):
                continue
            root = meta["project"]
            foreign.setdefault(meta["image_id"], []).append(layer)
        if root is None:
            for layer in self.viewer.layers:
                if isinstance(layer, Image) and self._project_meta(layer) is None:
                    self._draw_scripted(layer)
            return
        if self.project is None or str(self.project.root) != root:
            self._set_project(Project.open(root))
        assert self.project is not None
        for iid, layers in foreign.items():
            if iid in self._shown or iid not in self.project.image_ids:
                self._remove_layers(layers)  # a duplicate of an image already shown
            else:
                self._shown[iid] = _Shown(COMPOSITE, layers, len(layers))
        self._render_page()

    # ================================================================== pages
    def _display_mode(self) -> str | int:
        value = self.channels.value or COMPOSITE
        if value in (COMPOSITE, BLEND):
            return value
        return int(str(value).split()[-1]) - 1

    @_reports_errors
    def next_page(self) -> None:
        if self.pager is None:
            return
        if self.pager.next_page() is None:
            show_info("this is the last page")
            return
        self._render_page()

    @_reports_errors
    def previous_page(self) -> None:
        if self.pager is None:
            return
        if self.pager.previous_page() is None:
            show_info("this is the first page")
            return
        self._render_page()

    def _render_page(self, select: str | None = None, reload: bool = False) -> None:
        """Show the pager's page: reuse layers already shown, read the others.

        All or nothing: when recycling fails half-way, every page layer is removed and the page
        is drawn again with new layers, so a cell never shows channels of two images.
        """
        if reload:  # read every image of the page again (their layers are reused)
            self._reload = True
        try:
            self._draw_page(select, recycle=True)
        except Exception:  # noqa: BLE001 - retried from scratch below; a second failure is reported
            log.warning("napari-cellclass: page redraw failed; drawing it afresh", exc_info=True)
            self._remove_page_layers(list(self._shown))
            self._draw_page(select, recycle=False)

    def _draw_page(self, select: str | None, recycle: bool) -> None:
        assert self.project is not None and self.pager is not None
        ids = self.pager.page_ids or self.pager.first_page()
        mode = self._display_mode()
        images: dict[str, ImageData] = {}
        natural: dict[str, int] = {}
        reload, self._reload = self._reload, False
        for iid in ids:
            shown = self._shown.get(iid)
            if shown is not None and not reload:  # already shown: its channel count is known
                natural[iid] = shown.natural
                continue
            try:
                img = self.project.read_image(iid)
            except ImageReadError as exc:
                show_warning(f"skipped on this page: {exc}")
                continue
            images[iid] = img
            natural[iid] = natural_layer_count(img)
            self._max_channels = max(self._max_channels, img.n_channels)
        key_of, stride = _page_layout(natural, mode)
        self._rendering = True
        grid = self.viewer.canvas.grid
        try:
            # layers of images leaving the page are recycled (new data, name, metadata) for
            # images arriving: adding and removing layers is what makes napari slow
            stale = [i for i in self._shown if i not in key_of or self._shown[i].key != key_of[i]
                     or i in images]
            pool = [self._shown.pop(i) for i in stale]
            if not recycle:
                for shown in pool:
                    self._remove_layers(shown.layers)
                pool = []
            try:
                self._fill_page(ids, key_of, natural, images, pool)
            except BaseException:
                for shown in pool:  # half-recycled layers: nobody owns them any more
                    self._remove_layers(shown.layers)
                raise
            order = [lyr for i in ids if i in self._shown for lyr in self._shown[i].layers]
            _bring_to_front(self.viewer.layers, order)
            grid.stride = stride
            grid.shape = (-1, -1)
            grid.spacing = GRID_SPACING
            grid.enabled = True
            self._fit_grid()  # the grid has another shape: fit it in the canvas
        finally:
            self._rendering = False
        for iid in self._shown:
            self._draw(iid)
        target = select if select in self._shown else next((i for i in ids if i in self._shown), None)
        if target is not None:
            self.select_image(target)
        self._refresh_page_label()

    def _fill_page(self, ids: tuple[str, ...], key_of: dict[str, str | int], natural: dict[str, int],
                   images: dict[str, ImageData], pool: list[_Shown]) -> None:
        """Give every image of the page its layers: recycled from ``pool`` or newly added."""
        assert self.project is not None
        fresh: list[tuple[str, Any, dict[str, Any]]] = []
        for iid in ids:
            if iid not in key_of or iid in self._shown:
                continue
            img = images.get(iid)
            if img is None:
                img = self.project.read_image(iid)
            data, kwargs, _ = layer_data_from_image(
                img, layer_metadata(self.project, iid), iid, key_of[iid])
            n_layers = natural[iid] if key_of[iid] == COMPOSITE else 1
            reuse = next((s for s in pool if len(s.layers) == n_layers
                          and s.layers[0].rgb == bool(kwargs.get("rgb", False))), None)
            if reuse is None:
                fresh.append((iid, data, kwargs))
                continue
            _recycle(reuse.layers, data, kwargs)
            pool.remove(reuse)
            self._shown[iid] = _Shown(key_of[iid], reuse.layers, natural[iid])
        if not fresh and not pool:
            return
        # adding or removing layers: one scene-graph update for all, with the grid off
        grid = self.viewer.canvas.grid
        grid.enabled = False
        with self.viewer.layers.batched_update():
            for iid, data, kwargs in fresh:
                added = self.viewer.add_image(data, **kwargs)
                layers = list(added) if isinstance(added, list) else [added]
                for layer in layers:
                    prepare_border(layer)
                self._shown[iid] = _Shown(key_of[iid], layers, natural[iid])
            for shown in pool:
                self._remove_layers(shown.layers)

    def _remove_page_layers(self, ids: list[str]) -> None:
        was = self._rendering
        self._rendering = True
        try:
            for iid in ids:
                shown = self._shown.pop(iid, None)
                if shown is not None:
                    self._remove_layers(shown.layers)
        finally:
            self._rendering = was

    def _remove_layers(self, layers: list[Layer]) -> None:
        for layer in layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def show_images(self, image_ids: Sequence[str], title: str = "") -> None:
        """Show these project images as the page, in this order (e.g. a confusion-matrix cell).

        The next page continues after the last of them in project order.
        """
        if self.project is None or self.pager is None:
            return
        ids = tuple(i for i in image_ids if i in self.project)
        if not ids:
            return
        self.pager.show_list(ids, title or "chosen images")
        self._render_page()
        if title:
            self.viewer.status = f"{title}: {len(ids)} images"

    def select_image(self, image_id: str) -> None:
        """Make an image of the page the selected (active) layer."""
        shown = self._shown.get(image_id)
        if shown is not None and shown.layers:
            self.viewer.layers.selection.active = shown.layers[0]

    # ================================================================== selection
    def selected(self) -> tuple[list[str], list[_LayerTarget]]:
        """Project image ids (page order) and scripted layers among the selected layers."""
        ids: set[str] = set()
        targets: list[_LayerTarget] = []
        project = self.project
        root = str(project.root) if project is not None else None
        for layer in self.viewer.layers.selection:
            meta = self._project_meta(layer)
            if meta is not None:
                if meta["project"] == root:
                    ids.add(meta["image_id"])
                continue
            if not isinstance(layer, Image):
                continue
            iid = self._project_id_of_source(layer) or self._saved_id(layer)
            if iid is not None:
                ids.add(iid)
            else:
                targets.append(_LayerTarget(layer))
        page = self.pager.page_ids if self.pager is not None else ()
        ordered = [i for i in page if i in ids] + sorted(i for i in ids if i not in page)
        return ordered, targets

    def _saved_id(self, layer: Layer) -> str | None:
        """The project image a scripted layer was saved as (see :meth:`save_scripted_layers`)."""
        meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
        iid = meta.get(SAVED_AS_KEY) if isinstance(meta, dict) else None
        return iid if self.project is not None and iid in self.project else None

    def save_scripted_layers(self, layers: Sequence[Layer] | None = None) -> list[str]:
        """Write labelled in-memory layers into the project as TIFFs, keeping their labels.

        Layers a script made from arrays carry their labels only in ``layer.metadata``, which
        is lost when napari closes. Each is saved as ``added_images/<layer name>.tif`` (never
        overwriting) and its labels become the new image's sidecar, all as one undo step; the
        layer then labels that image. Default: every labelled scripted layer without a file.
        Returns the new image ids.
        """
        from ..core.transfer import save_array_image

        project = self.project
        if project is None:
            show_warning("open a project folder first: the layers are saved into it")
            return []
        if layers is None:
            layers = [lyr for lyr in self.viewer.layers if self._unsaved_labels(lyr)]
        labels: dict[str, tuple[str, ...]] = {}
        saved: list[tuple[Layer, str]] = []
        for layer in layers:
            data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
            iid = save_array_image(project, np.asarray(data), layer.name)
            saved.append((layer, iid))
            names = tuple(c for c in _LayerTarget(layer).get_labels() if c in project.class_names)
            if names:
                labels[iid] = names
        if labels:
            project.apply_labels(labels, description="save layers", source="human")
        for layer, iid in saved:
            meta = dict(layer.metadata.get(METADATA_KEY) or {})
            meta[SAVED_AS_KEY] = iid
            layer.metadata[METADATA_KEY] = meta
            self._draw_scripted(layer)
        if saved:
            show_info(f"saved {len(saved)} layer(s) into {project.root.name}/"
                      f"{saved[0][1].rsplit('/', 1)[0]}/ with their labels")
        return [iid for _, iid in saved]

    def _unsaved_labels(self, layer: Layer) -> bool:
        """True for a scripted layer whose labels live only in its metadata."""
        return (isinstance(layer, Image) and self._project_meta(layer) is None
                and self._saved_id(layer) is None and _LayerTarget(layer).source_path is None
                and bool(_LayerTarget(layer).get_labels()))

    def _offer_to_save(self, targets: Sequence[_LayerTarget]) -> None:
        """Once per layer: say that its label lives in the layer only, with a button to save it."""
        from napari.utils.notifications import Notification, notification_manager

        fresh = [t.layer for t in targets if self._unsaved_labels(t.layer)
                 and id(t.layer) not in self._offered]
        if not fresh or self.project is None:
            return
        self._offered.update(id(lyr) for lyr in fresh)
        names = ", ".join(f"'{lyr.name}'" for lyr in fresh[:3]) + (" …" if len(fresh) > 3 else "")
        notification_manager.dispatch(Notification(
            f"{names} has no file: its label is kept in the layer only and is lost when napari "
            "closes. Save it into the project as a TIFF to keep it.", severity="warning",
            actions=[("Save into project", lambda *_: self.save_scripted_layers(fresh))]))

    def _project_id_of_source(self, layer: Layer) -> str | None:
        """The project image id of a layer opened from a file inside the project, if any."""
        if self.project is None or not layer.source.path:
            return None
        try:
            rel = Path(layer.source.path).resolve().relative_to(self.project.root).as_posix()
        except ValueError:
            return None
        return rel if rel in self.project.image_ids else None

    # ================================================================== labelling
    def _require_selection(self) -> tuple[list[str], list[_LayerTarget]] | None:
        if self.session is None:
            show_warning("open a project folder first (its cellclass.json holds the classes)")
            return None
        ids, targets = self.selected()
        if not ids and not targets:
            show_warning("select an image first (click its layer)")
            return None
        return ids, targets

    @_reports_errors
    def label_selected(self) -> None:
        """F1: give the selected class to the selected image(s); multi-label projects toggle."""
        sel = self._require_selection()
        if sel is None:
            return
        assert self.session is not None
        self.session.label(*sel)
        for t in sel[1]:
            self._draw_scripted(t.layer)
        self._offer_to_save(sel[1])

    @_reports_errors
    def label_and_next(self) -> None:
        """F2: label the selected image(s), then select the next image (turning the page)."""
        sel = self._require_selection()
        if sel is None:
            return
        assert self.session is not None and self.pager is not None
        ids, targets = sel
        self.session.label(ids, targets)
        for t in targets:
            self._draw_scripted(t.layer)
        self._offer_to_save(targets)
        if ids:
            self._go_after(ids[-1])

    def _go_after(self, image_id: str) -> None:
        assert self.pager is not None
        current = image_id
        while True:
            nxt, turn = self.pager.next_image(current)
            if nxt is None:
                show_info("that was the last image")
                return
            if turn:
                self.pager.next_page()
                self._render_page(select=nxt)
                return
            if nxt in self._shown:
                self.select_image(nxt)
                return
            current = nxt  # unreadable image: skip it

    @_reports_errors
    def clear_selected(self) -> None:
        """Remove all labels of the selected image(s)."""
        sel = self._require_selection()
        if sel is None:
            return
        assert self.session is not None
        self.session.clear(*sel)
        for t in sel[1]:
            self._draw_scripted(t.layer)

    @_reports_errors
    def undo(self) -> None:
        """Ctrl+Z: undo the last labelling action."""
        if self.session is None:
            return
        if not self.session.can_undo:
            show_info("nothing to undo")
            return
        self.session.undo()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and self._project_meta(layer) is None:
                self._draw_scripted(layer)

    def next_class(self) -> None:
        """F4: select the next class."""
        self._cycle(1)

    def previous_class(self) -> None:
        """F3: select the previous class."""
        self._cycle(-1)

    def _cycle(self, step: int) -> None:
        if self.session is None:
            return
        name = self.session.cycle_class(step)
        if name is not None:
            self.class_choice.value = name
            self.viewer.status = f"class: {name}"

    # ================================================================== classes panel
    def _on_class_choice(self, value: str | None) -> None:
        if self.session is not None and value:
            self.session.select_class(value)

    @_reports_errors
    def _on_multi_label(self, value: bool) -> None:
        if self.project is None or self.project.multi_label == bool(value):
            return
        try:
            self.project.set_multi_label(bool(value))
        finally:
            with _quiet(self.multi_label):
                self.multi_label.value = self.project.multi_label

    def _require_project(self) -> Project | None:
        if self.project is None:
            show_warning("open a project folder first (its cellclass.json holds the classes)")
        return self.project

    @_reports_errors
    def _on_add_class(self) -> None:
        if (project := self._require_project()) is None:
            return
        info = project.add_class(self.class_name.value)
        self.class_name.value = ""
        self.class_choice.value = info.name

    @_reports_errors
    def _on_rename_class(self) -> None:
        if (project := self._require_project()) is None or not self.class_choice.value:
            return
        old, new = self.class_choice.value, self.class_name.value
        project.rename_class(old, new)
        self.class_name.value = ""
        self.class_choice.value = new.strip()

    @_reports_errors
    def _on_recolor_class(self) -> None:
        if (project := self._require_project()) is None or not self.class_choice.value:
            return
        name = self.class_choice.value
        color = self.pick_color(project.class_color(name))
        if color:
            project.set_class_color(name, color)

    @_reports_errors
    def _on_remove_class(self) -> None:
        if (project := self._require_project()) is None or not self.class_choice.value:
            return
        name = self.class_choice.value
        n = project.counts().get(name, 0)
        question = f"Class '{name}' labels {n} image(s). Remove it and unlabel them? This cannot be undone."
        if project.remove_affects_history(name):
            question += f" Earlier undo steps will restore their images without '{name}'."
        if n and not self.confirm(question):
            return
        project.remove_class(name, force=True)

    @_reports_errors
    def _on_filter(self, value: str | None) -> None:
        if self.pager is None or not value or value == self.pager.image_filter:
            return
        self.pager.set_filter(value)
        self._render_page()

    @_reports_errors
    def _on_page_size(self, value: int) -> None:
        if self.pager is None:
            return
        self.pager.set_page_size(value)
        self._render_page()

    @_reports_errors
    def _on_channels(self, value: str | None) -> None:
        if self.pager is None:
            return
        self._render_page()

    # ================================================================== drawing
    def _on_project_changed(self, ids: tuple[str, ...]) -> None:
        """Project listener: labels of ``ids`` changed (empty: the classes changed)."""
        if not ids:
            self._refresh_choices()
            for iid in self._shown:
                self._draw(iid)
            for layer in self.viewer.layers:
                if isinstance(layer, Image) and self._project_meta(layer) is None:
                    self._draw_scripted(layer)
        else:
            for iid in ids:
                if iid in self._shown:
                    self._draw(iid)
            changed = set(ids)  # scripted layers saved into the project show its labels
            for layer in self.viewer.layers:
                if self._saved_id(layer) in changed:
                    self._draw_scripted(layer)
        self._refresh_panel()

    def _color_of(self, name: str) -> str:
        if self.project is not None and name in self.project.class_names:
            return self.project.class_color(name)
        return fallback_color(name)

    def _draw(self, image_id: str) -> None:
        """Update an image's border and its layers' metadata from the project."""
        assert self.project is not None
        shown = self._shown[image_id]
        labels = list(self.project.labels(image_id))
        prediction: list[str] = []
        for layer in shown.layers:
            meta = layer.metadata.get(METADATA_KEY)
            if isinstance(meta, dict):
                meta["labels"] = labels
                pred = meta.get("prediction")
                if pred and not prediction:
                    prediction = [pred] if isinstance(pred, str) else list(pred)
        specs = image_border_specs(labels, prediction, self._color_of)
        for k, layer in enumerate(shown.layers):
            apply_border(layer, specs if k == 0 else [])

    def _draw_scripted(self, layer: Layer) -> None:
        meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
        if not isinstance(meta, dict):
            apply_border(layer, [])
            return
        saved = self._saved_id(layer)
        if saved is not None:
            meta["labels"] = list(self.project.labels(saved)) if self.project is not None else []
        pred = meta.get("prediction") or []
        specs = image_border_specs(list(meta.get("labels", ())),
                                   [pred] if isinstance(pred, str) else list(pred), self._color_of)
        apply_border(layer, specs)

    # ================================================================== panel text
    def _refresh_choices(self) -> None:
        with _quiet(self.class_choice, self.image_filter):
            self.class_choice.reset_choices()
            self.image_filter.reset_choices()
            if self.session is not None:
                self.session.ensure_selection()
                if self.session.selected_class is not None:
                    self.class_choice.value = self.session.selected_class
            if self.pager is not None:
                if self.pager.image_filter not in self._filter_choices():
                    self.pager.image_filter = SPECIAL_FILTERS[0]
                self.image_filter.value = self.pager.image_filter

    def _refresh_panel(self) -> None:
        project = self.project
        if project is None:
            return
        n_lab = len(project.labelled_ids())
        self.summary.value = f"{project.root.name}: labelled {n_lab} / {len(project)}"
        counts = project.counts()
        self.counts.value = "<br>".join(
            f'<span style="color:{project.class_color(n)}">■</span> {n}: {c}' for n, c in counts.items()
        ) or "No classes yet: type a name and press Add class"

    def _refresh_page_label(self) -> None:
        if self.pager is None:
            return
        self.page_label.value = self.pager.page_text()
        with _quiet(self.channels):
            value = self.channels.value
            self.channels.reset_choices()
            if value in self._channel_choices():
                self.channels.value = value
