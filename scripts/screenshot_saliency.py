"""Make the README's saliency figure from ``napari-cellclass explain`` (and, with --napari, the Explain layer).

    .venv/bin/python scripts/screenshot_saliency.py
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_saliency.py --napari

Writes the sample project (200 images, 60 % labelled) to a temporary folder, trains the default
model on it (CPU), predicts the unlabelled images, runs ``napari-cellclass explain`` on the two most
confidently and correctly predicted images of each class, once per method, and puts each image
beside its two PNG overlays (Grad-CAM, integrated gradients): ``docs/images/saliency.png``.
``--napari`` also opens the project in napari, selects one of them, clicks "Explain selected" in
the Predictions dock and saves the window: ``docs/images/explain.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 256
CAPTION = 22


def pick(project, model) -> list[str]:
    """The two most confident correct predictions of each class among the unlabelled images."""
    import csv

    from napari_cellclass import predict
    from napari_cellclass.core.sample import GROUND_TRUTH

    with open(project.root / GROUND_TRUTH, encoding="utf-8") as fh:
        truth = {row["image_id"]: row["class"] for row in csv.DictReader(fh)}
    preds = predict(model, project, write=False, device="cpu")
    ids = []
    for cls in project.class_names:
        right = [(c, i) for i, t, c in zip(preds.ids, preds.top_class, preds.confidence, strict=True)
                 if t == cls and truth.get(i) == cls]
        ids += [i for _c, i in sorted(right, reverse=True)[:2]]
    return ids


def figure(project, results: list[dict], out: Path) -> None:
    """Each image (the brightest stretched channel) beside its overlays, with its class and probability."""
    from PIL import Image, ImageDraw

    from napari_cellclass.learn.saliency_files import display_rgb

    per_row = 2  # images per row, each with 1 + len(results) tiles
    width = 1 + len(results)
    first = results[0]["images"]
    rows = (len(first) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * width * TILE + (per_row - 1) * 12, rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, item in enumerate(first):
        x0, y0 = (k % per_row) * (width * TILE + 12), (k // per_row) * (TILE + CAPTION)
        plain = (display_rgb(project.read_image(item["image_id"])) * 255).astype(np.uint8)
        tiles = [Image.fromarray(plain)] + [Image.open(r["images"][k]["png"]).convert("RGB") for r in results]
        for j, img in enumerate(tiles):
            sheet.paste(img.resize((TILE, TILE), Image.BILINEAR), (x0 + j * TILE, y0 + CAPTION))
        methods = " | ".join(r["method"] for r in results)
        draw.text((x0 + 6, y0 + 5), f"{item['image_id'].rsplit('/', 1)[-1]}: {item['class']}, "
                                    f"p={item['probability']:.2f}    image | {methods}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def napari_screenshot(project, model: Path, image_id: str, out: Path) -> None:
    """The Predictions dock's Explain part on the sample: the map in the cell after its image."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass._widgets.napari_private import main_window
    from napari_cellclass._widgets.predict_panel import PredictionsWidget
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass._widgets.viewer_link import image_layers

    viewer = napari.Viewer(show=True)
    main_window(viewer).resize(1800, 1000)
    labelling = LabellingWidget(viewer, project)
    labelling.page_size.value = 8
    viewer.window.add_dock_widget(labelling, name="Labelling", area="left")
    predictions = PredictionsWidget(viewer)
    viewer.window.add_dock_widget(predictions, name="Predictions", area="right")
    session_for(viewer).set_model(model)
    app = QApplication.instance()
    labelling.shared.show_images([image_id], "explained", select=image_id)
    layers = image_layers(viewer, project)
    viewer.layers.selection.active = layers[image_id][0]
    part = predictions.explain_part
    part.button.native.click()
    end = time.perf_counter() + 300
    while (part.job.running or not part.maps.layers) and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)
    viewer.reset_view()
    for _ in range(10):
        app.processEvents()
    main_window(viewer).grab().save(str(out))
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--napari", action="store_true", help="also the napari screenshot (needs a display)")
    args = parser.parse_args()
    if args.napari:
        from napari_cellclass._widgets.training_model import import_learning_libraries

        import_learning_libraries()  # before any OpenGL context

    from napari_cellclass.cli import main as cli
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import TrainConfig, train

    tmp = Path(tempfile.mkdtemp())
    project = make_sample_project(tmp / "u2os", n=200, seed=0)
    model = train(project, TrainConfig(device="cpu", seed=0)).model_dir
    ids = pick(project, model)
    results = []
    for method in ("gradcam", "integrated-gradients"):  # napari-cellclass explain DIR --model M --ids ... --out DIR
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = cli(["explain", str(project.root), "--model", str(model), "--ids", *ids, "--method", method,
                        "--out", str(tmp / "maps"), "--json"])
        assert code == 0, text.getvalue()
        results.append(json.loads(text.getvalue()))
    figure(project, results, args.out / "saliency.png")
    print("explained:", [(i["image_id"], i["class"], round(i["probability"], 3), i["layer"])
                         for i in results[0]["images"]])
    print(args.out / "saliency.png")
    if args.napari:
        napari_screenshot(project, model, ids[-1], args.out / "explain.png")
        print(args.out / "explain.png")


if __name__ == "__main__":
    main()
