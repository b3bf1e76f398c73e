"""The predictions dock's per-well part: a table of groups and a plate heatmap of clickable wells.

The session's predictions are grouped by a ``group_by`` spec (default: the active model's training
``group_by``, else :data:`~napari_cellclass.core.plates.DEFAULT_GROUP_BY`); the table lists each group's
image count and the fraction of the chosen class, the heatmap colours each well of a plate by it (grey:
no images). Clicking a well or a row shows that group's images. Predictions less sure than "uncertain
below" count as ``uncertain``. The part is folded away until its check box is ticked.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, Table
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor, QImage, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem

from ..core.errors import CellclassError
from ..core.groups import parse_group_spec
from ..core.model_folder import read_model_config
from ..core.plates import (
    DEFAULT_GROUP_BY,
    NO_GROUP,
    GroupSummary,
    ScreenSummary,
    default_group_by,
    summarize_groups,
)
from ..core.predictions import UNCERTAIN, Prediction
from .compact import show_rows
from .session import CellclassSession
from .viewer_link import current_project, show_images

if TYPE_CHECKING:
    import napari

TABLE_COLUMNS = ["n", "fraction"]
EMPTY_WELL = QColor("#d0d0d0")
#: Pixels per well side: 96-well plates and bigger ones both fit the dock's width.
CELL_PX = {96: 24, 384: 14}
SMALL_CELL_PX = 8
ONE_PLATE = "(one plate)"


def _colormap() -> Any:
    import matplotlib

    return matplotlib.colormaps["viridis"]


def model_group_by(folder: Any) -> str:
    """The training ``group_by`` of a model folder, else the default spec."""
    if folder is None:
        return DEFAULT_GROUP_BY
    try:
        return default_group_by(read_model_config(folder))
    except CellclassError:
        return DEFAULT_GROUP_BY


class PlatePanel(Container):
    """Per-group summary of the session's predictions, and the plate heatmap of a chosen class."""

    def __init__(self, viewer: napari.viewer.Viewer, session: CellclassSession) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.session = session
        self.summary: ScreenSummary | None = None
        self._rows: list[GroupSummary] = []
        self.open = CheckBox(text="per-well summary and plate heatmap", value=False)
        self.group_by = LineEdit(label="group by", value="",
                                 tooltip="regex with named groups plate and well, folder, folder:N or column:NAME; "
                                         "empty: the model's training group_by, else the well in the file name")
        # choices from callables: napari resets a dock's choices when layers come and go
        self.class_choice = ComboBox(label="class", choices=self._class_choices)
        self.plate_choice = ComboBox(label="plate", choices=self._plate_choices)
        self.note = Label(value="")
        self.note.native.setWordWrap(True)
        self.table = Table(value={"data": [], "index": [], "columns": TABLE_COLUMNS})
        self.table.read_only = True
        show_rows(self.table, 5)
        self.table.native.cellClicked.connect(lambda row, _c: self.show_group(self._rows[row])
                                              if 0 <= row < len(self._rows) else None)
        self.grid = QTableWidget()
        self.grid.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.grid.cellClicked.connect(self._on_well_clicked)
        self.legend = QLabel()
        self.caption = Label(value="")
        self.key = Container(widgets=[Label(value="0"), self.caption], layout="horizontal", labels=False)
        self.key.native.layout().insertWidget(1, self.legend)
        self.body = Container(widgets=[Container(widgets=[self.group_by, self.class_choice, self.plate_choice],
                                                 labels=True), self.note, self.table], labels=False)
        self.body.append(self.key)
        self.body.native.layout().insertWidget(3, self.grid)  # between the table and the colour key
        self.extend([self.open, self.body])
        self.body.visible = False
        self.open.changed.connect(self._on_open)
        self.group_by.changed.connect(lambda _v: self.refresh())
        self.class_choice.changed.connect(lambda _v: self._draw())
        self.plate_choice.changed.connect(lambda _v: self._draw_plate())
        for signal in (session.predictions_changed, session.marks_changed):
            signal.connect(self.refresh)
        session.model_changed.connect(self._on_model)
        self._on_model(session.model)

    # ------------------------------------------------------------------ state
    @property
    def spec(self) -> str:
        """The group_by in use (the field, else the model's, else the default)."""
        return str(self.group_by.value).strip() or self._default

    def _on_model(self, folder: Any) -> None:
        self._default = model_group_by(folder)
        self.group_by.native.setPlaceholderText(self._default)
        self.refresh()

    def _on_open(self, value: bool) -> None:
        self.body.visible = bool(value)
        self.refresh()

    def _predictions(self) -> Mapping[str, Prediction]:
        """The session's predictions; those less sure than "uncertain below" have the verdict ``uncertain``."""
        s = self.session
        if s.min_confidence <= 0:
            return s.predictions
        return {i: dataclasses.replace(p, verdict=UNCERTAIN if i in s.uncertain_ids else ";".join(p.classes))
                for i, p in s.predictions.items()}

    def _class_choices(self, _widget: Any = None) -> list[str]:
        return list(self.summary.columns) if self.summary is not None else []

    def _plate_choices(self, _widget: Any = None) -> list[str]:
        return [p or ONE_PLATE for p in self.summary.plates()] if self.summary is not None else []

    def refresh(self) -> None:
        """Summarise the predictions again (only while the part is open)."""
        if not self.open.value:
            return
        project = self.session.project or current_project(self.viewer)
        preds = self._predictions()
        self.summary, self.note.value = None, ""
        if not preds:
            self.note.value = "no predictions yet"
        else:
            try:
                spec = parse_group_spec(self.spec)
                assert spec is not None
                classes = project.class_names if project is not None else None
                self.summary = summarize_groups(preds, spec, project, classes)
            except CellclassError as exc:
                self.note.value = " ".join(str(exc).split())
        summary = self.summary
        with self.class_choice.changed.blocked(), self.plate_choice.changed.blocked():
            self.class_choice.reset_choices()  # keeps the value when it is still a choice
            self.plate_choice.reset_choices()
        plates = summary.plates() if summary is not None else []
        self.plate_choice.visible = len(plates) > 1
        if summary is not None:
            wells = sum(g.position is not None for g in summary.groups)
            self.note.value = "; ".join([f"{len(summary.groups)} group(s), {wells} well(s) on {len(plates)} plate(s) "
                                         f"of {summary.layout.wells}", *summary.notes])
        self._draw()

    # ------------------------------------------------------------------ drawing
    @property
    def plate(self) -> str:
        """The plate shown."""
        value = self.plate_choice.value
        return "" if value in (None, ONE_PLATE) else str(value)

    def _draw(self) -> None:
        summary, cls = self.summary, self.class_choice.value
        self._rows = list(summary.groups) if summary is not None and cls else []
        data = [[g.n, f"{g.fractions.get(cls, 0.0):.3f}"] for g in self._rows]
        self.table.value = {"data": data, "index": [g.group for g in self._rows], "columns": TABLE_COLUMNS}
        self._draw_plate()

    def _draw_plate(self) -> None:
        summary, cls = self.summary, self.class_choice.value
        if summary is None or not cls or not summary.plates():
            self.grid.clear()
            self.grid.setRowCount(0)
            self.grid.setColumnCount(0)
            self.grid.setVisible(False)
            self.key.visible = False
            return
        layout = summary.layout
        fraction, n = summary.grid(self.plate, cls)
        g = self.grid
        g.clear()
        g.setRowCount(layout.rows)
        g.setColumnCount(layout.columns)
        g.setVerticalHeaderLabels(layout.row_names())
        g.setHorizontalHeaderLabels([str(c + 1) for c in range(layout.columns)])
        px = CELL_PX.get(layout.wells, SMALL_CELL_PX)
        for header in (g.horizontalHeader(), g.verticalHeader()):
            header.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
            header.setDefaultSectionSize(px)
            header.setMinimumSectionSize(px)
            font = header.font()
            font.setPointSize(7)
            header.setFont(font)
        cmap = _colormap()
        for (r, c), f in np.ndenumerate(fraction):
            item = QTableWidgetItem("")
            well = f"{layout.row_names()[r]}{c + 1:02d}"
            if np.isnan(f):
                item.setBackground(QBrush(EMPTY_WELL, Qt.BrushStyle.BDiagPattern))
                item.setToolTip(f"{well}: no images")
            else:
                item.setBackground(QColor.fromRgbF(*cmap(float(f))))
                item.setToolTip(f"{well}: {cls} {f:.0%} of {n[r, c]} image(s)")
            g.setItem(r, c, item)
        width = g.verticalHeader().sizeHint().width() + px * layout.columns + 2 * g.frameWidth() + 2
        height = g.horizontalHeader().sizeHint().height() + px * layout.rows + 2 * g.frameWidth() + 2
        g.setFixedSize(width, height)
        g.setVisible(True)
        self.legend.setPixmap(self._legend_pixmap())
        self.caption.value = f"1  fraction of {cls}; hatched: no images"
        self.key.visible = True

    def _legend_pixmap(self) -> QPixmap:
        ramp = (_colormap()(np.linspace(0, 1, 120))[None, :, :] * 255).astype(np.uint8)
        ramp = np.ascontiguousarray(np.repeat(ramp, 10, axis=0))
        image = QImage(ramp.data, ramp.shape[1], ramp.shape[0], 4 * ramp.shape[1], QImage.Format.Format_RGBA8888)
        return QPixmap.fromImage(image.copy())

    # ------------------------------------------------------------------ clicks
    def group_at(self, row: int, column: int) -> GroupSummary | None:
        """The group of a well of the plate shown."""
        return self.summary.find(self.plate, (row, column)) if self.summary is not None else None

    def _on_well_clicked(self, row: int, column: int) -> None:
        group = self.group_at(row, column)
        if group is not None:
            self.show_group(group)

    def show_group(self, group: GroupSummary) -> list[str]:
        """Show the images of a group in the viewer; returns their ids."""
        project = self.session.project or current_project(self.viewer)
        if project is None:
            return []
        title = "no group" if group.group == NO_GROUP else f"well {group.group}"
        return show_images(self.viewer, project, list(group.image_ids), title=title)

    def close(self) -> None:
        """Stop following the session (the dock closed)."""
        for signal in (self.session.predictions_changed, self.session.marks_changed):
            signal.disconnect(self.refresh)
        self.session.model_changed.disconnect(self._on_model)
        super().close()
