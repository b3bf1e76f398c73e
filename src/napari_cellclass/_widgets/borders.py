"""Drawing class borders on napari layers (``layer.bounding_box`` plus nested extra boxes)."""
from __future__ import annotations

from collections.abc import Sequence

from napari.components.overlays import BoundingBoxOverlay
from napari.layers import Layer

from .labelling_model import BorderSpec
from .napari_private import layer_overlays, real_layer

#: Keys of the extra rectangles (2nd, 3rd ... class of a multi-label image) among the layer's overlays.
EXTRA_KEY = "cellclass_border_{}"
_BASE_ORDER = 10_000
#: Key of the selection mark (corner handles) among the layer's overlays, and its handle size.
HIGHLIGHT_KEY = "cellclass_selected"
HIGHLIGHT_POINT_PX = 14.0


def apply_border(layer: Layer, specs: Sequence[BorderSpec]) -> None:
    """Show ``specs`` around ``layer`` (no border for an empty list).

    The first rectangle is the layer's own bounding box; further ones (multi-label images) are
    extra bounding-box overlays drawn on top, each thinner, so all classes stay visible as
    nested bands. "No border" is a fully transparent box rather than a hidden one: napari
    re-lays out every overlay of a grid when an overlay's visibility flips, which would make
    each key press cost time proportional to the page size squared.
    """
    layer = real_layer(layer)
    bb = layer.bounding_box
    if specs:
        _style(bb, specs[0], 0)
    else:
        _hide(bb)
    overlays = layer_overlays(layer)
    if overlays is None:  # napari without per-layer overlays: first class only
        return
    for i, spec in enumerate(specs[1:], start=1):
        key = EXTRA_KEY.format(i)
        if key not in overlays:
            overlays[key] = BoundingBoxOverlay(points=False, visible=False)
        _style(overlays[key], spec, i)
    k = len(specs) if specs else 1
    while EXTRA_KEY.format(k) in overlays:
        _hide(overlays[EXTRA_KEY.format(k)])
        k += 1


#: The marks a layer can carry (corner handles, no class meaning), each an overlay under its key.
SUGGESTED_KEY = "cellclass_suggested"
MISTAKE_KEY = "cellclass_mistake"
_MARKS: dict[str, dict] = {
    HIGHLIGHT_KEY: {"lines": True, "line_color": "white", "line_thickness": 2.0, "points": True,
                    "point_color": "white", "point_size": HIGHLIGHT_POINT_PX, "order": _BASE_ORDER + 99},
    SUGGESTED_KEY: {"lines": False, "line_color": (0, 0, 0, 0), "points": True, "point_color": "#ffd400",
                    "point_size": 24.0, "order": _BASE_ORDER + 97},
    MISTAKE_KEY: {"lines": False, "line_color": (0, 0, 0, 0), "points": True, "point_color": "#ff5050",
                  "point_size": 24.0, "order": _BASE_ORDER + 98},
}
# napari 0.9 applies ``lines`` only when it changes, not when the overlay is drawn first: the corner-only
# marks also get transparent lines.


def set_mark(layer: Layer, key: str, on: bool) -> None:
    """Show (or hide) the mark ``key`` around ``layer``: the selection (white frame with corner handles),
    a suggestion (gold corners) or a likely mistake (red corners).

    Like the borders, "hidden" is a transparent overlay, never an invisible one (no grid re-layout).
    """
    overlays = layer_overlays(layer)
    if overlays is None:
        return
    box = overlays.get(key)
    if box is None:
        if not on:
            return
        box = overlays[key] = BoundingBoxOverlay(**_MARKS[key], visible=True, opacity=0.0)
    box.opacity = 1.0 if on else 0.0


def has_mark(layer: Layer, key: str) -> bool:
    """True when ``layer`` shows the mark ``key``."""
    box = (layer_overlays(layer) or {}).get(key)
    return box is not None and box.visible and box.opacity > 0


def set_highlight(layer: Layer, on: bool) -> None:
    """Show (or hide) the selection mark around ``layer``: a selected image on the canvas."""
    set_mark(layer, HIGHLIGHT_KEY, on)


def is_highlighted(layer: Layer) -> bool:
    """True when ``layer`` shows the selection mark."""
    return has_mark(layer, HIGHLIGHT_KEY)


def prepare_border(layer: Layer) -> None:
    """Make a new layer's bounding box ready (visible, transparent) while the grid is off."""
    bb = real_layer(layer).bounding_box
    bb.points = False
    bb.opacity = 0.0
    bb.order = _BASE_ORDER
    bb.visible = True


def border_colors(layer: Layer) -> list[tuple[float, float, float, float]]:
    """The RGBA colours (alpha = opacity) of the rectangles shown around ``layer``, bottom first."""
    layer = real_layer(layer)
    boxes = [layer.bounding_box]
    overlays = layer_overlays(layer) or {}
    k = 1
    while EXTRA_KEY.format(k) in overlays:
        boxes.append(overlays[EXTRA_KEY.format(k)])
        k += 1
    out = []
    for box in boxes:
        if box.visible and box.opacity > 0 and box.lines:
            r, g, b = (float(v) for v in box.line_color[:3])
            out.append((r, g, b, float(box.opacity)))
    return out


def _style(overlay: BoundingBoxOverlay, spec: BorderSpec, index: int) -> None:
    overlay.points = False
    overlay.line_color = spec.color
    overlay.line_thickness = spec.thickness
    overlay.opacity = spec.opacity
    overlay.order = _BASE_ORDER + index
    overlay.visible = True


def _hide(overlay: BoundingBoxOverlay) -> None:
    overlay.opacity = 0.0
