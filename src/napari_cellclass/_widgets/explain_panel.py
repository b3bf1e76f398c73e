"""The predictions dock's "Explain" part: saliency maps of the selected images as layers beside them.

"Explain selected" runs :func:`napari_cellclass.learn.explain` with the active model in a worker
(progress in napari's activity dock) for the selected page images, for their predicted class or a
chosen one. Each map becomes an Image layer (``inferno``, additive, half opaque) with its image's
scale and translate, named ``saliency <method>: <image> → <class>``. napari's grid gives every
layer a cell of its own (one per ``stride`` layers), so on a page of one-layer images the map takes
the cell right after its image; on a page of channel composites it follows the page. Turning the page
(the image's layer shows another image or goes) or opening another project removes the map.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_warning

from ..core.saliency_names import METHODS
from .layers import SALIENCY_KEY, short_names
from .napari_private import no_select_on_insert
from .session import session_for
from .training_model import Failed, import_learning_libraries
from .viewer_link import cellclass_meta, current_project, image_layers, selected_image_ids
from .workers import DockJob, JobProgress, guarded_steps

if TYPE_CHECKING:
    import napari

    from ..learn.saliency import ExplainResult, Saliency

PREDICTED = "predicted class"
COLORMAP = "inferno"
OPACITY = 0.5


def saliency_layer_name(image_id: str, method: str, class_name: str) -> str:
    """``saliency gradcam: u2os_0002 → mitotic``."""
    return f"saliency {method}: {short_names([image_id])[image_id]} → {class_name}"


class SaliencyLayers:
    """The saliency layers of a viewer, each tied to the layer of the image it explains."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.pairs: list[tuple[Layer, Layer]] = []  # (saliency layer, the image layer it explains)
        self.viewer.layers.events.removed.connect(self._on_removed)

    @property
    def layers(self) -> list[Layer]:
        """The saliency layers shown."""
        return [m for m, _a in self.pairs]

    def add(self, s: Saliency, image_layers_: Sequence[Layer], project_root: str) -> Layer | None:
        """Show a map beside its image (replacing an earlier map of the same image, class and method)."""
        anchor = next((lyr for lyr in image_layers_ if lyr in self.viewer.layers), None)
        if anchor is None:
            return None
        name = saliency_layer_name(s.image_id, s.method, s.explained)
        for old in [m for m in self.layers if m.name == name]:
            self.remove(old)
        layer = Image(s.map, name=name, colormap=COLORMAP, blending="additive", opacity=OPACITY,
                      contrast_limits=(0.0, 1.0), scale=anchor.scale[-2:], translate=anchor.translate[-2:],
                      metadata={SALIENCY_KEY: {"project": project_root, "image_id": s.image_id,
                                               "class": s.explained, "predicted": s.predicted,
                                               "probability": s.probability, "method": s.method}})
        if not any(a is anchor for _m, a in self.pairs):
            anchor.events.metadata.connect(self._on_image_changed)
        self.pairs.append((layer, anchor))
        with no_select_on_insert(self.viewer):  # the image stays selected
            self.viewer.layers.insert(self._position(image_layers_), layer)
        return layer

    def _position(self, image_layers_: Sequence[Layer]) -> int:
        """Right after the image's layers when each grid cell holds one layer, else after the page's layers."""
        layers = self.viewer.layers
        if abs(self.viewer.canvas.grid.stride) == 1:
            return max(layers.index(lyr) for lyr in image_layers_ if lyr in layers) + 1
        page = [k for k, lyr in enumerate(layers) if cellclass_meta(lyr) is not None]
        return (page[-1] + 1) if page else len(layers)

    def remove(self, layer: Layer) -> None:
        """Remove one saliency layer."""
        anchors = [a for m, a in self.pairs if m is layer]
        self.pairs = [(m, a) for m, a in self.pairs if m is not layer]
        for anchor in anchors:
            if not any(a is anchor for _m, a in self.pairs):
                anchor.events.metadata.disconnect(self._on_image_changed)
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def clear(self) -> None:
        """Remove every saliency layer."""
        for layer in self.layers:
            self.remove(layer)

    def _on_image_changed(self, event: Any) -> None:
        """An image layer was recycled for another image (a page turn): its maps go."""
        anchor = event.source
        now = (cellclass_meta(anchor) or {}).get("image_id")
        for m, a in list(self.pairs):
            if a is anchor and m.metadata[SALIENCY_KEY]["image_id"] != now:
                self.remove(m)

    def _on_removed(self, event: Any) -> None:
        gone = event.value
        for m, a in list(self.pairs):
            if m is gone or a is gone:  # a map removed by hand, or its image left
                self.remove(m)

    def disconnect(self) -> None:
        """Stop following the viewer; the maps go."""
        self.clear()
        self.viewer.layers.events.removed.disconnect(self._on_removed)


class ExplainPanel(Container):
    """"Explain selected" with the class (predicted or a chosen one) and the saliency method."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.shared = session_for(viewer)
        self.class_choice = ComboBox(choices=self._class_choices, tooltip="the class whose evidence is shown")
        self.method = ComboBox(choices=METHODS, value=METHODS[0],
                               tooltip="gradcam: the last convolutional stage (coarse, class-specific); "
                                       "integrated-gradients: per pixel, any backbone")
        self.button = PushButton(text="Explain selected")
        self.button.tooltip = "saliency maps: where the active model looked in the selected images"
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.maps = SaliencyLayers(viewer)
        self.job = DockJob("an explanation", start_buttons=[self.button])
        self.bar = JobProgress()
        self._root = ""
        self.extend([Container(widgets=[self.button, self.class_choice, self.method], layout="horizontal",
                               labels=False), self.status])
        self.button.changed.connect(lambda _v: self.explain())
        self.shared.project_changed.connect(self._on_project_changed)
        self.shared.labels_changed.connect(self._on_labels_changed)

    def _class_choices(self, _widget: Any = None) -> list[str]:
        project = self.shared.project
        return [PREDICTED, *(project.class_names if project is not None else ())]

    def _on_project_changed(self, _project: Any) -> None:
        self.maps.clear()
        self.class_choice.reset_choices()

    def _on_labels_changed(self, ids: tuple[str, ...]) -> None:
        if not ids:  # the class list changed
            self.class_choice.reset_choices()

    def explain(self, ids: Sequence[str] | None = None) -> Any:
        """Explain ``ids`` (default: the selected page images) in a worker; returns the worker or None."""
        project, model = current_project(self.viewer), self.shared.model
        if not self.job.ready_for(project, model):
            return None
        shown = image_layers(self.viewer, project)
        ids = [i for i in (self._selected(project) if ids is None else ids) if i in shown]
        if not ids:
            show_warning("select an image on the canvas first (its layer)")
            return None
        _import_libraries()
        from ..learn.saliency import explain

        cls = self.class_choice.value
        self._root = str(project.root)
        self.bar.start(f"Explaining {len(ids)} image(s)", len(ids))
        self.status.value = f"explaining {len(ids)} image(s) with {self.method.value}…"
        return self.job.start(guarded_steps, explain, (str(model), project),
                              {"ids": ids, "class_name": None if cls in (None, PREDICTED) else str(cls),
                               "method": str(self.method.value)}, on_item=self._on_item, on_done=self.bar.close)

    def _selected(self, project: Any) -> list[str]:
        """The selected page images; a selected map stands for its image."""
        ids = selected_image_ids(self.viewer, project)
        for layer in self.maps.layers:
            iid = layer.metadata[SALIENCY_KEY]["image_id"]
            if layer in self.viewer.layers.selection and iid not in ids:
                ids.append(iid)
        return ids

    def _on_item(self, item: Any) -> None:
        from ..learn.saliency import ExplainResult

        if isinstance(item, tuple):
            self.bar.update(item[0])
        elif isinstance(item, Failed):
            self.status.value = f"explain failed: {item.message}"
            show_error(f"Explain failed: {item.message}")
        elif isinstance(item, ExplainResult):
            self._show(item)

    def _show(self, result: ExplainResult) -> None:
        project = current_project(self.viewer)
        if project is None or str(project.root) != self._root:
            return  # another project was opened meanwhile
        shown = image_layers(self.viewer, project)
        added = [s for s in result if s.image_id in shown and self.maps.add(s, shown[s.image_id], self._root)]
        lines = [f"{s.image_id}: {s.explained} (p={s.probability:.2f}, predicted {s.predicted})" for s in added]
        lines += [f"skipped {k}: {v}" for k, v in result.skipped.items()]
        self.status.value = "\n".join(lines) if lines else "the explained images left the page"

    def close(self) -> None:
        """Stop following the session and the viewer; the maps go."""
        self.shared.project_changed.disconnect(self._on_project_changed)
        self.shared.labels_changed.disconnect(self._on_labels_changed)
        self.maps.disconnect()
        super().close()


def _import_libraries() -> None:
    """torch and captum imported in the main thread (never first in a worker)."""
    import_learning_libraries()
    import captum.attr  # noqa: F401




__all__ = ["ExplainPanel", "SaliencyLayers", "saliency_layer_name"]
