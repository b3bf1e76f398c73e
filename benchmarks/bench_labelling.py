"""Speed of labelling in napari (printed figures, not a test).

1. F2 on a 1,000-image project: from the start of the F2 handler until the next image is the
   selected layer and the sidecar is on disk (fsync on). Median and max over many presses,
   including the presses that turn the page.
2. Turning a page of 16 images of 512x512 16-bit (read, percentile contrast, show, borders).

Run under a display (``xvfb-run -a python benchmarks/bench_labelling.py``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def make_project(folder: Path, n: int, size: int):
    from napari_cellclass.core.project import Project

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(200, 3000, (size, size), dtype=np.uint16)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i:04d}.tif", np.roll(base, i, axis=0))
    project = Project.open(folder)
    project.add_class("mitotic")
    project.add_class("interphase")
    return project


def bench_f2(viewer, root: Path, n_press: int) -> list[float]:
    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass.core.sidecars import sidecar_path

    project = make_project(root / "f2", 1000, 64)
    widget = LabellingWidget(viewer, project)
    viewer.window.add_dock_widget(widget)
    times = []
    for _ in range(n_press):
        ids, _ = widget.selected()
        t0 = time.perf_counter()
        widget.label_and_next()
        new_ids, _ = widget.selected()
        assert sidecar_path(project.root / ids[0]).exists() and new_ids != ids
        times.append(time.perf_counter() - t0)
    viewer.window.remove_dock_widget(widget.native)
    widget.close()
    viewer.layers.clear()
    return times


def bench_page(viewer, root: Path, turns: int) -> list[float]:
    from napari_cellclass._widgets.labelling import LabellingWidget

    project = make_project(root / "pages", 16 * (turns + 1), 512)
    widget = LabellingWidget(viewer, project)
    viewer.window.add_dock_widget(widget)
    times = []
    for _ in range(turns):
        t0 = time.perf_counter()
        widget.next_page()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    import napari

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presses", type=int, default=100)
    ap.add_argument("--turns", type=int, default=5)
    args = ap.parse_args()
    viewer = napari.Viewer(show=True)
    with tempfile.TemporaryDirectory() as tmp:
        f2 = bench_f2(viewer, Path(tmp), args.presses)
        pages = bench_page(viewer, Path(tmp), args.turns)
    viewer.close()
    ms = [t * 1000 for t in f2]
    print(f"F2 on 1,000 images ({len(ms)} presses, fsync on): median {statistics.median(ms):.1f} ms, "
          f"max {max(ms):.1f} ms (aim: median < 30 ms)")
    pg = [t * 1000 for t in pages]
    print(f"page turn, 16 x 512x512 uint16 ({len(pg)} turns): median {statistics.median(pg):.0f} ms, "
          f"max {max(pg):.0f} ms (aim: < 300 ms)")


if __name__ == "__main__":
    main()
