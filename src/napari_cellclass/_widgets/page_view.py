"""A page of project images on napari's canvas: one grid cell per image, layers recycled, borders.

:class:`PageView` draws the pager's page all or nothing (a cell never shows channels of two
images), reuses the layers of images leaving the page for those arriving (adding and removing
layers is what makes napari slow), keeps layers added by hand in cells of their own, refits the
grid when its shape changes and takes over layers a napari-cellclass reader added.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Layer
from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent, QObject, QTimer

from ..core.errors import ImageReadError
from ..core.images import ImageData
from ..core.project import Project
from .borders import MISTAKE_KEY, SUGGESTED_KEY, apply_border, prepare_border, set_highlight, set_mark
from .guards import reports_errors
from .labelling_model import Pager, image_border_specs
from .layers import BLEND, COMPOSITE, layer_data_from_image, layer_metadata, natural_layer_count, short_names
from .napari_private import (
    canvas_widget,
    no_select_on_insert,
    one_dims_update,
    refresh_icon,
    set_current,
    swap_data,
)
from .scripted import project_meta

log = logging.getLogger(__name__)
GRID_SPACING = 0.06
#: Milliseconds a resized canvas must stay still before the page is fitted to it again.
REFIT_DELAY_MS = 150
#: Room around the grid when it is fitted to the canvas (the class borders of the outer cells show whole).
FIT_MARGIN = 0.1
#: Milliseconds after a page is drawn before the layer-list icons follow (the canvas comes first).
ICON_DELAY_MS = 60


@dataclass
class Shown:
    """The layers showing one image of the page."""

    key: str | int  # display mode the layers were made with
    layers: list[Layer]
    natural: int  # layers the image makes as a composite


def recycle(layers: list[Layer], data: Any, kwargs: dict[str, Any]) -> None:
    """Show new image data in existing layers (one per channel for a composite).

    Their layer-list icons are left to :meth:`PageView.refresh_icons` (after the page is on screen).
    """
    names = kwargs["name"] if isinstance(kwargs["name"], list) else [kwargs["name"]]
    metas = kwargs["metadata"] if isinstance(kwargs["metadata"], list) else [kwargs["metadata"]]
    limits = kwargs.get("contrast_limits")
    for k, layer in enumerate(layers):
        swap_data(layer, data[k] if kwargs.get("channel_axis") is not None else data)
        if limits is not None:
            layer.contrast_limits = limits[k] if isinstance(limits[0], list) else limits
        layer.metadata = dict(metas[min(k, len(metas) - 1)])
        layer.name = names[min(k, len(names) - 1)]


def page_layout(natural: dict[str, int], mode: str | int) -> tuple[dict[str, str | int], int]:
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


def bring_to_front(layers: Any, order: Sequence[Layer]) -> None:
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


def with_names(kwargs: dict[str, Any], name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Layer kwargs made for an empty name, given the layer name(s) and metadata of this page."""
    out = dict(kwargs)
    if isinstance(kwargs["name"], list):
        out["name"] = [(name + n).strip() for n in kwargs["name"]]
        out["metadata"] = [meta] * len(kwargs["name"])
    else:
        out["name"] = (name + kwargs["name"]).strip()
        out["metadata"] = meta
    return out


class Prefetch:
    """Reads the next page's images and computes their layer data (contrast, blend) in a background thread.

    A page turn then only hands ready arrays to napari. Results are kept for one page and used
    only for the same project, image and display.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[tuple[str, str], tuple[ImageData, dict[Any, tuple[Any, dict[str, Any]]]]] = {}
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped by forget(): a preparation started before it is thrown away

    def start(self, project: Project, ids: Sequence[str], mode: str | int) -> None:
        """Prepare ``ids`` (the next page) shown with ``mode``."""
        root = str(project.root)
        with self._lock:
            self._ready = {k: v for k, v in self._ready.items() if k[0] == root and k[1] in ids}
        todo = [i for i in ids if (root, i) not in self._ready]
        if not todo:
            return
        thread = threading.Thread(target=self._run, args=(project, todo, mode, self._generation), daemon=True,
                                  name="cellclass-prefetch")
        self._thread = thread
        thread.start()

    def wait(self, timeout: float = 5.0) -> None:
        """Wait for the running prefetch (tests and benchmarks)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, project: Project, todo: list[str], mode: str | int, generation: int) -> None:
        images: dict[str, ImageData] = {}
        for iid in todo:
            try:
                images[iid] = project.read_image(iid)
            except Exception:  # noqa: BLE001 - the page turn reads it again and reports the problem
                continue
        natural = {i: natural_layer_count(img) for i, img in images.items()}
        key_of, _ = page_layout(natural, mode)
        root = str(project.root)
        for iid, img in images.items():
            try:
                data, kwargs, _ = layer_data_from_image(img, {}, "", key_of[iid])
            except Exception:  # noqa: BLE001 - computed again at the page turn
                continue
            with self._lock:
                if generation != self._generation:
                    return
                self._ready[(root, iid)] = (img, {key_of[iid]: (data, kwargs)})

    def image(self, project: Project, image_id: str) -> ImageData | None:
        with self._lock:
            got = self._ready.get((str(project.root), image_id))
        return got[0] if got is not None else None

    def layer_data(self, project: Project, image_id: str, key: str | int) -> tuple[Any, dict[str, Any]] | None:
        with self._lock:
            got = self._ready.get((str(project.root), image_id))
        return got[1].get(key) if got is not None else None

    def forget(self) -> None:
        """Throw away what was prepared (the images may have changed on disk)."""
        with self._lock:
            self._ready = {}
            self._generation += 1


class CanvasClicks:
    """Calls ``on_click(layer, modifiers)`` when the user clicks (press and release, no drag) an image
    of napari's grid; ``layer`` is the top visible layer of the clicked grid cell."""

    def __init__(self, viewer: Any, on_click: Callable[[Layer, tuple[str, ...]], None]) -> None:
        self.viewer = viewer
        self._on_click = on_click
        viewer.mouse_drag_callbacks.append(self._callback)

    def close(self) -> None:
        if self._callback in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._callback)

    def _callback(self, viewer: Any, event: Any) -> Any:
        if event.button != 1:
            return
        press = tuple(event.position)
        viewbox = getattr(event, "viewbox", None)
        modifiers = tuple(str(getattr(m, "name", m)) for m in event.modifiers)
        yield
        while event.type == "mouse_move":
            if max(abs(a - b) for a, b in zip(event.position, press, strict=False)) > 2:
                return  # a drag pans the view
            yield
        layer = layer_at(viewer, viewbox, press)
        if layer is not None:
            self._on_click(layer, modifiers)


def layer_at(viewer: Any, viewbox: tuple[int, int] | None, position: Sequence[float]) -> Layer | None:
    """The top visible layer under a click: the grid cell's top layer whose data holds ``position``."""
    layers = viewer.layers
    grid = viewer.canvas.grid
    if grid.enabled:
        if viewbox is None:
            return None
        candidates = [layers[i] for i in grid.contents_at(tuple(viewbox), layers)]
    else:
        candidates = list(layers)
    for layer in reversed(candidates):  # the last one is drawn on top
        if not layer.visible:
            continue
        coords = np.asarray(layer.world_to_data(position))[-2:]
        shape = layer.data.shape[:2] if layer.rgb else layer.data.shape[-2:]
        if np.all(coords >= -0.5) and np.all(coords < np.asarray(shape) - 0.5):
            return layer
    return None


class _ResizeFilter(QObject):
    """Calls ``on_resize()`` when the widget it watches changes size."""

    def __init__(self, on_resize: Callable[[], None]) -> None:
        super().__init__()
        self._on_resize = on_resize

    def eventFilter(self, _obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Resize:
            self._on_resize()
        return False


class PageView:
    """The page of a project in a viewer's grid.

    Parameters
    ----------
    viewer
        The napari viewer.
    mode
        Returns the display mode: ``"composite"``, ``"RGB blend"`` or a channel index.
    color_of
        A class's ``#rrggbb`` colour.
    on_foreign_project
        Called with a project folder when a reader added layers of a project not open here.
    on_other_layer
        Called with a layer that is not a page layer when it arrives (scripted layers).
    on_drawn
        Called after every page drawn (page label, choices).
    """

    def __init__(self, viewer: Any, *, mode: Callable[[], str | int], color_of: Callable[[str], str],
                 on_foreign_project: Callable[[str], None], on_other_layer: Callable[[Layer], None],
                 on_drawn: Callable[[], None]) -> None:
        self.viewer = viewer
        self.project: Project | None = None
        self.pager: Pager | None = None
        self.shown: dict[str, Shown] = {}
        self.max_channels = 1
        self._mode = mode
        self._color_of = color_of
        self._on_foreign_project = on_foreign_project
        self._on_other_layer = on_other_layer
        self._on_drawn = on_drawn
        self._rendering = False
        self._reload = False
        self._grid_shape: tuple[int, int] | None = None
        self._adopt_scheduled = False
        self.prefetch = Prefetch()
        self._icons = QTimer()
        self._icons.setSingleShot(True)
        self._icons.setInterval(ICON_DELAY_MS)
        self._icons.timeout.connect(self.refresh_icons)
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        # the canvas changes size when docks come or go: fit the page again once it settles
        self._refit = QTimer()
        self._refit.setSingleShot(True)
        self._refit.setInterval(REFIT_DELAY_MS)
        self._refit.timeout.connect(self._reset_view_later)
        self._canvas = canvas_widget(viewer)
        self._resize_filter = _ResizeFilter(self._refit.start)
        if self._canvas is not None:
            self._canvas.installEventFilter(self._resize_filter)

    @property
    def rendering(self) -> bool:
        """True while a page is being drawn (layers come, go and get selected one by one)."""
        return self._rendering

    def close(self) -> None:
        """Stop following the viewer's layer list and canvas."""
        self.viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self._refit.stop()
        self._icons.stop()
        if self._canvas is not None:
            self._canvas.removeEventFilter(self._resize_filter)

    def attach(self, project: Project, pager: Pager) -> None:
        """Show ``project`` from now on.

        The old page's layers are kept and recycled for the new project's first page: removing
        layers one by one from napari's grid costs seconds each.
        """
        if self.project is not None and project is not self.project:
            self._reload = True
        self.project, self.pager = project, pager

    # ------------------------------------------------------------------ rendering
    def render(self, select: str | None = None, reload: bool = False) -> None:
        """Show the pager's page: reuse layers already shown, read the others.

        All or nothing: when recycling fails half-way, every page layer is removed and the page
        is drawn again with new layers. ``reload`` reads every image of the page again.
        """
        self._reload = self._reload or reload
        if reload:
            self.prefetch.forget()
        try:
            self._draw_page(select, recycle=True)
        except Exception:  # noqa: BLE001 - retried from scratch below; a second failure is reported
            log.warning("napari-cellclass: page redraw failed; drawing it afresh", exc_info=True)
            self.remove_page_layers(list(self.shown))
            self._draw_page(select, recycle=False)

    def _read_page(self, ids: Sequence[str]) -> tuple[dict[str, ImageData], dict[str, int]]:
        """The images of the page not shown yet (all with reload) and every image's layer count."""
        assert self.project is not None
        images: dict[str, ImageData] = {}
        natural: dict[str, int] = {}
        reload, self._reload = self._reload, False
        for iid in ids:
            shown = self.shown.get(iid)
            if shown is not None and not reload:  # already shown: its channel count is known
                natural[iid] = shown.natural
                continue
            img = None if reload else self.prefetch.image(self.project, iid)
            try:
                img = img or self.project.read_image(iid)
            except ImageReadError as exc:
                show_warning(f"skipped on this page: {exc}")
                continue
            images[iid] = img
            natural[iid] = natural_layer_count(img)
            self.max_channels = max(self.max_channels, img.n_channels)
        return images, natural

    def _draw_page(self, select: str | None, recycle: bool) -> None:
        assert self.project is not None and self.pager is not None
        ids = self.pager.page_ids or self.pager.first_page()
        images, natural = self._read_page(ids)
        key_of, stride = page_layout(natural, self._mode())
        self._rendering = True
        try:
            stale = [i for i in self.shown if i not in key_of or self.shown[i].key != key_of[i] or i in images]
            pool = [self.shown.pop(i) for i in stale]
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
            bring_to_front(self.viewer.layers, [lyr for i in ids if i in self.shown for lyr in self.shown[i].layers])
            grid = self.viewer.canvas.grid
            grid.stride = stride
            grid.shape = (-1, -1)
            grid.spacing = GRID_SPACING
            grid.enabled = True
            self.fit_grid()
        finally:
            self._rendering = False
        for iid in self.shown:
            self.draw(iid)
        target = select if select in self.shown else next((i for i in ids if i in self.shown), None)
        if target is not None:
            self.select(target)
        self._on_drawn()
        self._icons.start()  # the layer-list icons once the page is on screen
        self.prefetch.start(self.project, self.pager.peek_next(), self._mode())

    def _fill_page(self, ids: Sequence[str], key_of: dict[str, str | int], natural: dict[str, int],
                   images: dict[str, ImageData], pool: list[Shown]) -> None:
        """Give every image of the page its layers: recycled from ``pool`` or newly added."""
        assert self.project is not None
        fresh: list[tuple[str, Any, dict[str, Any]]] = []
        names = short_names(ids)
        with one_dims_update(self.viewer, [lyr for shown in pool for lyr in shown.layers]):
            for iid in ids:
                if iid not in key_of or iid in self.shown:
                    continue
                img = images.get(iid) or self.project.read_image(iid)
                meta = layer_metadata(self.project, iid)
                ready = self.prefetch.layer_data(self.project, iid, key_of[iid])
                data, kwargs = ready if ready is not None else layer_data_from_image(img, meta, "", key_of[iid])[:2]
                kwargs = with_names(kwargs, names[iid], meta)
                n_layers = natural[iid] if key_of[iid] == COMPOSITE else 1
                reuse = next((s for s in pool if len(s.layers) == n_layers
                              and s.layers[0].rgb == bool(kwargs.get("rgb", False))), None)
                if reuse is None:
                    fresh.append((iid, data, kwargs))
                    continue
                recycle(reuse.layers, data, kwargs)
                pool.remove(reuse)
                self.shown[iid] = Shown(key_of[iid], reuse.layers, natural[iid])
        if not fresh and not pool:
            return
        # adding or removing layers: one scene-graph update for all, with the grid off
        self.viewer.canvas.grid.enabled = False
        with self.viewer.layers.batched_update(), no_select_on_insert(self.viewer):
            for iid, data, kwargs in fresh:
                added = self.viewer.add_image(data, **kwargs)
                layers = list(added) if isinstance(added, list) else [added]
                for layer in layers:
                    prepare_border(layer)
                self.shown[iid] = Shown(key_of[iid], layers, natural[iid])
            for shown in pool:
                self._remove_layers(shown.layers)

    def refresh_icons(self) -> None:
        """Redraw the layer-list icons of the page's layers."""
        for shown in list(self.shown.values()):
            for layer in shown.layers:
                if layer in self.viewer.layers:
                    refresh_icon(layer)

    def remove_page_layers(self, ids: list[str]) -> None:
        """Remove the layers of these page images."""
        was = self._rendering
        self._rendering = True
        try:
            for iid in ids:
                shown = self.shown.pop(iid, None)
                if shown is not None:
                    self._remove_layers(shown.layers)
        finally:
            self._rendering = was

    def _remove_layers(self, layers: list[Layer]) -> None:
        for layer in layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    # ------------------------------------------------------------------ borders and selection
    def draw(self, image_id: str) -> None:
        """Update an image's border and its layers' metadata from the project."""
        assert self.project is not None
        shown = self.shown[image_id]
        labels = list(self.project.labels(image_id))
        prediction: list[str] = []
        uncertain = False
        for layer in shown.layers:
            meta = layer.metadata.get("cellclass")
            if isinstance(meta, dict):
                meta["labels"] = labels
                pred = meta.get("prediction")
                if pred and not prediction:
                    prediction = [pred] if isinstance(pred, str) else list(pred)
                    uncertain = bool(meta.get("uncertain"))
        specs = image_border_specs(labels, prediction, self._color_of, uncertain)
        for k, layer in enumerate(shown.layers):
            apply_border(layer, specs if k == 0 else [])

    def select(self, image_id: str) -> None:
        """Select an image of the page: its layers (all channels), the first one active."""
        self.select_many([image_id])

    def select_many(self, ids: Sequence[str]) -> None:
        """Select the layers of these page images (no image: no layer selected)."""
        layers = [lyr for i in ids if i in self.shown for lyr in self.shown[i].layers]
        selection = self.viewer.layers.selection
        if set(layers) == set(selection):
            return
        if len(layers) == 1:
            selection.active = layers[0]
            return
        selection.clear()
        selection.update(layers)
        if layers:
            set_current(selection, layers[0])

    def highlight(self, ids: Sequence[str]) -> None:
        """Mark the selected images on the canvas: white corner handles around each (others: none)."""
        chosen = set(ids)
        for iid, shown in self.shown.items():
            if shown.layers:
                set_highlight(shown.layers[0], iid in chosen)

    def show_marks(self, suggested: Collection[str], mistakes: Collection[str]) -> None:
        """Gold corners on the suggested images, red corners on the likely mistakes (others: none)."""
        for iid, shown in self.shown.items():
            if shown.layers:
                set_mark(shown.layers[0], SUGGESTED_KEY, iid in suggested)
                set_mark(shown.layers[0], MISTAKE_KEY, iid in mistakes)

    # ------------------------------------------------------------------ layers coming and going
    def _on_layer_inserted(self, event: Any) -> None:
        if self._rendering:
            return
        layer = event.value
        if project_meta(layer) is not None:
            if not self._adopt_scheduled:
                self._adopt_scheduled = True
                QTimer.singleShot(0, self._adopt_layers)
        else:
            self._on_other_layer(layer)
        self.fit_grid()

    def _on_layer_removed(self, event: Any) -> None:
        if self._rendering:
            return
        layer = event.value
        for iid, shown in list(self.shown.items()):
            if layer in shown.layers:
                shown.layers.remove(layer)
                if not shown.layers:
                    del self.shown[iid]
        self.fit_grid()

    def fit_grid(self) -> None:
        """Fit the grid in the canvas again when its shape changed (a layer came or went)."""
        if self.project is None:
            return
        grid = self.viewer.canvas.grid
        shape = grid.actual_shape(list(self.viewer.layers)) if grid.enabled else None
        if shape != self._grid_shape:
            self._grid_shape = shape
            if shape is not None:
                self.viewer.reset_view(margin=FIT_MARGIN)
                # once more when Qt has laid the window out (a new dock shrinks the canvas)
                QTimer.singleShot(0, self._reset_view_later)

    def _reset_view_later(self) -> None:
        if self.project is not None and self.viewer.canvas.grid.enabled:
            self.viewer.reset_view(margin=FIT_MARGIN)

    @reports_errors
    def _adopt_layers(self) -> None:
        """Take over layers a napari-cellclass reader or sample added (then draw the page)."""
        self._adopt_scheduled = False
        foreign: dict[str, list[Layer]] = {}
        root: str | None = None
        for layer in self.viewer.layers:
            meta = project_meta(layer)
            if meta is None or any(layer in s.layers for s in self.shown.values()):
                continue
            root = meta["project"]
            foreign.setdefault(meta["image_id"], []).append(layer)
        if root is None:
            return
        if self.project is None or str(self.project.root) != root:
            self._on_foreign_project(root)
        if self.project is None:
            return
        for iid, layers in foreign.items():
            if iid in self.shown or iid not in self.project:
                self._remove_layers(layers)  # a duplicate of an image already shown
            else:
                self.shown[iid] = Shown(COMPOSITE, layers, len(layers))
        self.render()
