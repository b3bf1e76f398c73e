"""Live loss and accuracy curves of training runs (matplotlib embedded in a magicgui container).

Every run stays in the run list, so training again never loses the previous curves: the chosen
run is drawn in full colour, the other runs (optionally) faded behind it. The best validation
epoch is marked with a star on both plots.
"""
from __future__ import annotations

from collections.abc import Sequence

from magicgui.widgets import CheckBox, ComboBox, Container
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

from .training_model import RunHistory

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
BEST_COLOR = "#2ca02c"


class TrainingPlots(Container):
    """Loss (left) and accuracy (right) per epoch for training and validation."""

    def __init__(self, height: float = 2.6) -> None:
        super().__init__(labels=False)
        self._runs: Sequence[RunHistory] = ()
        self.run_choice = ComboBox(label="Run", choices=self._run_choices)
        self.show_all = CheckBox(text="show earlier runs (faded)", value=True)
        self.extend([Container(widgets=[self.run_choice, self.show_all], layout="horizontal", labels=False)])
        self.figure = Figure(figsize=(5.2, height), dpi=100)
        self.figure.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.82, wspace=0.28)
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: text changes elsewhere in the dock never resize (and so never
        # synchronously redraw) the canvas while training runs
        self.canvas.setFixedHeight(int(height * 100))
        self.native.layout().addWidget(self.canvas)
        self.ax_loss, self.ax_acc = self.figure.subplots(1, 2)
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

    def redraw(self) -> None:
        """Draw the chosen run (and the others faded) on both axes."""
        cur = self.current
        for ax, key, title in ((self.ax_loss, "loss", "loss"), (self.ax_acc, "accuracy", "accuracy")):
            ax.clear()
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if self.show_all.value:
                for run in self._runs:
                    if run is not cur and run.epochs:
                        ax.plot(run.epochs, getattr(run, f"val_{key}"), color="0.6", lw=1, alpha=0.5)
            if cur is None or not cur.epochs:
                continue
            ax.plot(cur.epochs, getattr(cur, f"train_{key}"), "o-", color=TRAIN_COLOR, ms=3, lw=1.5,
                    label="train")
            ax.plot(cur.epochs, getattr(cur, f"val_{key}"), "o-", color=VAL_COLOR, ms=3, lw=1.5,
                    label="validation")
            best = cur.best_point(f"val_{key}")
            if best is not None:
                ax.plot([best[0]], [best[1]], "*", color=BEST_COLOR, ms=13, mec="k", mew=0.6, zorder=5,
                        label=f"best (epoch {best[0]})")
            if key == "accuracy":
                ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7, loc="best")
        if cur is not None:
            self.figure.suptitle(cur.label, fontsize=9)
        self.canvas.draw_idle()

    def points(self, curve: str = "val_loss") -> list[tuple[float, float]]:
        """The ``(epoch, value)`` points drawn for a curve of the chosen run (for tests and scripts)."""
        cur = self.current
        if cur is None:
            return []
        return list(zip(cur.epochs, getattr(cur, curve)))
