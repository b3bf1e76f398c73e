"""Take the README screenshot of "Suggest N" (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_suggestions.py

Writes the sample project (200 images, 60 % labelled) to a temporary folder, opens it as
``napari-cellclass gui`` does, presses "Suggest 12" in the Labelling dock and saves the window
(gold corners on the canvas, ``★`` ranks in the gallery's "suggested" list) to
``docs/images/suggestions.png``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "suggestions.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.launch import dock_all
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass.core.sample import make_sample_project

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    app = QApplication.instance()

    def wait(seconds: float, until=lambda: False) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not until():
            app.processEvents()
            time.sleep(0.02)

    with tempfile.TemporaryDirectory() as tmp:
        project = make_sample_project(Path(tmp) / "u2os", n=200, seed=0)
        viewer = napari.Viewer(title="napari-cellclass")
        app = QApplication.instance()
        viewer.window.resize(1800, 1000)
        dock_all(viewer, project.root)
        shared = session_for(viewer)
        panel = shared.page_view.curation
        panel.n.value = 12
        panel.suggest_button.native.click()
        wait(180, lambda: len(shared.suggested) == 12 and not panel.job.running)
        wait(4)  # thumbnails
        viewer.reset_view()
        wait(1)
        from napari_cellclass._widgets.borders import SUGGESTED_KEY, has_mark

        page = shared.page_view.page
        print("marked on the canvas:", sum(has_mark(s.layers[0], SUGGESTED_KEY) for s in page.shown.values()),
              "of", len(page.shown))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False)
        viewer.close()
    print(args.out)


if __name__ == "__main__":
    main()
