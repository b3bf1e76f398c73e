"""Live loss and accuracy curves of training runs, painted with Qt.

Every run stays in the run list, so training again never loses the previous curves: the chosen
run is drawn in full colour, the other runs (optionally) faded behind it. The best validation
epoch is marked with a star on both plots.

The curves are painted with ``QPainter`` in a fixed-size widget: a repaint costs about a
millisecond of C++ work on the GUI thread, where a matplotlib figure took 50-150 ms of Python
(text layout, legends) and, drawn in a thread, still held the GIL the viewer needs. What to draw
is computed by :func:`panel_layout` (Qt-free), so tests and scripts can read the drawn points,
axis ranges and legend without pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from magicgui.widgets import CheckBox, ComboBox, Container
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

from .training_model import RunHistory

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
BEST_COLOR = "#2ca02c"
FADED_COLOR = "#999999"
PANELS: tuple[tuple[str, str], ...] = (("loss", "loss"), ("accuracy", "accuracy"))


@dataclass
class Series:
    """One drawn curve: its points, colour and legend label (empty: not in the legend)."""

    points: list[tuple[float, float]]
    color: str
    label: str = ""
    markers: bool = True
    faded: bool = False


@dataclass
class Panel:
    """One plot: title, data ranges, ticks, curves, the best-epoch star and the legend."""

    title: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_ticks: list[float]
    y_ticks: list[float]
    series: list[Series] = field(default_factory=list)
    best: tuple[float, float] | None = None
    legend: list[tuple[str, str]] = field(default_factory=list)  # (label, colour)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def panel_layout(key: str, title: str, runs: Sequence[RunHistory], current: RunHistory | None,
                 show_all: bool) -> Panel:
    """What a panel shows for ``key`` (``'loss'`` or ``'accuracy'``), free of Qt."""
    series: list[Series] = []
    if show_all:
        for run in runs:
            if run is not current and run.epochs:
                series.append(Series(list(zip(run.epochs, getattr(run, f"val_{key}"), strict=True)), FADED_COLOR,
                                     markers=False, faded=True))
    best = None
    legend: list[tuple[str, str]] = []
    if current is not None and current.epochs:
        epochs = current.epochs
        series.append(Series(list(zip(epochs, getattr(current, f"train_{key}"), strict=True)), TRAIN_COLOR, "train"))
        series.append(Series(list(zip(epochs, getattr(current, f"val_{key}"), strict=True)), VAL_COLOR, "validation"))
        legend = [("train", TRAIN_COLOR), ("validation", VAL_COLOR)]
        point = current.best_point(f"val_{key}")
        if point is not None:
            best = (float(point[0]), float(point[1]))
            legend.append((f"best (epoch {point[0]})", BEST_COLOR))
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if math.isfinite(y)]
    x_hi = max(xs, default=1.0)
    x_range = (min(xs, default=0.0) - 0.3, max(x_hi, min(xs, default=0.0) + 1) + 0.3)
    if key == "accuracy":
        y_range = (-0.02, 1.02)
    elif ys:
        lo, hi = min(ys), max(ys)
        pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 0.05)
        y_range = (lo - pad, hi + pad)
    else:
        y_range = (0.0, 1.0)
    x_ticks = [t for t in nice_ticks(max(1.0, x_range[0]), x_range[1], 6) if float(t).is_integer()]
    return Panel(title, x_range, y_range, x_ticks or [1.0], nice_ticks(*y_range, 5), series, best, legend)


def _tick_text(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


class CurvesCanvas(QWidget):
    """Paints the panels of the chosen run; a repaint is cheap and never resizes anything."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.setFixedSize(width, height)
        self.panels: list[Panel] = []
        self.title = ""

    def set_panels(self, panels: list[Panel], title: str) -> None:
        self.panels, self.title = panels, title
        self.update()  # painted on the next event-loop pass

    def paintEvent(self, _event: object) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("white"))
        font = QFont(self.font())
        font.setPointSizeF(8)
        p.setFont(font)
        w, h = self.width(), self.height()
        p.setPen(QColor("black"))
        p.drawText(QRectF(0, 2, w, 16), Qt.AlignmentFlag.AlignHCenter, self.title)
        n = max(1, len(self.panels))
        for k, panel in enumerate(self.panels):
            self._paint_panel(p, panel, QRectF(k * w / n, 18, w / n, h - 18))
        p.end()

    def _paint_panel(self, p: QPainter, panel: Panel, box: QRectF) -> None:
        fm = p.fontMetrics()
        plot = QRectF(box.left() + 42, box.top() + 18, box.width() - 52, box.height() - 18 - 34)
        (x0, x1), (y0, y1) = panel.x_range, panel.y_range

        def at(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (y - y0) / (y1 - y0) * plot.height())

        p.setPen(QColor("black"))
        p.drawText(QRectF(plot.left(), box.top(), plot.width(), 16), Qt.AlignmentFlag.AlignHCenter, panel.title)
        grid = QPen(QColor(0, 0, 0, 40))
        for t in panel.y_ticks:
            y = at(x0, t).y()
            p.setPen(grid)
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(QColor("black"))
            p.drawText(QRectF(box.left(), y - 8, 38, 16),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, _tick_text(t))
        for t in panel.x_ticks:
            x = at(t, y0).x()
            p.setPen(grid)
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.setPen(QColor("black"))
            p.drawText(QRectF(x - 20, plot.bottom() + 2, 40, 14), Qt.AlignmentFlag.AlignHCenter, _tick_text(t))
        p.drawText(QRectF(plot.left(), plot.bottom() + 15, plot.width(), 14), Qt.AlignmentFlag.AlignHCenter,
                   "epoch")
        p.setPen(QPen(QColor("black"), 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(plot)
        p.save()
        p.setClipRect(plot.adjusted(-6, -6, 6, 6))
        for s in panel.series:
            pts = [at(x, y) for x, y in s.points if math.isfinite(y)]
            color = QColor(s.color)
            if s.faded:
                color.setAlpha(130)
            p.setPen(QPen(color, 1.0 if s.faded else 1.5))
            p.drawPolyline(QPolygonF(pts))
            if s.markers:
                p.setBrush(color)
                for pt in pts:
                    p.drawEllipse(pt, 2.5, 2.5)
                p.setBrush(Qt.BrushStyle.NoBrush)
        if panel.best is not None:
            p.setPen(QPen(QColor("black"), 0.6))
            p.setBrush(QColor(BEST_COLOR))
            p.drawPath(_star(at(*panel.best), 7.0))
        p.restore()
        if panel.legend:
            width = max(fm.horizontalAdvance(label) for label, _ in panel.legend) + 26
            line = fm.height()
            leg = QRectF(plot.right() - width - 4, plot.top() + 4, width, line * len(panel.legend) + 4)
            if panel.title == "accuracy":  # accuracy rises to the top right: keep the legend below
                leg.moveBottom(plot.bottom() - 4)
            p.setPen(QPen(QColor(0, 0, 0, 60)))
            p.setBrush(QColor(255, 255, 255, 220))
            p.drawRect(leg)
            for k, (label, color) in enumerate(panel.legend):
                y = leg.top() + 2 + k * line + line / 2
                p.setPen(QPen(QColor(color), 2))
                p.drawLine(QPointF(leg.left() + 4, y), QPointF(leg.left() + 18, y))
                p.setPen(QColor("black"))
                p.drawText(QRectF(leg.left() + 22, y - line / 2, width - 22, line),
                           Qt.AlignmentFlag.AlignVCenter, label)


def _star(center: QPointF, radius: float) -> QPainterPath:
    path = QPainterPath()
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pt = QPointF(center.x() + r * math.cos(a), center.y() + r * math.sin(a))
        path.moveTo(pt) if k == 0 else path.lineTo(pt)
    path.closeSubpath()
    return path


class TrainingPlots(Container):
    """Loss (left) and accuracy (right) per epoch for training and validation."""

    def __init__(self, height: float = 2.6, width: float = 5.2) -> None:
        super().__init__(labels=False)
        self._runs: Sequence[RunHistory] = ()
        self.run_choice = ComboBox(label="Run", choices=self._run_choices)
        self.show_all = CheckBox(text="show earlier runs (faded)", value=True)
        self.extend([Container(widgets=[self.run_choice, self.show_all], layout="horizontal", labels=False)])
        self.canvas = CurvesCanvas(int(width * 100), int(height * 100))
        self.native.layout().addWidget(self.canvas)
        self.run_choice.changed.connect(lambda _v: self.redraw())
        self.show_all.changed.connect(lambda _v: self.redraw())
        self.redraw()

    def _run_choices(self, _widget: object = None) -> list[tuple[str, int]]:
        return [(r.label, k) for k, r in enumerate(self._runs)]

    def set_runs(self, runs: Sequence[RunHistory], follow_last: bool = True) -> None:
        """Show these runs; with ``follow_last`` the newest run becomes the chosen one."""
        self._runs = runs
        with self.run_choice.changed.blocked():
            self.run_choice.reset_choices()
            if runs and (follow_last or self.run_choice.value is None):
                self.run_choice.value = len(runs) - 1
        self.redraw()

    @property
    def current(self) -> RunHistory | None:
        k = self.run_choice.value
        return self._runs[k] if k is not None and 0 <= k < len(self._runs) else None

    @property
    def panels(self) -> list[Panel]:
        """What is drawn: the loss and the accuracy panel."""
        return self.canvas.panels

    def redraw(self) -> None:
        """Draw the chosen run (and the others faded) on both panels (painted on the next loop pass)."""
        cur = self.current
        panels = [panel_layout(key, title, self._runs, cur, bool(self.show_all.value)) for key, title in PANELS]
        self.canvas.set_panels(panels, cur.label if cur is not None else "")

    def legend(self, panel: str = "loss") -> list[str]:
        """The legend entries of a panel (``'loss'`` or ``'accuracy'``)."""
        return [label for label, _ in self.panels[[k for k, _ in PANELS].index(panel)].legend]

    def points(self, curve: str = "val_loss") -> list[tuple[float, float]]:
        """The ``(epoch, value)`` points drawn for a curve of the chosen run (for tests and scripts)."""
        cur = self.current
        if cur is None:
            return []
        return list(zip(cur.epochs, getattr(cur, curve), strict=True))
