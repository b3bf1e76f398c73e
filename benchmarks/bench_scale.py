"""Training on 1,000 to 100,000 generated images: seconds per epoch against the image count, and memory.

One command, one JSON object on stdout (progress on stderr)::

    python benchmarks/bench_scale.py                                  # 1,000, 10,000 and 100,000 images
    python benchmarks/bench_scale.py --sizes 1000,10000 --workdir /tmp/scale   # keep the projects for a rerun

For each size: a generated sample project (all labelled; kept in ``--workdir`` and reused), then
in a fresh process the trainer's setup (decoding into the cache) and ``--epochs`` epochs. Per size:
decode seconds and images/s (the project's disk cache is deleted first), the training seconds of
each epoch and, from the last one, per 1,000 training images (``linearity``: seconds per image
against the smallest size; 1 = linear), validation seconds,
where the cache lives (``memory`` below ``cache_memory_mb``, else the ``disk`` cache) and memory:
the peak of ``RssAnon`` (what the process owns, sampled every 20 ms) and ``VmHWM`` (which also
counts pages of the memory-mapped disk cache: the kernel's page cache, reclaimable) above the
process with its libraries and model loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakAnon:
    """The peak of ``RssAnon`` sampled in a thread."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak = status_mib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.peak = max(self.peak, status_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_mib("RssAnon"))


def one_size(project: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: setup and epochs of one trainer; figures of :mod:`bench_scale`."""
    import timm  # noqa: F401 - imported before the baseline: start-up, not the images

    from napari_cellclass.learn.config import TrainConfig
    from napari_cellclass.learn.engine import Trainer
    from napari_cellclass.learn.events import BatchProgress
    from napari_cellclass.learn.models import build_model

    build_model(args.backbone, 2, in_chans=2, pretrained=None)  # the libraries' and a model's memory
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    base_anon, base_hwm = status_mib("RssAnon"), status_mib("VmHWM")
    peak = PeakAnon()
    cfg = TrainConfig(backbone=args.backbone, input_size=args.input_size, batch_size=args.batch_size,
                      epochs=args.epochs, device="cpu", seed=0, cache_memory_mb=args.cache_memory_mb)
    tr = Trainer(project, cfg, out)
    t0 = t = time.perf_counter()
    decoded = t
    for ev in tr.setup():
        if isinstance(ev, BatchProgress) and ev.phase == "cache":
            decoded = time.perf_counter()
    setup = time.perf_counter() - t
    train_s, val_s = [], []
    for e in range(1, args.epochs + 1):
        t = time.perf_counter()
        tr.train_one_epoch(e)
        train_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        tr.recalibrate_batch_norm(e)
        tr.validate("val")
        val_s.append(time.perf_counter() - t)
    anon = peak.stop()
    n_train = len(tr.ids["train"])
    rows_mib = len(tr.store) * tr.store.array[0].nbytes / 2**20
    return {"images": len(tr.store), "train_images": n_train, "val_images": len(tr.ids["val"]),
            "setup_seconds": round(setup, 2), "decode_seconds": round(decoded - t0, 2),
            "decode_img_s": round(len(tr.store) / max(decoded - t0, 1e-9)),
            "epoch_seconds": [round(s, 2) for s in train_s], "validation_seconds": [round(s, 2) for s in val_s],
            "seconds_per_1000_train_images": round(train_s[-1] / n_train * 1000, 3),  # the last epoch: warm
            "cache": tr.store.location, "cache_memory_mb": args.cache_memory_mb, "decoded_rows_mib": round(rows_mib),
            "peak_anon_above_model_mib": round(anon - base_anon), "peak_rss_above_model_mib":
                round(status_mib("VmHWM") - base_hwm)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--backbone", default="mobilenetv3_small_100")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--image-size", type=int, default=64, help="pixel size of the generated images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cache-memory-mb", type=int, default=2048)
    p.add_argument("--workdir", help="folder for the generated projects (kept; default: a temporary folder)")
    p.add_argument("--one", nargs=2, metavar=("PROJECT", "OUT"), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(Path(args.one[0]), Path(args.one[1]), args)))
        return 0
    from napari_cellclass.core.sample import make_sample_project

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="cellclass-scale-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "scale", "backbone": args.backbone, "input_size": args.input_size,
                              "image_size": args.image_size, "batch_size": args.batch_size,
                              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "runs": []}
    for n in (int(s) for s in args.sizes.split(",")):
        project = work / f"p{n}_{args.image_size}"
        t = time.perf_counter()
        if not (project / "cellclass.json").exists():
            print(f"generating {n} images ...", file=sys.stderr, flush=True)
            make_sample_project(project, n=n, seed=3, labelled_fraction=1.0, size=args.image_size)
        generated = time.perf_counter() - t
        for cached in (project / "cellclass_cache").glob("v*-s*-c*"):  # decoded rows: decoded again each run
            shutil.rmtree(cached, ignore_errors=True)
        out = work / f"m{n}_{time.time_ns()}"
        cmd = [sys.executable, __file__, "--one", str(project), str(out), "--backbone", args.backbone,
               "--input-size", str(args.input_size), "--batch-size", str(args.batch_size), "--epochs",
               str(args.epochs), "--cache-memory-mb", str(args.cache_memory_mb)]
        print(f"training on {n} images ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["generate_seconds"] = round(generated, 1)
        result["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    first = result["runs"][0]["seconds_per_1000_train_images"]
    for run in result["runs"]:
        run["linearity"] = round(run["seconds_per_1000_train_images"] / first, 3)
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
