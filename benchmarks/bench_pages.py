"""The canvas page: first page and page turns of 16 two-channel 128 px 16-bit images (run under a display).

First page: from opening the folder in the labelling dock until the page is drawn and the event
loop has run once. Page turns: ``next_page`` plus one event-loop pass, with the next page
prepared in the background (waited for between turns, as a user's look at the page would) and,
as the same-run reference, with that preparation thrown away before each turn. Both channel
displays: "RGB blend" (one layer per image, the default) and "composite" (one layer per channel).
``napari_share`` is the part of a turn spent in napari's own layer updates (``layer.data``,
contrast limits, names, metadata) and layer moves. Same-run references: napari alone adding
16 RGB image layers of the same size in grid mode (one batched update) and painting them, in a
fresh viewer, and then giving all 16 new data with ``layer.data = ...`` and painting them.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/bench_pages.py

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_project(folder: Path, n: int) -> Path:
    import tifffile

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"cell_{i:04d}.tif", rng.integers(100, 4000, (2, 128, 128), dtype=np.uint16),
                         metadata={"axes": "CYX"})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=10)
    args = ap.parse_args()
    import napari

    from napari_cellclass._widgets import page_view
    from napari_cellclass._widgets.labelling import LabellingWidget

    spent = [0.0]
    for name in ("recycle", "bring_to_front"):
        real = getattr(page_view, name)

        def timed(*a, _real=real, **k):
            t = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t

        setattr(page_view, name, timed)
    result: dict[str, object] = {"benchmark": "pages", "images_per_page": 16, "image": "2 x 128 x 128 uint16"}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp) / "p", 16 * (4 * args.turns + 2))
        viewer = napari.Viewer(show=True)
        app = napari.qt.get_qapp()
        app.processEvents()
        t = time.perf_counter()
        widget = LabellingWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.open_project(root)
        app.processEvents()
        result["first_page_ms"] = round((time.perf_counter() - t) * 1000)
        for mode in ("RGB blend", "composite"):
            widget.channels.value = mode
            for prepared in (True, False):
                times, shares = [], []
                for _ in range(args.turns):
                    widget.page.prefetch.wait()
                    if not prepared:
                        widget.page.prefetch.forget()
                    spent[0] = 0.0
                    t = time.perf_counter()
                    widget.next_page()
                    app.processEvents()
                    times.append((time.perf_counter() - t) * 1000)
                    shares.append(spent[0] * 1000)
                kind = "prepared" if prepared else "reference_unprepared"
                key = f"{'blend' if mode == 'RGB blend' else 'composite'}_{kind}"
                result[f"turn_{key}_median_ms"] = round(statistics.median(times), 1)
                result[f"turn_{key}_max_ms"] = round(max(times), 1)
                result[f"turn_{key}_napari_share_ms"] = round(statistics.median(shares), 1)
                result[f"layer_rows_per_image_{key.split('_')[0]}"] = len(viewer.layers) / 16
        viewer.close()
        first, turn = napari_reference(app, args.turns)
        result["reference_napari_16_layers_first_paint_ms"] = round(first)
        result["reference_napari_16_layers_new_data_median_ms"] = round(turn, 1)
    print(json.dumps(result))


def napari_reference(app, turns: int) -> tuple[float, float]:
    """napari alone: 16 RGB layers added in one batched update, grid on, painted once (ms), and the
    median time to give all 16 new data (``layer.data = ...``) and paint them (ms)."""
    import napari

    viewer = napari.Viewer(show=True)
    app.processEvents()
    rgb = np.random.default_rng(1).random((128, 128, 3), dtype=np.float32)
    t = time.perf_counter()
    with viewer.layers.batched_update():
        for k in range(16):
            viewer.add_image(rgb, rgb=True, name=f"image {k}")
    viewer.canvas.grid.enabled = True
    app.processEvents()
    ms = (time.perf_counter() - t) * 1000
    times = []
    for k in range(turns):
        new = np.roll(rgb, k + 1, axis=0)
        t = time.perf_counter()
        for layer in viewer.layers:
            layer.data = new
        app.processEvents()
        times.append((time.perf_counter() - t) * 1000)
    viewer.close()
    return ms, statistics.median(times)


if __name__ == "__main__":
    main()
