"""The gallery on a generated 100,000-image project (printed figures, not a test; run under a display).

1. Time to the first painted gallery: from creating the dock (project already open) to the first
   paint of its thumbnail view, and until every thumbnail on screen is painted.
2. Scrolling from top to bottom in page steps (at most ``--steps`` evenly spaced positions): the
   longest event-loop stall (one scroll step: layout, paint, thumbnails arriving), median stall.
3. Thumbnail throughput on ``--images`` two-channel 128 px 16-bit TIFFs: made from the images
   with the gallery's threads, read back from the disk cache, and one thread as the reference.
4. Peak memory (max RSS) before and after scrolling the whole gallery.
5. F2 through the gallery in napari: label the selected thumbnail and select the next one
   (sidecar on disk, fsync on), median and max.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/bench_gallery.py [--n 100000]

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_pages import make_project  # the benchmarks folder is the script's folder
from bench_project import make_folder


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pump(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


class _Viewer:
    """Stands for a viewer: the gallery only needs a session key."""


def bench_gallery(root: Path, steps: int) -> dict:
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.gallery import GalleryDock
    from napari_cellclass._widgets.session import session_for
    from napari_cellclass.core.project import Project

    app = QApplication.instance() or QApplication([])
    t = time.perf_counter()
    project = Project.open(root)
    open_s = time.perf_counter() - t
    viewer = _Viewer()
    session_for(viewer).set_project(project)
    painted: list[float] = []

    class Paints(QObject):
        def eventFilter(self, obj, event):  # noqa: N802
            if event.type() == QEvent.Type.Paint:
                painted.append(time.perf_counter())
            return False

    rss_before = rss_mb()
    t0 = time.perf_counter()
    dock = GalleryDock(viewer)
    dock.resize(480, 900)
    spy = Paints()
    dock.view.viewport().installEventFilter(spy)
    dock.show()
    while not painted:
        app.processEvents()
    first_paint_ms = (painted[0] - t0) * 1000

    def visible_ids() -> list[str]:
        view = dock.view
        out = []
        for y in range(0, view.viewport().height(), 20):
            for x in range(0, view.viewport().width(), 20):
                idx = view.indexAt(view.viewport().rect().topLeft().__class__(x, y))
                if idx.isValid():
                    out.append(dock.model.ids[idx.row()])
        return sorted(set(out))

    ids = visible_ids()
    while any(i not in dock.model._pixmaps for i in ids):  # noqa: SLF001 - benchmark looks inside
        app.processEvents()
        time.sleep(0.001)
    all_visible_ms = (time.perf_counter() - t0) * 1000
    bar = dock.view.verticalScrollBar()
    layout_stalls = []  # Qt lays the list out in batches while the user can already scroll
    last_index = dock.model.index(len(dock.model.ids) - 1)
    while not dock.view.visualRect(last_index).isValid() and time.perf_counter() - t0 < 60:
        t = time.perf_counter()
        app.processEvents()
        layout_stalls.append((time.perf_counter() - t) * 1000)
        time.sleep(0.001)
    stable = time.perf_counter()
    layout_ms = (stable - t0) * 1000
    positions = np.linspace(0, bar.maximum(), num=min(steps, max(2, bar.maximum() // max(1, bar.pageStep()))))
    stalls = []
    t_scroll = time.perf_counter()
    for v in positions:
        t = time.perf_counter()
        bar.setValue(int(v))
        app.processEvents()
        stalls.append((time.perf_counter() - t) * 1000)
    scroll_s = time.perf_counter() - t_scroll
    pump(app, 1.0)
    rss_after = rss_mb()
    dock.close_gallery()
    dock.close()
    return {"images": len(project.image_ids), "project_open_s": round(open_s, 2),
            "first_paint_ms": round(first_paint_ms, 1), "visible_thumbnails_ms": round(all_visible_ms, 1),
            "visible_thumbnails": len(ids), "full_layout_ms": round(layout_ms),
            "layout_longest_stall_ms": round(max(layout_stalls, default=0.0), 1), "scroll_positions": len(stalls),
            "scroll_total_s": round(scroll_s, 2),
            "scroll_longest_stall_ms": round(max(stalls), 1),
            "scroll_median_stall_ms": round(statistics.median(stalls), 2),
            "scroll_p99_stall_ms": round(float(np.percentile(stalls, 99)), 1),
            "max_rss_before_gallery_mb": round(rss_before), "max_rss_after_scrolling_mb": round(rss_after)}


def bench_thumbnails(root: Path, n: int) -> dict:
    from napari_cellclass._widgets.gallery import THREADS
    from napari_cellclass._widgets.thumbnails import ThumbnailStore
    from napari_cellclass.core.project import Project

    make_project(root, n)  # two-channel 128 px 16-bit TIFFs
    project = Project.open(root)
    project.add_class("a")  # a project: thumbnails are cached on disk
    store = ThumbnailStore(project)
    ids = list(project.image_ids)
    half = n // 2
    t = time.perf_counter()
    for iid in ids[:half]:
        store.get(iid)
    one_thread = half / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(store.get, ids[half:]))
    threads = (n - half) / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(store.get, ids))
    cached = n / (time.perf_counter() - t)
    return {"thumbnail_images": n, "thumbnails_made_per_s": round(threads),
            "reference_one_thread_per_s": round(one_thread),
            "thumbnails_from_disk_cache_per_s": round(cached), "threads": THREADS}


def bench_f2(root: Path, presses: int) -> dict:
    import napari

    from napari_cellclass._widgets.gallery import GalleryDock
    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass.core.project import Project
    from napari_cellclass.core.sidecars import sidecar_path

    project = Project.open(root)
    if not project.class_names:
        project.add_class("a")
    viewer = napari.Viewer(show=True)
    widget = LabellingWidget(viewer, project)
    viewer.window.add_dock_widget(widget)
    gallery = GalleryDock(viewer)
    viewer.window.add_dock_widget(gallery, area="right")
    gallery.select([project.image_ids[0]])
    app = napari.qt.get_qapp()
    pump(app, 0.5)
    times = []
    for _ in range(presses):
        before = gallery.selected_ids()
        t = time.perf_counter()
        widget.label_and_next()
        times.append((time.perf_counter() - t) * 1000)
        assert sidecar_path(project.root / before[0]).exists() and gallery.selected_ids() != before
        app.processEvents()
    viewer.close()
    return {"f2_gallery_presses": presses, "f2_gallery_median_ms": round(statistics.median(times), 1),
            "f2_gallery_max_ms": round(max(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=2000, help="scroll positions at most")
    ap.add_argument("--images", type=int, default=400, help="real images for the thumbnail throughput")
    ap.add_argument("--presses", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        make_folder(big, args.n)  # tiny PNGs in folders of 1,000: the listing is what the gallery scales with
        result = {"benchmark": "gallery"}
        result.update(bench_gallery(big, args.steps))
        result.update(bench_thumbnails(Path(tmp) / "real", args.images))
        result.update(bench_f2(big, args.presses))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
