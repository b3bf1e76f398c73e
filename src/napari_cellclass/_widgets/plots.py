"""Live loss and accuracy curves of training runs (matplotlib, drawn off the GUI thread).

Every run stays in the run list, so training again never loses the previous curves: the chosen
run is drawn in full colour, the other runs (optionally) faded behind it. The best validation
epoch is marked with a star on both plots.

Drawing a matplotlib figure takes 50-150 ms of Python (text layout, legends), too long for the
viewer's event loop while training runs. So the figure is a plain Agg figure owned by one
background thread: :meth:`TrainingPlots.redraw` hands it a copy of the runs, and the finished
image comes back to a fixed-size label on the GUI thread (a pixmap swap, no relayout). Requests
made while a drawing is under way are merged into one.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QObject, Qt, Signal, Slot
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel

from .training_model import RunHistory

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
BEST_COLOR = "#2ca02c"


@dataclass(frozen=True)
class PlotRequest:
    """What one drawing shows: copies of the runs, the chosen one, and the size in pixels."""

    runs: tuple[RunHistory, ...]
    current: int | None
    show_all: bool
    width: int
    height: int
    dpi: float


class CurveFigure:
    """The loss and accuracy axes of a :class:`PlotRequest`, rendered to an RGBA array (Qt-free)."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(5.2, 2.6), dpi=100)
        FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.82, wspace=0.28)
        self.ax_loss, self.ax_acc = self.figure.subplots(1, 2)

    def render(self, req: PlotRequest) -> np.ndarray:
        """Draw ``req`` and return the image, shape ``(height, width, 4)``, uint8."""
        fig = self.figure
        fig.set_dpi(req.dpi)
        fig.set_size_inches(req.width / req.dpi, req.height / req.dpi)
        cur = req.runs[req.current] if req.current is not None and 0 <= req.current < len(req.runs) else None
        for ax, key, title in ((self.ax_loss, "loss", "loss"), (self.ax_acc, "accuracy", "accuracy")):
            _draw_axes(ax, key, title, req.runs, cur, req.show_all)
        fig.suptitle(cur.label if cur is not None else "", fontsize=9)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy()


def _draw_axes(ax: Axes, key: str, title: str, runs: Sequence[RunHistory], cur: RunHistory | None,
               show_all: bool) -> None:
    ax.clear()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    if show_all:
        for run in runs:
            if run is not cur and run.epochs:
                ax.plot(run.epochs, getattr(run, f"val_{key}"), color="0.6", lw=1, alpha=0.5)
    if cur is None or not cur.epochs:
        return
    ax.plot(cur.epochs, getattr(cur, f"train_{key}"), "o-", color=TRAIN_COLOR, ms=3, lw=1.5, label="train")
    ax.plot(cur.epochs, getattr(cur, f"val_{key}"), "o-", color=VAL_COLOR, ms=3, lw=1.5, label="validation")
    best = cur.best_point(f"val_{key}")
    if best is not None:
        ax.plot([best[0]], [best[1]], "*", color=BEST_COLOR, ms=13, mec="k", mew=0.6, zorder=5,
                label=f"best (epoch {best[0]})")
    if key == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="best")


class _Delivery(QObject):
    """Carries finished images from the drawing thread to the GUI thread (queued signal).

    A child of the image label: when the dock is deleted, late images are dropped with it.
    """

    rendered = Signal(object)

    def __init__(self, show: object, parent: QObject) -> None:
        super().__init__(parent)
        self._show = show
        self.rendered.connect(self._deliver)

    @Slot(object)
    def _deliver(self, image: object) -> None:
        self._show(image)  # type: ignore[operator]


class TrainingPlots(Container):
    """Loss (left) and accuracy (right) per epoch for training and validation."""

    def __init__(self, height: float = 2.6, width: float = 5.2) -> None:
        super().__init__(labels=False)
        self._runs: Sequence[RunHistory] = ()
        self.run_choice = ComboBox(label="Run", choices=self._run_choices)
        self.show_all = CheckBox(text="show earlier runs (faded)", value=True)
        self.extend([Container(widgets=[self.run_choice, self.show_all], layout="horizontal", labels=False)])
        self._size = (int(width * 100), int(height * 100))
        # a fixed-size label: new images and text changes elsewhere in the dock never relayout
        self.image = QLabel()
        self.image.setFixedSize(*self._size)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.native.layout().addWidget(self.image)
        self._curves = CurveFigure()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellclass-plots")
        self._lock = threading.Lock()
        self._pending: PlotRequest | None = None
        self._busy = False
        self._closed = False
        self._delivery = _Delivery(self._show, self.image)
        self.run_choice.changed.connect(lambda _v: self.redraw())
        self.show_all.changed.connect(lambda _v: self.redraw())
        self.redraw()

    # ------------------------------------------------------------------ state
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

    def points(self, curve: str = "val_loss") -> list[tuple[float, float]]:
        """The ``(epoch, value)`` points drawn for a curve of the chosen run (for tests and scripts)."""
        cur = self.current
        if cur is None:
            return []
        return list(zip(cur.epochs, getattr(cur, curve)))

    # ------------------------------------------------------------------ drawing
    @property
    def figure(self) -> Figure:
        """The drawn figure (read it only when :attr:`rendering` is False)."""
        return self._curves.figure

    @property
    def ax_loss(self) -> Axes:
        return self._curves.ax_loss

    @property
    def ax_acc(self) -> Axes:
        return self._curves.ax_acc

    @property
    def rendering(self) -> bool:
        """Whether a drawing is under way or waiting."""
        with self._lock:
            return self._busy or self._pending is not None

    def redraw(self) -> None:
        """Draw the chosen run (and the others faded) in the background; returns at once."""
        if self._closed:
            return
        ratio = max(1.0, float(self.image.devicePixelRatioF()))
        req = PlotRequest(tuple(copy.deepcopy(list(self._runs))), self.run_choice.value,
                          bool(self.show_all.value), int(self._size[0] * ratio), int(self._size[1] * ratio),
                          100.0 * ratio)
        with self._lock:
            self._pending = req
            if self._busy:
                return  # the running drawing picks this request up when it ends
            self._busy = True
        self._executor.submit(self._draw_pending)

    def _draw_pending(self) -> None:
        """Drawing thread: draw the newest request until none is left."""
        while True:
            with self._lock:
                req, self._pending = self._pending, None
                if req is None:
                    self._busy = False
                    return
            try:
                image = self._curves.render(req)
            except Exception:  # noqa: BLE001 - a failed drawing must not stop later ones
                import logging

                logging.getLogger(__name__).exception("drawing the training curves failed")
                continue
            try:
                self._delivery.rendered.emit((image, req.dpi / 100.0))
            except RuntimeError:  # the dock was deleted meanwhile
                with self._lock:
                    self._pending, self._busy = None, False
                return

    def _show(self, item: object) -> None:
        """GUI thread: show a finished image."""
        image, ratio = item  # type: ignore[misc]
        h, w = image.shape[:2]
        qimage = QImage(image.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        pixmap = QPixmap.fromImage(qimage)
        pixmap.setDevicePixelRatio(ratio)
        self.image.setPixmap(pixmap)

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until the drawings asked for so far are done (scripts and tests); False on timeout."""
        import time

        end = time.monotonic() + timeout
        while self.rendering and time.monotonic() < end:
            time.sleep(0.01)
        return not self.rendering

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        super().close()
