"""How responsive napari stays while the training widget trains (run under Xvfb or a display).

A 10 ms QTimer runs on the Qt event loop while the Training widget trains on the sample data
in its worker; the gaps between its ticks show how long the loop was stalled (by the GUI-thread
handling of the engine's events, the live plots and the progress bar, and by the training loop
itself when it shares the process). The widget trains in a child process; ``--in-thread``
trains in the viewer's process as a reference. Also reported: the slowest GUI-thread handling
of one engine event, the slowest repaint of the curves, the idle viewer's gaps (reference) and
the Train click itself (``train_click_ms``: before the first tick, mostly napari creating its
activity-dock progress bar). Prints one JSON object.

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_gui_responsiveness.py
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="sample images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backbone", default="mobilenetv3_small_100")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--in-thread", action="store_true", help="train in the viewer's process (reference)")
    parser.add_argument("--stalls", type=int, default=0, help="also list the N longest stalls and what ran")
    args = parser.parse_args()

    from napari_cellclass._widgets.training_model import import_learning_libraries

    import_learning_libraries()  # before the OpenGL context exists (as the widget does on first Train)
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass._widgets.plots import CurvesCanvas
    from napari_cellclass._widgets.training import TrainingWidget
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import TrainConfig

    draw_ms: list[float] = []
    paint = CurvesCanvas.paintEvent

    def timed_paint(self, event):  # the curves' repaint on the GUI thread
        t = time.perf_counter()
        paint(self, event)
        draw_ms.append((time.perf_counter() - t) * 1000)

    CurvesCanvas.paintEvent = timed_paint
    tmp = Path(tempfile.mkdtemp())
    project = make_sample_project(tmp / "sample", n=args.n, size=96)
    viewer = napari.Viewer(show=True)
    labelling = LabellingWidget(viewer, project)
    viewer.window.add_dock_widget(labelling, name="Labelling")
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Training")
    widget.set_config(TrainConfig(backbone=args.backbone, input_size=args.input_size, epochs=args.epochs,
                                  batch_size=16, device="cpu"))
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    widget._session(project).in_process = not args.in_thread

    handler_ms: list[float] = []

    marks: list[tuple[float, float, str]] = []  # (start, end, what) of GUI handlers and drawings

    def timed(fn, into, name=None):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                end = time.perf_counter()
                if into is not None:
                    into.append((end - t) * 1000)
                marks.append((t, end, name or (type(a[0]).__name__ if a else fn.__name__)))
        return wrapper

    widget._on_event = timed(widget._on_event, handler_ms)  # connected when train() starts
    widget.train = timed(widget.train, None, "train() call")
    widget._on_worker_finished = timed(widget._on_worker_finished, None, "worker finished")

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    end = time.perf_counter() + 3  # reference: the same viewer, idle
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    idle = np.diff(np.array(ticks)) * 1000 if len(ticks) > 1 else np.zeros(1)
    ticks.clear()
    t0 = time.perf_counter()
    widget.train()
    while widget.running:
        app.processEvents()
        time.sleep(0.001)
    seconds = time.perf_counter() - t0
    timer.stop()
    gaps = np.diff(np.array(ticks)) * 1000 if len(ticks) > 1 else np.zeros(1)
    run = widget.session.runs[-1]
    print(json.dumps({
        "benchmark": "gui_responsiveness_during_training",
        "mode": "in-thread" if args.in_thread else "child process",
        "backbone": args.backbone, "input_size": args.input_size, "images": args.n,
        "epochs_run": len(run.epochs), "status": run.status, "message": widget.status.value,
        "train_seconds": round(seconds, 1),
        "timer_interval_ms": 10, "ticks": int(len(ticks)),
        "max_stall_ms": round(float(gaps.max()), 1), "median_gap_ms": round(float(np.median(gaps)), 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "reference_ideal_gap_ms": 10.0,
        "idle_viewer_max_stall_ms": round(float(idle.max()), 1),
        "idle_viewer_median_gap_ms": round(float(np.median(idle)), 1),
        "idle_viewer_p99_gap_ms": round(float(np.percentile(idle, 99)), 1),
        "train_click_ms": round(next(((e - s) * 1000 for s, e, w in marks if w == "train() call"), 0.0), 1),
        "events_handled": len(handler_ms), "max_event_handler_ms": round(max(handler_ms, default=0), 1),
        "plot_repaints": len(draw_ms), "max_plot_repaint_ms": round(max(draw_ms, default=0), 1),
    }))
    if args.stalls:
        starts = np.array(ticks[:-1])
        for k in np.argsort(gaps)[::-1][:args.stalls]:
            a, b = starts[k], starts[k] + gaps[k] / 1000
            during = sorted({f"{w} ({(e - s) * 1000:.0f} ms)" for s, e, w in marks if s < b and e > a - 0.005})
            print(f"stall {gaps[k]:.0f} ms at {a - t0:.1f} s: {', '.join(during) or 'no handler ran'}")
    viewer.close()


if __name__ == "__main__":
    main()
