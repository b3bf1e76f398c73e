"""Fixtures for the napari widget tests: tiny projects and a docked labelling widget."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

RED = "#ff0000"
BLUE = "#0000ff"


def write_project(folder: Path, n: int = 6, channels: int = 1, multi_label: bool = False,
                  size: int = 24, classes: tuple[tuple[str, str], ...] = (("alpha", RED), ("beta", BLUE))):
    """A project of ``n`` small 16-bit TIFFs (grey values only, so borders are the only colour)."""
    import tifffile

    from napari_cellclass.core.project import Project

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (channels, size, size) if channels > 1 else (size, size)
        data = rng.integers(100, 4000, shape, dtype=np.uint16)
        tifffile.imwrite(folder / f"img{i:02d}.tif", data,
                         metadata={"axes": "CYX" if channels > 1 else "YX"})
    project = Project.open(folder, multi_label=multi_label, fsync=False)
    for name, color in classes:
        project.add_class(name, color)
    return project


@pytest.fixture
def notifications(monkeypatch) -> list[tuple[str, str]]:
    """Messages shown through napari notifications, as ``(severity, message)``."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event) -> None:
        seen.append((str(event.severity), str(event.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def open_widget(make_napari_viewer, tmp_path) -> Callable:
    """``open_widget(n=6, channels=1, multi_label=False, page_size=16, display=None)`` -> (viewer, widget, project).

    ``display``: the channel display to draw with (default: the dock's, one RGB layer per image).
    """
    from napari_cellclass._widgets.labelling import LabellingWidget

    answers: dict[str, object] = {"confirm": True, "color": "#00ff00"}

    def make(n: int = 6, channels: int = 1, multi_label: bool = False, page_size: int = 16,
             folder: Path | None = None, display: str | None = None):
        project = write_project(folder or tmp_path / "project", n, channels, multi_label)
        viewer = make_napari_viewer(show=True)
        widget = LabellingWidget(viewer, confirm=lambda q: bool(answers["confirm"]),
                                 pick_color=lambda c: answers["color"])
        widget.page_size.value = page_size
        if display is not None:
            widget.channels.value = display
        viewer.window.add_dock_widget(widget, name="Labelling")
        widget.open_project(project)
        widget.answers = answers
        return viewer, widget, project

    return make


def press(viewer, key: str, ctrl: bool = False) -> None:
    """A real key press on the napari canvas (goes through napari's keymap handling)."""
    from pytestqt.qtbot import QtBot  # noqa: F401  (imported for the side effect of Qt setup)
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_cellclass._widgets.napari_private import canvas_widget

    qt_key = getattr(Qt.Key, f"Key_{key}")
    mod = Qt.KeyboardModifier.ControlModifier if ctrl else Qt.KeyboardModifier.NoModifier
    QTest.keyClick(canvas_widget(viewer), qt_key, mod)
