"""Take the README screenshot of labelling in napari (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/screenshot_labelling.py

Writes a small sample project to a temporary folder, opens it with the napari-cellclass reader
(which docks the labelling widget), labels a few images with the widget's F1/F2 actions and
saves the window to ``docs/images/labelling.png``.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "labelling.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass.core.sample import make_sample_project

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_sample_project(Path(tmp) / "u2os", n=32, seed=0, labelled_fraction=0.0)
        viewer = napari.Viewer(title="napari-cellclass: labelling")
        viewer.window.resize(1500, 950)
        viewer.open(str(project.root), plugin="napari-cellclass")
        for _ in range(20):
            QApplication.processEvents()
        widget = next(w for w in (d.inner_widget() for d in viewer.window._wrapped_dock_widgets.values())
                      if isinstance(w, LabellingWidget))
        ids = widget.pager.page_ids
        truth = _ground_truth(project.root)
        for iid in ids[:11]:
            widget.class_choice.value = truth.get(iid, widget.class_choice.value)
            widget.select_image(iid)
            widget.label_and_next()
        for _ in range(20):
            QApplication.processEvents()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False, flash=False)
        viewer.close()
    print(f"wrote {args.out}")


def _ground_truth(root: Path) -> dict[str, str]:
    from napari_cellclass.core.sample import ground_truth

    return ground_truth(root)


if __name__ == "__main__":
    main()
