"""Take the README screenshot of the gallery beside the canvas (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_gallery.py

Writes the sample project (200 images, 60 % labelled) to a temporary folder, opens it as
``napari-cellclass gui`` does (every dock, the gallery beside the canvas), selects a few
thumbnails and saves the window to ``docs/images/gallery.png``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "gallery.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.launch import dock_all
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass.core.sample import make_sample_project

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_sample_project(Path(tmp) / "u2os", n=200, seed=0)
        viewer = napari.Viewer(title="napari-cellclass")
        viewer.window.resize(1800, 1000)
        dock_all(viewer, project.root)
        gallery = session_for(viewer).gallery
        app = QApplication.instance()
        end = time.perf_counter() + 4
        while time.perf_counter() < end:  # thumbnails arrive from their threads
            app.processEvents()
            time.sleep(0.02)
        ids = gallery.model.ids
        gallery.select([ids[5], ids[6]])
        for _ in range(20):
            app.processEvents()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False)
        viewer.close()
    print(args.out)


if __name__ == "__main__":
    main()
