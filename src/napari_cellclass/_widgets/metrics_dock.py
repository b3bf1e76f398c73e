"""The metrics dock: per-class precision / recall / F1, a clickable confusion matrix, calibration, CSV export.

Evaluation runs in a worker (:func:`~napari_cellclass.learn.evaluate.evaluate_split`); the widget shows
:class:`~napari_cellclass.learn.evaluate.Evaluation` in two magicgui tables. Clicking a confusion-matrix cell
shows its images as layers (misclassified, most confident first) so they can be relabelled
with the labelling widget's hotkeys. Below, the calibration (:class:`~.trust_panel.TrustPanel`):
the confidence that reaches a target accuracy and the reliability diagram. When a model becomes
active (training finished or a model folder loaded) its validation split is evaluated automatically.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Table
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtGui import QBrush, QColor

from ..core.errors import CellclassError
from ..core.project import Project
from ..learn.evaluate import METRIC_COLUMNS, Evaluation, evaluate_split
from .compact import compact_dock, show_rows
from .napari_private import real_viewer
from .session import session_for
from .training_model import Failed, import_learning_libraries, user_message
from .trust_panel import TrustPanel
from .viewer_link import current_project, show_images
from .workers import DockJob

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

SPLIT_CHOICES = ("auto", "val", "test", "train", "all")


class MetricsDock(Container):
    """Metrics of the active model on a split, with a confusion matrix to review errors."""

    def __init__(self, viewer: napari.viewer.Viewer, project: Project | str | Path | None = None,
                 auto_evaluate: bool = True) -> None:
        super().__init__(labels=False)
        self.viewer = real_viewer(viewer)
        self.shared = session_for(self.viewer)
        if project is not None:
            self.shared.use_project(project)
        self.auto_evaluate = auto_evaluate
        self.evaluation: Evaluation | None = None
        self.model_label = Label(value="model: none")
        self.model_label.native.setWordWrap(True)
        self.split = ComboBox(label="split", choices=list(SPLIT_CHOICES), value="auto")
        self.evaluate_button = PushButton(text="Evaluate")
        self.summary = Label(value="")
        self.table = Table(value={"data": [], "index": [], "columns": METRIC_COLUMNS[1:]})
        self.table.read_only = True
        self.confusion_title = Label(value="Confusion matrix (rows: true class, columns: predicted); "
                                           "click a cell to see its images")
        self.confusion_title.native.setWordWrap(True)
        self.confusion = Table(value={"data": [], "index": [], "columns": []})
        self.confusion.read_only = True
        self.confusion.native.cellClicked.connect(self._on_cell_clicked)
        self.trust = TrustPanel()
        self.export_folder = FileEdit(label="export to folder", mode="d")
        self.export_button = PushButton(text="Export metrics, predictions, confusion, reliability")
        self.extend([
            self.model_label,
            Container(widgets=[self.split, self.evaluate_button], layout="horizontal", labels=True),
            self.summary, self.table, self.confusion_title, self.confusion, self.trust,
            Container(widgets=[self.export_folder], labels=True), self.export_button,
        ])
        show_rows(self.table, 5)
        show_rows(self.confusion, 5)
        compact_dock(self)  # rows scroll in a short dock; the tables take the spare height
        self.job = DockJob("an evaluation", start_buttons=[self.evaluate_button])
        self.evaluate_button.changed.connect(lambda _v: self.evaluate())
        self.export_button.changed.connect(lambda _v: self._on_export())
        self.shared.model_changed.connect(self._on_active_model)
        self._refresh_model()

    # ================================================================== project and model
    @property
    def project(self) -> Project | None:
        return current_project(self.viewer)

    @property
    def model(self) -> Path | None:
        return self.shared.model if self.project is not None else None

    def _refresh_model(self) -> None:
        model = self.model
        self.model_label.value = f"model: {model.name if model else 'none (train or load one)'}"

    def _on_active_model(self, folder: Path | None) -> None:
        self._refresh_model()
        if folder is not None and self.auto_evaluate:
            self.evaluate()

    # ================================================================== evaluating
    @property
    def running(self) -> bool:
        return self.job.running

    def evaluate(self, split: str | None = None) -> GeneratorWorker | None:
        """Evaluate the active model on ``split`` (default: the chosen one) in a worker."""
        project, model = self.project, self.model
        if not self.job.ready_for(project, model):
            return None
        if split is not None:
            self.split.value = split
        import_learning_libraries()
        self.summary.value = f"evaluating {model.name}…"
        return self.job.start(_evaluate_steps, model, project, str(self.split.value), on_item=self._on_result,
                              progress={"desc": "Evaluating"})

    def _on_result(self, item: Any) -> None:
        if isinstance(item, Failed):
            self.summary.value = f"evaluation failed: {item.message}"
            show_error(f"Evaluation failed: {item.message}")
        elif isinstance(item, Evaluation):
            self.show_evaluation(item)

    def show_evaluation(self, ev: Evaluation) -> None:
        """Fill the tables from an evaluation."""
        self.evaluation = ev
        rows = ev.metrics_rows()
        self.table.value = {"data": [[f"{v:.3f}" if isinstance(v, float) else v for v in r[1:]] for r in rows],
                            "index": [r[0] for r in rows], "columns": METRIC_COLUMNS[1:]}
        cm = ev.confusion
        self.confusion.value = {"data": cm.tolist(), "index": list(ev.classes),
                                "columns": list(ev.classes)}
        self._colour_confusion(cm)
        self.trust.show(ev)
        skipped = f", {len(ev.skipped)} skipped" if ev.skipped else ""
        self.summary.value = (f"{ev.model} on the {ev.split} split: {len(ev.ids)} images{skipped}; "
                              f"accuracy {ev.metrics['accuracy']:.3f}, balanced accuracy "
                              f"{ev.metrics.get('balanced_accuracy', float('nan')):.3f}")

    def _colour_confusion(self, cm: np.ndarray) -> None:
        """Cells shaded by the share of their true class: blue on the diagonal, red off it."""
        qt = self.confusion.native
        totals = cm.sum(axis=1, keepdims=True).clip(min=1)
        share = cm / totals
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                item = qt.item(i, j)
                if item is None:
                    continue
                a = float(share[i, j])
                base = (31, 119, 180) if i == j else (214, 39, 40)
                r, g, b = (int(255 - (255 - c) * a) for c in base)
                item.setBackground(QBrush(QColor(r, g, b)))
                item.setForeground(QBrush(QColor("white" if a > 0.6 else "black")))
                item.setToolTip(f"{cm[i, j]} images: true {self.evaluation.classes[i]}, predicted "
                                f"{self.evaluation.classes[j]} — click to show them"
                                if self.evaluation is not None else "")

    # ================================================================== review
    def cell_ids(self, true: int, pred: int) -> list[str]:
        """Image ids of a confusion-matrix cell (misclassified and most confident first)."""
        if self.evaluation is None:
            return []
        return self.evaluation.cell_ids(true, pred)

    def open_cell(self, true: int, pred: int) -> list[str]:
        """Show the images of a confusion-matrix cell as layers; returns their ids."""
        ev, project = self.evaluation, self.project
        if ev is None or project is None:
            return []
        ids = ev.cell_ids(true, pred)
        if not ids:
            show_info("no images in this cell")
            return []
        shown = show_images(self.viewer, project, ids,
                            title=f"true {ev.classes[true]} / predicted {ev.classes[pred]}")
        self.viewer.status = (f"{len(shown)} images: true {ev.classes[true]}, predicted {ev.classes[pred]} "
                              "— relabel with the Labelling widget's hotkeys (F1/F2)")
        return shown

    def _on_cell_clicked(self, row: int, column: int) -> None:
        try:
            self.open_cell(row, column)
        except CellclassError as exc:
            show_error(str(exc))

    # ================================================================== export
    def export(self, folder: str | Path) -> list[Path]:
        """Write ``metrics.csv``, ``predictions.csv`` and ``confusion_matrix.csv`` into ``folder``."""
        if self.evaluation is None:
            raise CellclassError("nothing to export yet: press Evaluate first")
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        ev = self.evaluation
        stem = f"{ev.model}_{ev.split}"
        return [ev.export_metrics(folder / f"{stem}_metrics.csv"),
                ev.export_predictions(folder / f"{stem}_predictions.csv"),
                ev.export_confusion(folder / f"{stem}_confusion_matrix.csv")]

    def _on_export(self) -> None:
        folder = self.export_folder.value
        if not folder or str(folder) in ("", "."):
            show_warning("pick a folder in 'export to folder' first")
            return
        try:
            paths = self.export(folder)
            show_info(f"exported {', '.join(p.name for p in paths)} to {folder}")
        except (CellclassError, OSError) as exc:
            show_error(f"cannot export: {exc}")

    def close(self) -> None:
        self.shared.model_changed.disconnect(self._on_active_model)
        super().close()


def _evaluate_steps(model: Path, project: Project, split: str):
    """Worker body: one :class:`Evaluation` or :class:`Failed` (never raises)."""
    yield None  # a first yield so the worker can be quit before the work starts
    try:
        yield evaluate_split(model, project, split)
    except Exception as exc:  # noqa: BLE001 - shown to the user as a notification
        yield Failed(user_message(exc))
