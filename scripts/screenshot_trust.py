"""Take the README screenshot of calibrated confidence in napari (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_trust.py

Writes the sample project (200 images, 60 % labelled) to a temporary folder, trains a small model
(MobileNetV3 at 32 px, 3 epochs: it is unsure of some images), predicts the unlabelled images in
the Predictions dock with "uncertain below" at 0.8, shows the "uncertain" images in the Labelling
dock (grey borders) and the Metrics dock, and saves the window to ``docs/images/trust.png`` and the
Metrics dock's calibration part (the reliability diagram) to ``docs/images/trust_metrics.png``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "trust.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass._widgets.labelling_model import FILTER_UNCERTAIN
    from napari_cellclass._widgets.metrics_dock import MetricsDock
    from napari_cellclass._widgets.predict_panel import PredictionsWidget
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass._widgets.training_model import import_learning_libraries
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import_learning_libraries()

    with tempfile.TemporaryDirectory() as tmp:
        project = make_sample_project(Path(tmp) / "u2os", n=200, seed=0)
        model = train(project, TrainConfig(backbone="mobilenetv3_small_100", input_size=32, epochs=3,
                                           device="cpu")).model_dir
        viewer = napari.Viewer(title="napari-cellclass")
        app = QApplication.instance()

        def wait(seconds: float, until=lambda: False) -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end and not until():
                app.processEvents()
                time.sleep(0.02)

        viewer.window.resize(1900, 1050)
        labelling = LabellingWidget(viewer, project)
        labelling.page_size.value = 16
        viewer.window.add_dock_widget(labelling, name="Labelling", area="right")
        metrics = MetricsDock(viewer)
        viewer.window.add_dock_widget(metrics, name="Metrics", area="left")
        predictions = PredictionsWidget(viewer, confirm=lambda q: True)
        viewer.window.add_dock_widget(predictions, name="Predictions", area="right")
        shared = session_for(viewer)
        shared.set_model(model)
        wait(120, lambda: metrics.evaluation is not None and not metrics.running)
        predictions.predict("unlabelled")
        wait(120, lambda: not predictions.running)
        predictions.uncertain.slider.value = 0.8
        labelling.show_filter(FILTER_UNCERTAIN)
        wait(3)
        viewer.reset_view()
        wait(1)
        print("uncertain:", len(shared.uncertain), "of", len(predictions.predictions), "predictions;",
              metrics.trust.text.value.replace("\n", "; "))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False)
        part = args.out.with_name(args.out.stem + "_metrics.png")
        metrics.trust.native.grab().save(str(part))
        viewer.close()
        print(part)
    print(args.out)


if __name__ == "__main__":
    main()
