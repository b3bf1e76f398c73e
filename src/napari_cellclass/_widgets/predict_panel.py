"""The predictions dock: predict in a worker, predictions on the layers, accept them as labels.

- Predict the unlabelled images, the images in the viewer ("current page") or the whole
  project with the active model; results go to ``cellclass_predictions.csv`` (labels are never
  touched) and into each layer's ``metadata["cellclass"]`` with a prediction-style border.
- Accept the prediction of the selected image(s) with one click or the F5 key, or accept all
  unlabelled predictions above a confidence.
- A table lists predictions, filtered by predicted class and confidence and sorted; clicking a
  row shows that image.
- Predictions less sure than "uncertain below" (the model's calibrated threshold by default)
  get grey borders, a ``?`` in the gallery and the "uncertain" filter.
- A per-well summary (folded away at first): a table of groups and a clickable plate heatmap.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSlider, Label, PushButton, Table
from napari.utils.notifications import show_error, show_info, show_warning

from ..core.errors import CellclassError
from ..core.prediction_review import (
    PREDICT_SCOPES,
    SORT_CHOICES,
    accept_predictions,
    acceptable,
    export_project_predictions,
    filter_predictions,
    predict_ids,
    project_predictions,
)
from ..core.predictions import Prediction
from ..core.project import Project
from .compact import compact_dock, show_rows
from .dialogs import ask_yes_no
from .explain_panel import ExplainPanel
from .napari_private import real_viewer
from .plate_panel import PlatePanel
from .session import session_for
from .training_model import Failed, import_learning_libraries, run_prediction
from .uncertain_control import UncertainControl
from .viewer_link import (
    PredictionLayers,
    current_project,
    image_layers,
    selected_image_ids,
    show_images,
)
from .workers import DockJob, JobProgress

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

ACCEPT_KEY = "F5"
#: Accepting more predictions than this at once asks first.
CONFIRM_ABOVE = 5
ALL_CLASSES = "all classes"
TABLE_COLUMNS = ["predicted", "confidence", "label"]


class PredictionsWidget(Container):
    """Predict with the active model and turn good predictions into labels."""

    def __init__(self, viewer: napari.viewer.Viewer, project: Project | str | Path | None = None, *,
                 confirm: Callable[[str], bool] | None = None) -> None:
        super().__init__(labels=False)
        self.viewer = real_viewer(viewer)
        self.confirm: Callable[[str], bool] = confirm or (lambda q: ask_yes_no(self.native, q))
        self.shared = session_for(self.viewer)
        if project is not None:
            self.shared.use_project(project)
        self.layers = PredictionLayers(self.viewer)
        self.predictions: dict[str, Prediction] = {}
        self.bar = JobProgress()
        self._rows: list[str] = []
        self._build()
        self.shared.model_changed.connect(self._on_active_model)
        self.shared.project_changed.connect(self._on_project_changed)
        self.shared.labels_changed.connect(self._on_labels_changed)
        self.shared.marks_changed.connect(self._on_marks)
        self._previous_key = self.viewer.bind_key(ACCEPT_KEY, self._accept_key, overwrite=True)
        self.load_stored()

    def _build(self) -> None:
        self.model_label = Label(value="model: none")
        self.model_label.native.setWordWrap(True)
        self.scope = ComboBox(label="predict", choices=list(PREDICT_SCOPES), value="unlabelled")
        self.predict_button = PushButton(text="Predict")
        self.stop_button = PushButton(text="Stop")
        self.accept_button = PushButton(text=f"Accept prediction of selected ({ACCEPT_KEY})")
        self.threshold = FloatSlider(label="confidence ≥", value=0.9, min=0.5, max=1.0, step=0.01)
        self.accept_all_button = PushButton(text="Accept all unlabelled above")
        self.class_filter = ComboBox(label="class", choices=self._class_choices)
        self.min_conf = FloatSlider(label="min confidence", value=0.0, min=0.0, max=1.0, step=0.01)
        self.max_conf = FloatSlider(label="max confidence", value=1.0, min=0.0, max=1.0, step=0.01)
        self.uncertain = UncertainControl(self.shared)
        self.order = ComboBox(label="sort by", choices=list(SORT_CHOICES), value=SORT_CHOICES[0])
        self.unlabelled_only = CheckBox(text="unlabelled only", value=False)
        self.show_button = PushButton(text="Show these images")
        self.table = Table(value={"data": [], "index": [], "columns": TABLE_COLUMNS})
        self.table.read_only = True
        show_rows(self.table, 8)
        self.table.native.cellClicked.connect(self._on_row_clicked)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.export_file = FileEdit(label="export CSV", mode="w", filter="CSV (*.csv)")
        self.export_button = PushButton(text="Export predictions")

        def row(*widgets: Any, labels: bool = False) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=labels)

        self.explain_part = ExplainPanel(self.viewer)  # saliency maps of the selected images
        self.plates = PlatePanel(self.viewer, self.shared)  # per-well summary and plate heatmap
        self.extend([
            self.model_label, row(self.scope, self.predict_button, self.stop_button, labels=True), self.status,
            self.uncertain,
            self.accept_button, row(self.threshold, self.accept_all_button, labels=True),
            self.explain_part,
            Container(widgets=[self.class_filter, self.min_conf, self.max_conf, self.order], labels=True),
            row(self.unlabelled_only, self.show_button), self.table,
            Container(widgets=[self.export_file], labels=True), self.export_button,
            self.plates,
        ])
        compact_dock(self)  # rows scroll in a short dock; the table takes the spare height
        self.predict_button.changed.connect(lambda _v: self.predict())
        self.stop_button.changed.connect(lambda _v: self.stop())
        self.accept_button.changed.connect(lambda _v: self.accept_selected())
        self.accept_all_button.changed.connect(lambda _v: self.accept_above())
        self.show_button.changed.connect(lambda _v: self.show_listed())
        self.export_button.changed.connect(lambda _v: self._on_export())
        for w in (self.class_filter, self.min_conf, self.max_conf, self.order, self.unlabelled_only):
            w.changed.connect(lambda _v: self.refresh_table())
        self.job = DockJob("a prediction", start_buttons=[self.predict_button], stop_buttons=[self.stop_button])

    # ================================================================== project and model
    @property
    def project(self) -> Project | None:
        return current_project(self.viewer)

    @property
    def model(self) -> Path | None:
        return self.shared.model if self.project is not None else None

    def _class_choices(self, _widget: Any = None) -> list[str]:
        project = self.project
        return [ALL_CLASSES, *(project.class_names if project is not None else ())]

    def _on_active_model(self, folder: Path | None) -> None:
        self.model_label.value = f"model: {folder.name if folder else 'none (train or load one)'}"

    def _on_project_changed(self, _project: Project | None) -> None:
        self.load_stored()

    def _on_marks(self) -> None:
        self.layers.refresh()  # the uncertain predictions' borders follow the minimum confidence

    def _on_labels_changed(self, ids: tuple[str, ...]) -> None:
        if not ids:  # the classes changed: the class filter lists them
            self.class_filter.reset_choices()
        elif any(i in self.predictions for i in ids):
            self.refresh_table()  # the table's label column

    def load_stored(self) -> None:
        """Show the project's stored predictions (from an earlier session) on the layers."""
        project = self.project
        if project is None:
            return
        try:
            self.predictions = project_predictions(project)
        except CellclassError as exc:
            show_warning(str(exc))
            self.predictions = {}
        self.layers.set_predictions(project, self.predictions)
        self.shared.set_predictions(self.predictions)
        model = self.model
        self.model_label.value = f"model: {model.name if model else 'none (train or load one)'}"
        self.class_filter.reset_choices()
        self.refresh_table()

    # ================================================================== predicting
    @property
    def running(self) -> bool:
        return self.job.running

    def predict(self, scope: str | None = None) -> GeneratorWorker | None:
        """Predict the images of ``scope`` (default: the chosen one) in a worker."""
        project, model = self.project, self.model
        if not self.job.ready_for(project, model):
            return None
        if scope is not None:
            self.scope.value = scope
        page = list(image_layers(self.viewer, project))
        ids = predict_ids(project, str(self.scope.value), page)
        if not ids:
            show_warning(f"no images to predict for '{self.scope.value}' (all labelled? choose 'whole project')")
            return None
        import_learning_libraries()
        from ..learn import CancelToken

        self._cancel = CancelToken()
        self.bar.start(f"Predicting {len(ids)} images", len(ids))
        self.status.value = f"predicting {len(ids)} images with {model.name}…"
        return self.job.start(run_prediction, model, project, ids, 64, self._cancel, on_item=self._on_item,
                              on_done=self.bar.close)

    def stop(self) -> None:
        if self.running:
            self._cancel.cancel()

    def _on_item(self, item: Any) -> None:
        project = self.project
        if isinstance(item, tuple):
            self.bar.update(item[0])
        elif isinstance(item, Failed):
            self.status.value = f"prediction failed: {item.message}"
            show_error(f"Prediction failed: {item.message}")
        elif isinstance(item, dict) and project is not None:
            self.predictions.update(item)
            self.shared.set_predictions(self.predictions)
            self.layers.update(project, item)
            self.class_filter.reset_choices()
            self.refresh_table()
            counts: dict[str, int] = {}
            for p in item.values():
                counts[p.top_class or "?"] = counts.get(p.top_class or "?", 0) + 1
            self.status.value = (f"{len(item)} images predicted: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                                 + " (stored in cellclass_predictions.csv; labels untouched)")

    # ================================================================== accepting
    def accept(self, ids: list[str]) -> list[str]:
        """Make the predictions of ``ids`` their labels; returns the ids whose labels changed."""
        project = self.project
        if project is None:
            return []
        changed = accept_predictions(project, self.predictions, ids)
        self.layers.refresh(changed)
        self.refresh_table()
        return changed

    def accept_selected(self) -> list[str]:
        """Accept the predictions of the selected image layers (F5)."""
        project = self.project
        if project is None:
            show_warning("open a project first")
            return []
        ids = [i for i in selected_image_ids(self.viewer, project) if i in self.predictions]
        if not ids:
            show_warning("select an image that has a prediction first (its layer)")
            return []
        labelled = [i for i in ids if project.labels(i)]
        if labelled:
            show_warning(f"{len(labelled)} selected image(s) already have a label and keep it "
                         "(predictions never replace labels; use F1 to relabel)")
        try:
            changed = self.accept(ids)
        except CellclassError as exc:
            show_error(str(exc))
            return []
        self.viewer.status = f"accepted the prediction of {len(changed)} image(s)"
        return changed

    def accept_above(self, min_confidence: float | None = None) -> list[str]:
        """Accept every unlabelled image's prediction with at least ``min_confidence``."""
        project = self.project
        if project is None:
            return []
        threshold = float(self.threshold.value if min_confidence is None else min_confidence)
        ids = acceptable(project, self.predictions, threshold, only_unlabelled=True)
        if not ids:
            show_info(f"no unlabelled image has a prediction with confidence ≥ {threshold:.2f}")
            return []
        if len(ids) > CONFIRM_ABOVE and not self.confirm(
                f"Label {len(ids)} unlabelled image(s) with their predicted class (confidence ≥ "
                f"{threshold:.2f})? One Ctrl+Z in the Labelling dock undoes it."):
            return []
        try:
            changed = self.accept(ids)
        except CellclassError as exc:
            show_error(str(exc))
            return []
        show_info(f"accepted {len(changed)} prediction(s) with confidence ≥ {threshold:.2f} as labels")
        return changed

    def _accept_key(self, _viewer: Any) -> None:
        self.accept_selected()

    # ================================================================== listing
    def listed(self) -> list[Prediction]:
        """The predictions that pass the filters, in table order."""
        project = self.project
        cls = self.class_filter.value
        return filter_predictions(self.predictions, predicted=None if cls in (None, ALL_CLASSES) else cls,
                                  min_confidence=float(self.min_conf.value),
                                  max_confidence=float(self.max_conf.value), order=str(self.order.value),
                                  project=project, only_unlabelled=bool(self.unlabelled_only.value))

    def refresh_table(self) -> None:
        project = self.project
        rows = self.listed()
        self._rows = [p.image_id for p in rows]
        data = [[";".join(p.classes), f"{p.confidence:.3f}",
                 ";".join(project.labels(p.image_id)) if project is not None and p.image_id in project.image_ids
                 else ""] for p in rows]
        self.table.value = {"data": data, "index": self._rows, "columns": TABLE_COLUMNS}

    def show_listed(self, limit: int = 48) -> list[str]:
        """Show the listed images (up to ``limit``) as layers."""
        project = self.project
        if project is None or not self._rows:
            return []
        return show_images(self.viewer, project, self._rows[:limit], title="predictions")

    def _on_row_clicked(self, row: int, _column: int) -> None:
        project = self.project
        if project is None or not 0 <= row < len(self._rows):
            return
        iid = self._rows[row]
        layers = image_layers(self.viewer, project).get(iid)
        if layers:
            self.viewer.layers.selection.active = layers[0]
        else:
            show_images(self.viewer, project, [iid], title="prediction")

    def _on_export(self) -> None:
        project, path = self.project, self.export_file.value
        if project is None or not path or Path(path).is_dir():
            show_warning("pick a CSV file in 'export CSV' first")
            return
        try:
            show_info(f"predictions exported to {export_project_predictions(project, path)}")
        except (CellclassError, OSError) as exc:
            show_error(f"cannot export: {exc}")

    def close(self) -> None:
        """Unbind the accept key and stop following the viewer."""
        self.stop()
        if self._previous_key is not None:
            self.viewer.bind_key(ACCEPT_KEY, self._previous_key, overwrite=True)
        else:
            self.viewer.bind_key(ACCEPT_KEY, None, overwrite=True)
        self.layers.disconnect()
        self.uncertain.disconnect()
        self.shared.marks_changed.disconnect(self._on_marks)
        self.explain_part.close()
        self.plates.close()
        self.shared.model_changed.disconnect(self._on_active_model)
        self.shared.project_changed.disconnect(self._on_project_changed)
        self.shared.labels_changed.disconnect(self._on_labels_changed)
        super().close()
