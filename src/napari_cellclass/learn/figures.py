"""Figures drawn with matplotlib's Agg canvas: reliability diagram, coverage curve, plate heatmaps."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.outputs import SOFTWARE, check_output_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure_rgba", "plate_figure", "save_png", "trust_figure"]

BEFORE_COLOR = "#999999"
AFTER_COLOR = "#1f77b4"
TARGET_COLOR = "#d62728"


def trust_figure(reliability: Mapping[str, Sequence[Mapping[str, float]]], coverage: Mapping[str, np.ndarray],
                 trust: Mapping[str, Any], title: str = "", size: tuple[float, float] = (8.4, 3.8),
                 dpi: int = 100) -> Figure:
    """Two panels: accuracy against confidence per bin (without and with calibration), and accuracy
    against the share of images accepted, with the threshold that reaches the target accuracy.

    Text is sized for the figure: a small figure (a dock) gets small type."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.size": 10 if size[0] >= 7 else 7}):
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        rel, cov = fig.subplots(1, 2)
        _reliability_panel(rel, reliability, trust.get("calibration"))
        _coverage_panel(cov, coverage, trust.get("coverage") or {})
        if title:
            fig.suptitle(title)
    return fig


def _reliability_panel(ax: Any, reliability: Mapping[str, Sequence[Mapping[str, float]]],
                       cal: Mapping[str, Any] | None) -> None:
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="#444444", label="perfectly calibrated")
    shown = ((("before", BEFORE_COLOR, f"raw (ECE {cal['ece_before']:.3f})"),
              ("after", AFTER_COLOR, f"T = {cal['temperature']:.2f} (ECE {cal['ece_after']:.3f})")) if cal
             else (("after", AFTER_COLOR, "model"),))
    lowest = 1.0
    for key, color, label in shown:
        bins = [b for b in reliability.get(key, ()) if b["count"]]
        if not bins:
            continue
        lowest = min(lowest, bins[0]["lower"])
        width = bins[0]["upper"] - bins[0]["lower"]
        offset = -width / 4 if key == "before" else (width / 4 if cal else 0.0)
        xs = [(b["lower"] + b["upper"]) / 2 + offset for b in bins]
        ax.bar(xs, [b["accuracy"] for b in bins], width=width / 2 if cal else width * 0.9, color=color, alpha=0.75,
               label=label)
        if key == "after":  # how many images each bar stands for
            for x, b in zip(xs, bins, strict=True):
                ax.text(x, min(b["accuracy"], 0.97) + 0.01, str(b["count"]), ha="center", fontsize="x-small")
    ax.set(xlim=(min(0.5, math.floor(lowest * 10) / 10), 1), ylim=(0, 1.05), xlabel="confidence",
           ylabel="accuracy", title="reliability (images per bin)")
    ax.legend(loc="upper left", fontsize="x-small")


def _coverage_panel(ax: Any, coverage: Mapping[str, np.ndarray], reach: Mapping[str, Any]) -> None:
    cov, acc = np.asarray(coverage.get("coverage", ())), np.asarray(coverage.get("accuracy", ()))
    ax.plot(cov, acc, color=AFTER_COLOR, lw=1.5)
    target = reach.get("target")
    if target is not None:
        ax.axhline(target, ls=":", lw=1, color=TARGET_COLOR)
    if reach.get("threshold") is not None:
        ax.plot([reach["coverage"]], [reach["accuracy"]], "o", color=TARGET_COLOR)
        ax.text(0.04, 0.06, f"{reach['accuracy']:.0%} accurate on {reach['coverage']:.0%}\nat confidence ≥ "
                            f"{reach['threshold']:.2f}", transform=ax.transAxes, fontsize="small")
    elif target is not None:
        ax.text(0.04, 0.06, f"no confidence reaches {target:.0%}", transform=ax.transAxes, fontsize="small")
    low = float(np.nanmin(acc)) if len(acc) else 0.0
    ax.set(xlim=(0, 1), ylim=(max(0.0, math.floor(low * 10) / 10 - 0.05), 1.01), xlabel="share of images accepted",
           ylabel="accuracy", title="accuracy of the accepted")


def plate_figure(fraction: np.ndarray, n: np.ndarray | None = None, title: str = "", label: str = "fraction",
                 size: tuple[float, float] | None = None, dpi: int = 100) -> Figure:
    """A plate heatmap: ``fraction`` ``(rows, columns)`` per well (0..1, NaN: a well without images, drawn
    hatched grey), row letters, column numbers and a colour bar. ``n`` (image counts) is written in the
    wells of plates up to 96 wells."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ..core.plates import PlateLayout

    rows, cols = fraction.shape
    small = rows * cols <= 96
    size = size or ((7.2, 4.4) if small else (9.0, 5.2) if rows <= 16 else (12.0, 7.4))
    with matplotlib.rc_context({"font.size": 9 if size[0] >= 7 else 7, "hatch.color": "#b0b0b0"}):
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        ax = fig.subplots()
        ax.add_patch(Rectangle((-0.5, -0.5), cols, rows, facecolor="#f0f0f0", hatch="///",
                               edgecolor="none", zorder=0))
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))  # empty wells: hatched background
        im = ax.imshow(np.ma.masked_invalid(fraction), cmap=cmap, vmin=0.0, vmax=1.0, zorder=1,
                       extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
        ax.set_xticks(np.arange(cols), [str(c + 1) for c in range(cols)],
                      fontsize="small" if cols <= 24 else "xx-small")
        ax.set_yticks(np.arange(rows), PlateLayout(rows, cols).row_names(),
                      fontsize="small" if rows <= 16 else "xx-small")
        ax.xaxis.tick_top()
        ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=1.5 if small else 0.5)
        ax.tick_params(which="both", length=0)
        if n is not None and small:
            for (r, c), count in np.ndenumerate(n):
                if count:
                    dark = fraction[r, c] < 0.6  # viridis is dark at the low end
                    ax.text(c, r, str(int(count)), ha="center", va="center", fontsize="x-small",
                            color="white" if dark else "black")
        fig.colorbar(im, ax=ax, label=label, shrink=0.9)
        if title:
            ax.set_title(title)
    return fig


def figure_rgba(fig: Figure) -> np.ndarray:
    """The figure's pixels, ``(height, width, 4)`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG file atomically (a project's own files are refused)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = check_output_file(path)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf, metadata={"Software": SOFTWARE})
    atomic_write_bytes(path, buf.getvalue(), fsync=False)
    return path
