"""Every use of napari's private API, in one place (pinned by a test to the napari version).

napari 0.9 offers no public way to:

- reach the real viewer or layer behind the plugin proxy (which warns on private attributes);
- add extra bounding boxes to a layer (the nested bands of a multi-label image):
  ``layer._overlays``;
- swap the data of many layers with one update of the viewer's dimensions instead of one per
  layer (each recomputes the extent of every layer): the viewer's ``_on_layers_change``;
- show new data of the same shape in an image layer without recomputing its extent and
  transforms (napari's ``data`` setter redoes both, about 10 ms a layer): ``layer._data``;
- add many layers without napari selecting each one as it arrives (every selection change
  updates the layer list, the layer controls and the canvas): ``layers._activate_on_insert``;
- make a layer the current one of a multiple selection: ``selection._current``;
- reach the Qt main window (fitting it to the screen, window-wide key handling), the canvas
  widget and the layer-list view: ``viewer.window._qt_window`` and ``viewer.window._qt_viewer``.

Each accessor returns ``None`` when napari changed underneath, so callers degrade (a single
border, keys only on the canvas) instead of failing.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

#: The napari minor versions these accessors were checked against (see tests/widgets).
CHECKED_NAPARI = ("0.9",)


def real_viewer(viewer: Any) -> Any:
    """The viewer behind napari's plugin proxy."""
    return getattr(viewer, "__wrapped__", viewer)


def real_layer(layer: Any) -> Any:
    """The layer behind napari's plugin proxy."""
    return getattr(layer, "__wrapped__", layer)


def layer_overlays(layer: Any) -> Any | None:
    """The layer's overlay dictionary (an ``EventedDict``), or None."""
    return getattr(real_layer(layer), "_overlays", None)


def main_window(viewer: Any) -> Any | None:
    """The viewer's Qt main window (a ``QMainWindow``), or None."""
    try:
        return real_viewer(viewer).window._qt_window
    except (AttributeError, RuntimeError):
        return None


def canvas_widget(viewer: Any) -> Any | None:
    """The viewer's canvas widget, where napari's own keymaps handle keys, or None."""
    try:
        return real_viewer(viewer).window._qt_viewer.canvas.native
    except (AttributeError, RuntimeError):
        return None


def layer_list_view(viewer: Any) -> Any | None:
    """The viewer's layer-list view (a ``QAbstractItemView``), or None."""
    try:
        return real_viewer(viewer).window._qt_viewer.layers
    except (AttributeError, RuntimeError):
        return None


def dock_inner_widget(widget: Any) -> Any:
    """The magicgui widget behind what ``add_plugin_dock_widget`` returns."""
    return getattr(widget, "_magic_widget", widget)


@contextlib.contextmanager
def one_dims_update(viewer: Any, layers: Sequence[Any]) -> Iterator[None]:
    """While new data goes into ``layers``, the viewer updates its dimensions once, at the end."""
    viewer = real_viewer(viewer)
    handler = getattr(viewer, "_on_layers_change", None)
    held = []
    if handler is not None:
        for layer in layers:
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                real_layer(layer).events.data.disconnect(handler)
                held.append(real_layer(layer))
    try:
        yield
    finally:
        for layer in held:
            layer.events.data.connect(handler)
        if held:
            handler()


def swap_data(layer: Any, data: Any) -> bool:
    """Show ``data`` in an image layer; a cheaper path when shape, dtype and RGB-ness are unchanged.

    The extent and the data-to-world transforms of the layer stay as they are (they depend only
    on the shape); the slice, the texture and the ``data`` event are refreshed, the layer-list
    icon is not (call :func:`refresh_icon` soon after). Returns False when the full path was taken.
    """
    layer = real_layer(layer)
    old = getattr(layer, "_data", None)
    same = (isinstance(old, np.ndarray) and isinstance(data, np.ndarray) and old.shape == data.shape
            and old.dtype == data.dtype and not getattr(layer, "multiscale", True))
    if not same or not hasattr(layer, "_data_raw") or not hasattr(layer, "_reset_thumbnail_level_data"):
        layer.data = data
        return False
    layer._data_raw = data
    layer._data = data
    layer._reset_thumbnail_level_data()
    layer.refresh(extent=False, thumbnail=False)
    layer.events.data(value=data)
    return True


def refresh_icon(layer: Any) -> None:
    """Redraw a layer's icon in the layer list (its thumbnail)."""
    layer = real_layer(layer)
    update = getattr(layer, "_update_thumbnail", None)
    if update is not None:
        update()


@contextlib.contextmanager
def no_select_on_insert(viewer: Any) -> Iterator[None]:
    """Layers added meanwhile are not selected one by one (the caller selects what it wants after)."""
    layers = real_viewer(viewer).layers
    had = getattr(layers, "_activate_on_insert", None)
    if had is None:
        yield
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = had


def set_current(selection: Any, layer: Any) -> None:
    """Make ``layer`` (already selected) the current layer of a selection of several."""
    if hasattr(selection, "_current"):
        selection._current = layer
