"""Screenshots of the Piximi flow in napari on the sample data (run under Xvfb or a display).

Loads the sample project, trains a few epochs from the Training widget, predicts the unlabelled
images, evaluates, and saves ``docs/images/training.png`` (settings and live curves),
``docs/images/metrics.png`` (metrics table and confusion matrix) and
``docs/images/predictions.png`` (the viewer with prediction borders).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/screenshot_training.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from napari_cellclass._widgets.training_model import import_learning_libraries

import_learning_libraries()  # before the OpenGL context exists

ROOT = Path(__file__).resolve().parents[1]


def wait(app, cond, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.005)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass._widgets.metrics_dock import MetricsDock
    from napari_cellclass._widgets.napari_private import main_window
    from napari_cellclass._widgets.predict_panel import PredictionsWidget
    from napari_cellclass._widgets.training import TrainingWidget
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import TrainConfig

    project = make_sample_project(Path(tempfile.mkdtemp()) / "u2os_sample", n=200)
    viewer = napari.Viewer(show=True)
    main_window(viewer).resize(2200, 1200)
    labelling = LabellingWidget(viewer, project)
    labelling.page_size.value = 16
    viewer.window.add_dock_widget(labelling, name="Labelling", area="left")
    training = TrainingWidget(viewer)
    viewer.window.add_dock_widget(training, name="Training", area="right")
    predictions = PredictionsWidget(viewer)
    viewer.window.add_dock_widget(predictions, name="Predictions", area="right", tabify=True)
    metrics = MetricsDock(viewer)
    viewer.window.add_dock_widget(metrics, name="Metrics", area="right", tabify=True)
    app = QApplication.instance()
    training.set_config(TrainConfig(epochs=args.epochs, device="cpu"))  # the defaults otherwise
    training.train()
    wait(app, lambda: not training.running)
    wait(app, lambda: not metrics.running)
    predictions.predict("unlabelled")
    wait(app, lambda: not predictions.running)
    metrics.evaluate("val")  # the held-out validation images
    wait(app, lambda: not metrics.running)
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)

    args.out.mkdir(parents=True, exist_ok=True)
    training.native.parent().raise_()
    training.native.resize(560, training.native.sizeHint().height())
    training.form.show_advanced.value = False
    for _ in range(10):
        app.processEvents()
    training.native.grab().save(str(args.out / "training.png"))
    metrics.native.parent().raise_()
    for _ in range(10):
        app.processEvents()
    metrics.native.grab().save(str(args.out / "metrics.png"))
    predictions.native.parent().raise_()
    predictions.native.parent().setMaximumWidth(620)
    for _ in range(10):
        app.processEvents()
    viewer.reset_view()
    for _ in range(10):
        app.processEvents()
    main_window(viewer).grab().save(str(args.out / "predictions.png"))
    run = training.session.runs[-1]
    print(f"run: {run.label}; val accuracy per epoch {[round(a, 2) for a in run.val_accuracy]}")
    print(f"saved {', '.join(str(args.out / n) for n in ('training.png', 'metrics.png', 'predictions.png'))}")
    viewer.close()


if __name__ == "__main__":
    main()
