"""Take the README pictures of the per-well summary: the CLI's plate heatmap and the Predictions dock (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_plates.py

Writes a synthetic 96-well screen (``plate1/<well>_f1.tif`` .. ``_f3``, 64 px, the U2OS sample's cells) to
a temporary folder: the share of positive cells grows from column 1 to 12 (a dose response), row A holds
negative and row H positive controls, wells H10-H12 are left empty. 75 images are labelled, a small model
(MobileNetV3 at 48 px, 12 epochs) is trained and ``napari-cellclass predict --all --summary`` draws the
heatmap, copied to ``docs/images/plate_heatmap_cli.png``. The Predictions dock then shows its per-well
part with well D06 clicked (its images in the viewer): ``docs/images/plate_heatmap.png``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "plate_heatmap.png"
POSITIVE = "positive control"


def write_screen(root: Path, fields: int = 3, seed: int = 0) -> tuple[object, dict[str, float]]:
    """The screen's project (controls labelled) and the true share of positive images per well."""
    import tifffile

    from napari_cellclass.core.plates import well_name
    from napari_cellclass.core.project import Project
    from napari_cellclass.core.sample import CLASSES, make_image

    rng = np.random.default_rng(seed)
    share: dict[str, float] = {}
    labels: dict[str, tuple[str, ...]] = {}
    for r in range(8):
        for c in range(12):
            if r == 7 and c >= 9:
                continue  # empty wells
            p = 0.0 if r == 0 else 1.0 if r == 7 else 1 / (1 + np.exp(-(c - 5.5) * 0.9))
            well = well_name(r, c)
            share[well] = p
            for f in range(fields):
                positive = bool(rng.random() < p)
                iid = f"plate1/{well}_f{f + 1}.tif"
                (root / iid).parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(root / iid, make_image(positive, rng, 64), photometric="minisblack",
                                 metadata={"axes": "CYX"})
                if r in (0, 7) or (r == 1 and f == 0):
                    labels[iid] = (CLASSES[int(positive)][0],)
    project = Project.open(root)
    for name, color in CLASSES:
        project.add_class(name, color)
    project.apply_labels(labels, description="controls")
    return project, share


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_cellclass._widgets.predict_panel import PredictionsWidget
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass._widgets.training_model import import_learning_libraries
    from napari_cellclass.cli import main as cli
    from napari_cellclass.core.plates import parse_well
    from napari_cellclass.learn import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import_learning_libraries()

    with tempfile.TemporaryDirectory() as tmp:
        project, _share = write_screen(Path(tmp) / "screen")
        model = train(project, TrainConfig(backbone="mobilenetv3_small_100", input_size=48, epochs=12,
                                           device="cpu")).model_dir
        summary = Path(tmp) / "summary"
        assert cli(["predict", str(project.root), "--model", str(model), "--all", "--summary", str(summary),
                    "--heatmap-class", POSITIVE]) == 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cli_png = args.out.with_name(args.out.stem + "_cli.png")
        shutil.copyfile(summary / "heatmap_plate1_positive-control.png", cli_png)

        viewer = napari.Viewer(title="napari-cellclass")
        app = QApplication.instance()

        def wait(seconds: float) -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                app.processEvents()
                time.sleep(0.02)

        viewer.window.resize(1900, 1050)
        predictions = PredictionsWidget(viewer, project, confirm=lambda q: True)
        viewer.window.add_dock_widget(predictions, name="Predictions", area="right")
        session_for(viewer).set_model(model)
        predictions.uncertain.slider.value = 0.0
        plates = predictions.plates
        plates.open.value = True
        plates.class_choice.value = POSITIVE
        wait(1)
        plates.grid.setCurrentCell(*parse_well("D06"))
        plates.grid.cellClicked.emit(*parse_well("D06"))
        wait(3)
        area = predictions.native.findChild(QScrollArea, "cellclassDockScroll")
        area.ensureWidgetVisible(plates.legend)  # the heatmap in view
        viewer.reset_view()
        wait(1)
        viewer.screenshot(str(args.out), canvas_only=False)
        viewer.close()
    print(cli_png)
    print(args.out)


if __name__ == "__main__":
    main()
