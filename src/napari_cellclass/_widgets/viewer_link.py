"""Glue between the viewer's image layers and project predictions (layers found by metadata).

Project images are recognised by ``layer.metadata["cellclass"]`` (``project`` and
``image_id``), never by layer names. Predictions are written into that same dictionary
(``prediction``, ``confidence``, ``probabilities``, ``model``) and drawn as a prediction-style
border; a human label always wins the border. The docks share one
:class:`~napari_cellclass.core.project.Project` through the viewer's session, so labels accepted
here show in the labelling dock at once.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Layer

from ..core.errors import CellclassError
from ..core.predictions import Prediction
from ..core.project import Project
from .borders import apply_border, prepare_border
from .labelling_model import fallback_color, image_border_specs
from .layers import METADATA_KEY, image_layer_data
from .napari_private import real_viewer
from .session import session_for

if TYPE_CHECKING:
    import napari

#: Marks layers this module added to show images (review of a confusion-matrix cell).
REVIEW_KEY = "review"


PREDICTION_KEYS = ("prediction", "confidence", "probabilities", "model", "uncertain")


def prediction_metadata(pred: Prediction, multi_label: bool = False, uncertain: bool = False) -> dict[str, Any]:
    """What goes into ``layer.metadata['cellclass']`` for a prediction.

    ``prediction`` is the predicted class (a list for multi-label), ``probabilities`` every
    class's probability, ``confidence`` the top probability, ``model`` the model folder name and
    ``uncertain`` whether it is less sure than the minimum confidence.
    """
    predicted: str | list[str] | None
    predicted = list(pred.classes) if multi_label else (pred.top_class or "")
    return {"prediction": predicted, "confidence": float(pred.confidence),
            "probabilities": dict(pred.probabilities), "model": pred.model, "uncertain": bool(uncertain)}


def current_project(viewer: napari.viewer.Viewer) -> Project | None:
    """The project the viewer's docks share: the session's, else the one its image layers show.

    A project found through the layers becomes the session's, so every dock uses one object.
    """
    session = session_for(viewer)
    if session.project is not None:
        return session.project
    for layer in real_viewer(viewer).layers:
        meta = cellclass_meta(layer)
        if meta is not None and meta.get("project"):
            try:
                return session.use_project(meta["project"])
            except CellclassError:
                continue
    return None


def cellclass_meta(layer: Layer) -> dict[str, Any] | None:
    """``layer.metadata["cellclass"]`` when the layer shows a project image."""
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    return meta if isinstance(meta, dict) and meta.get("image_id") else None


def image_layers(viewer: napari.viewer.Viewer, project: Project) -> dict[str, list[Layer]]:
    """``{image_id: [layers]}`` of ``project`` in the viewer (layer-list order, first layer first)."""
    root = str(project.root)
    out: dict[str, list[Layer]] = {}
    for layer in viewer.layers:
        meta = cellclass_meta(layer)
        if meta is not None and str(meta.get("project", root)) == root:
            out.setdefault(meta["image_id"], []).append(layer)
    return out


def selected_image_ids(viewer: napari.viewer.Viewer, project: Project) -> list[str]:
    """Image ids of the selected layers (layer-list order)."""
    root = str(project.root)
    ids: list[str] = []
    for layer in viewer.layers:
        if layer not in viewer.layers.selection:
            continue
        meta = cellclass_meta(layer)
        if meta is not None and str(meta.get("project", root)) == root and meta["image_id"] not in ids:
            ids.append(meta["image_id"])
    return ids


def color_of(project: Project, name: str) -> str:
    return project.class_color(name) if name in project.class_names else fallback_color(name)


def draw_image_border(project: Project, layers: Sequence[Layer]) -> None:
    """Border of one image from its labels, else its prediction (first layer only)."""
    if not layers:
        return
    meta = cellclass_meta(layers[0]) or {}
    iid = meta.get("image_id")
    labels = list(project.labels(iid)) if iid in project.image_ids else list(meta.get("labels", ()))
    pred = meta.get("prediction") or []
    pred_list = [pred] if isinstance(pred, str) else list(pred)
    specs = image_border_specs(labels, pred_list, lambda n: color_of(project, n), bool(meta.get("uncertain")))
    for k, layer in enumerate(layers):
        apply_border(layer, specs if k == 0 else [])


def set_layer_prediction(layer: Layer, pred: Prediction | None, multi_label: bool, uncertain: bool = False) -> bool:
    """Write (or remove, for ``None``) a prediction in a layer's metadata; True when it changed."""
    meta = cellclass_meta(layer)
    if meta is None:
        return False
    new = prediction_metadata(pred, multi_label, uncertain) if pred is not None else {}
    old = {k: meta.get(k) for k in PREDICTION_KEYS if k in meta}
    if old == new:
        return False
    for k in PREDICTION_KEYS:
        meta.pop(k, None)
    meta.update(new)  # in place: no metadata event, the labelling widget reads it on its next draw
    return True


class PredictionLayers:
    """Keeps the viewer's layers annotated with a project's predictions, also after page turns.

    Layers that arrive (or get new metadata when the labelling widget recycles them) are
    annotated at once, before the labelling widget draws their border.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = real_viewer(viewer)
        self.project: Project | None = None
        self.predictions: dict[str, Prediction] = {}
        self._watched: set[int] = set()
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in self.viewer.layers:
            self._watch(layer)

    def disconnect(self) -> None:
        """Stop following the viewer (the widget closed)."""
        self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        for layer in self.viewer.layers:
            if id(layer) in self._watched:
                layer.events.metadata.disconnect(self._on_metadata)
        self._watched.clear()

    def set_predictions(self, project: Project, predictions: Mapping[str, Prediction]) -> int:
        """Use these predictions and update every shown layer; returns the images updated."""
        self.project = project
        self.predictions = dict(predictions)
        return self.refresh()

    def update(self, project: Project, predictions: Mapping[str, Prediction]) -> int:
        """Add or replace some predictions and update their layers."""
        if self.project is not project:
            self.predictions = {}
        self.project = project
        self.predictions.update(predictions)
        return self.refresh(predictions.keys())

    def refresh(self, ids: Iterable[str] | None = None) -> int:
        """Re-annotate and redraw the layers of ``ids`` (all when None)."""
        if self.project is None:
            return 0
        wanted = set(ids) if ids is not None else None
        n = 0
        for iid, layers in image_layers(self.viewer, self.project).items():
            if wanted is not None and iid not in wanted:
                continue
            for layer in layers:
                self._set(layer, iid)
            draw_image_border(self.project, layers)
            n += 1
        return n

    def _watch(self, layer: Layer) -> None:
        if isinstance(layer, Image) and id(layer) not in self._watched:
            self._watched.add(id(layer))
            layer.events.metadata.connect(self._on_metadata)

    def _annotate(self, layer: Layer) -> None:
        meta = cellclass_meta(layer)
        if meta is None or self.project is None or str(meta.get("project", "")) != str(self.project.root):
            return
        self._set(layer, meta["image_id"])

    def _set(self, layer: Layer, image_id: str) -> None:
        assert self.project is not None
        pred = self.predictions.get(image_id)
        uncertain = pred is not None and session_for(self.viewer).is_uncertain(pred)
        set_layer_prediction(layer, pred, self.project.multi_label, uncertain)

    def _on_inserted(self, event: Any) -> None:
        self._watch(event.value)
        self._annotate(event.value)

    def _on_metadata(self, event: Any) -> None:
        layer = getattr(event, "source", None)
        if isinstance(layer, Layer):
            self._annotate(layer)


def show_images(viewer: napari.viewer.Viewer, project: Project, ids: Sequence[str],
                title: str = "review") -> list[str]:
    """Show these images as layers (for relabelling with the labelling widget's hotkeys).

    The labelling dock of the viewer shows them as its page, in the given order (hotkeys, borders
    and paging stay consistent); without one the images are added as layers in grid mode,
    replacing the previous review layers. Returns the ids shown.
    """
    viewer = real_viewer(viewer)
    session = session_for(viewer)
    if session.project is project:
        ordered = [i for i in ids if i in project]
        if session.show_images(ordered, title):
            return ordered
    for layer in [lyr for lyr in viewer.layers if (cellclass_meta(lyr) or {}).get(REVIEW_KEY)]:
        viewer.layers.remove(layer)
    shown: list[str] = []
    added: list[Layer] = []
    viewer.canvas.grid.enabled = False
    for iid in ids:
        data, kwargs, _ = image_layer_data(project, iid)
        metas = kwargs["metadata"] if isinstance(kwargs["metadata"], list) else [kwargs["metadata"]]
        kwargs["metadata"] = [{METADATA_KEY: {**m[METADATA_KEY], REVIEW_KEY: title}} for m in metas]
        if not isinstance(kwargs["name"], list):
            kwargs["metadata"] = kwargs["metadata"][0]
        new = viewer.add_image(data, **kwargs)
        layers = list(new) if isinstance(new, list) else [new]
        for layer in layers:
            prepare_border(layer)
        added += layers
        shown.append(iid)
    if added:
        viewer.layers.move_multiple([viewer.layers.index(lyr) for lyr in added], 0)
        viewer.canvas.grid.stride = len(added) // max(1, len(shown))
        viewer.canvas.grid.shape = (-1, -1)
        viewer.canvas.grid.enabled = True
        viewer.reset_view()
        viewer.layers.selection.active = added[0]
    return shown
