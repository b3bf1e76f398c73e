"""Screenshot of the Training dock's Export part after a BioImage Model Zoo export (run under Xvfb or a display).

Writes the sample project, trains a small model, makes it active, presses "Export model" and saves
``docs/images/export.png`` (the Training dock scrolled to its model and export parts).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/screenshot_export.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from napari_cellclass._widgets.export_panel import _import_libraries

_import_libraries()  # before the OpenGL context exists

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "export.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_cellclass._widgets.session import session_for
    from napari_cellclass._widgets.training import TrainingWidget
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_sample_project(Path(tmp) / "u2os", n=120, seed=0)
        model = train(project, TrainConfig(epochs=4, device="cpu")).model_dir
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 1000)
        dock = TrainingWidget(viewer, project)
        viewer.window.add_dock_widget(dock, name="Training")
        session_for(viewer).set_model(model)
        app = QApplication.instance()
        part = dock.exports
        part.button.native.click()
        t0 = time.perf_counter()
        while part.job.running and time.perf_counter() - t0 < 600:
            app.processEvents()
            time.sleep(0.01)
        app.processEvents()
        print(part.status.value)
        area = next((w for w in _ancestors(part.native) if isinstance(w, QScrollArea)), None)
        if area is not None:
            app.processEvents()
            area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())
        app.processEvents()
        shot = dock.native.parentWidget().grab()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shot.save(str(args.out))
        print(f"saved {args.out}")
        viewer.close()


def _ancestors(widget):
    while widget is not None:
        yield widget
        widget = widget.parentWidget()


if __name__ == "__main__":
    main()
