"""Layers a script put in the viewer (not project images): labels in their metadata, saving them.

A scripted layer's classes live in ``layer.metadata["cellclass"]["labels"]`` and go to a sidecar
beside its source file when it has one. A layer made from an array has no file, so its labels
would be lost when napari closes: :func:`save_layers` writes it into the project as a TIFF,
after which the layer stands for that project image (``metadata["cellclass"]["saved_as"]``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import Notification, notification_manager, show_info, show_warning

from ..core.project import Project
from ..core.transfer import save_array_image
from .borders import apply_border
from .labelling_model import image_border_specs
from .layers import METADATA_KEY, SALIENCY_KEY

#: ``layer.metadata["cellclass"]`` key: the project image a scripted layer was saved as.
SAVED_AS_KEY = "saved_as"


def project_meta(layer: Layer) -> dict | None:
    """``layer.metadata["cellclass"]`` when the layer shows a project image (a page layer)."""
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    if isinstance(meta, dict) and meta.get("project") and meta.get("image_id"):
        return meta
    return None


class ScriptedLayer:
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
        return isinstance(other, ScriptedLayer) and other.layer is self.layer


def selection_targets(layers: Sequence[Layer], project: Project | None,
                      page_ids: Sequence[str] = ()) -> tuple[list[str], list[ScriptedLayer]]:
    """What selected layers stand for: project image ids (page order first) and scripted layers.

    A page layer stands for its image; a scripted layer opened from a file inside the project,
    or saved into it, stands for that image; any other image layer is a scripted target.
    """
    ids: set[str] = set()
    targets: list[ScriptedLayer] = []
    root = str(project.root) if project is not None else None
    for layer in layers:
        meta = project_meta(layer)
        if meta is not None:
            if meta["project"] == root:
                ids.add(meta["image_id"])
            continue
        if not is_scripted(layer):
            continue
        iid = _project_id_of_source(layer, project) or saved_id(layer, project)
        if iid is not None:
            ids.add(iid)
        else:
            targets.append(ScriptedLayer(layer))
    ordered = [i for i in page_ids if i in ids] + sorted(i for i in ids if i not in page_ids)
    return ordered, targets


def _project_id_of_source(layer: Layer, project: Project | None) -> str | None:
    """The project image id of a layer opened from a file inside the project, if any."""
    if project is None or not layer.source.path:
        return None
    try:
        rel = Path(layer.source.path).resolve().relative_to(project.root).as_posix()
    except ValueError:
        return None
    return rel if rel in project else None


def is_scripted(layer: Layer) -> bool:
    """True for an image layer that is neither a page layer of a project nor a saliency map."""
    return (isinstance(layer, Image) and project_meta(layer) is None
            and not (isinstance(layer.metadata, dict) and SALIENCY_KEY in layer.metadata))


def saved_id(layer: Layer, project: Project | None) -> str | None:
    """The project image a scripted layer was saved as, when it is an image of ``project``."""
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    iid = meta.get(SAVED_AS_KEY) if isinstance(meta, dict) else None
    return iid if project is not None and iid in project else None


def unsaved_labels(layer: Layer, project: Project | None) -> bool:
    """True for a scripted layer whose labels live only in its metadata (no file, not saved)."""
    target = ScriptedLayer(layer)
    return (is_scripted(layer) and saved_id(layer, project) is None and target.source_path is None
            and bool(target.get_labels()))


def save_layers(project: Project, layers: Sequence[Layer]) -> list[str]:
    """Write in-memory layers into the project as TIFFs, keeping their labels (one undo step).

    Each is saved as ``added_images/<layer name>.tif`` (never overwriting) and its labels
    become the new image's sidecar; the layer then stands for that image. Returns the new ids.
    """
    labels: dict[str, tuple[str, ...]] = {}
    saved: list[tuple[Layer, str]] = []
    for layer in layers:
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        iid = save_array_image(project, np.asarray(data), layer.name)
        saved.append((layer, iid))
        names = tuple(c for c in ScriptedLayer(layer).get_labels() if c in project.class_names)
        if names:
            labels[iid] = names
    if labels:
        project.apply_labels(labels, description="save layers", source="human")
    for layer, iid in saved:
        meta = dict(layer.metadata.get(METADATA_KEY) or {})
        meta[SAVED_AS_KEY] = iid
        layer.metadata[METADATA_KEY] = meta
    return [iid for _, iid in saved]


def draw_scripted(layer: Layer, project: Project | None, color_of: Callable[[str], str]) -> None:
    """The border of a scripted layer: its labels (its project image's once saved), else its prediction."""
    meta = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
    if not isinstance(meta, dict):
        apply_border(layer, [])
        return
    iid = saved_id(layer, project)
    if iid is not None and project is not None:
        meta["labels"] = list(project.labels(iid))
    pred = meta.get("prediction") or []
    specs = image_border_specs(list(meta.get("labels", ())),
                               [pred] if isinstance(pred, str) else list(pred), color_of)
    apply_border(layer, specs)


class ScriptedLayers:
    """The scripted layers of a viewer: their borders, and saving them into the open project.

    ``project`` returns the open project (or None); ``color_of`` a class's colour.
    """

    def __init__(self, viewer: Any, project: Callable[[], Project | None], color_of: Callable[[str], str]) -> None:
        self.viewer = viewer
        self._project = project
        self._color_of = color_of
        self._offered: set[int] = set()  # layers told that their labels are not saved

    def draw(self, layer: Layer) -> None:
        """Redraw a scripted layer's border (other layers are left alone)."""
        if is_scripted(layer):
            draw_scripted(layer, self._project(), self._color_of)

    def draw_all(self, image_ids: Sequence[str] | None = None) -> None:
        """Redraw every scripted layer (or only those saved as one of ``image_ids``)."""
        wanted = set(image_ids) if image_ids is not None else None
        for layer in self.viewer.layers:
            if wanted is None or saved_id(layer, self._project()) in wanted:
                self.draw(layer)

    def labelled(self, targets: Sequence[ScriptedLayer]) -> None:
        """After labelling: redraw, and offer once per layer to save one that has no file."""
        for t in targets:
            self.draw(t.layer)
        project = self._project()
        fresh = [t.layer for t in targets if unsaved_labels(t.layer, project) and id(t.layer) not in self._offered]
        if not fresh or project is None:
            return
        self._offered.update(id(lyr) for lyr in fresh)
        names = ", ".join(f"'{lyr.name}'" for lyr in fresh[:3]) + (" …" if len(fresh) > 3 else "")
        notification_manager.dispatch(Notification(
            f"{names} has no file: its label is kept in the layer only and is lost when napari "
            "closes. Save it into the project as a TIFF to keep it.", severity="warning",
            actions=[("Save into project", lambda *_: self.save(fresh))]))

    def save(self, layers: Sequence[Layer] | None = None) -> list[str]:
        """Save labelled in-memory layers into the project (default: all unsaved ones)."""
        project = self._project()
        if project is None:
            show_warning("open a project folder first: the layers are saved into it")
            return []
        if layers is None:
            layers = [lyr for lyr in self.viewer.layers if unsaved_labels(lyr, project)]
        ids = save_layers(project, layers)
        for layer in layers:
            self.draw(layer)
        if ids:
            show_info(f"saved {len(ids)} layer(s) into {project.root.name}/{ids[0].rsplit('/', 1)[0]}/ "
                      "with their labels")
        return ids
