"""The first epoch (decoding included) against the later ones, and prediction from files against the cache.

One command, one JSON object on stdout; every figure is measured in the same run::

    python benchmarks/bench_first_epoch.py                 # 1,000 sample images, mobilenetv3_small_100, 96 px
    python benchmarks/bench_first_epoch.py --threads 1,2   # decoding workers compared (ImageStore.threads:
                                                           # 1 = a thread, more = forked processes on Linux)

For each decoding thread count: a fresh project cache, the trainer's setup with the decode
timed apart (imports are start-up, reported by ``bench_overhead.py``; timm is imported before),
``--epochs`` epochs; ``first_epoch_ratio`` = speed of the first epoch including the decoding /
speed of the later epochs. Then ``predict()`` from the files (decoding included, no cache)
against ``infer()`` on the decoded rows, for the same images, with the CPU time per image of
inference and of decoding and the ratio they allow at most (``ratio_bound_by_cpu_time``: decoding
and inference share the cores; more cores than the model uses raise it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm  # noqa: F401 - imported before any timing: start-up, not decoding
import torch

from napari_cellclass.core.sample import make_sample_project
from napari_cellclass.learn.checkpoint import load_model
from napari_cellclass.learn.config import TrainConfig
from napari_cellclass.learn.data import cache as cache_mod
from napari_cellclass.learn.engine import Trainer
from napari_cellclass.learn.events import BatchProgress
from napari_cellclass.learn.predict import infer, predict


def run(project_root: Path, out: Path, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Setup (decode timed by its progress events) and the epochs of one trainer."""
    shutil.rmtree(project_root / "cellclass_cache", ignore_errors=True)
    original = cache_mod.ImageStore.__init__

    def with_threads(self, *a, **k):  # the store the trainer builds, with ``threads`` decoding threads
        original(self, *a, **{**k, "threads": threads})

    cache_mod.ImageStore.__init__ = with_threads
    try:
        cfg = TrainConfig(backbone=args.backbone, input_size=args.input_size, batch_size=args.batch_size,
                          epochs=args.epochs, device="cpu", seed=0)
        tr = Trainer(project_root, cfg, out)
        t0 = time.perf_counter()
        first = last = None
        for ev in tr.setup():
            if isinstance(ev, BatchProgress) and ev.phase == "cache":
                now = time.perf_counter()
                first = now if first is None else first
                last = now
        setup = time.perf_counter() - t0
    finally:
        cache_mod.ImageStore.__init__ = original
    decode = (last - t0) if last is not None else setup
    epochs = []
    for e in range(1, args.epochs + 1):
        t = time.perf_counter()
        tr.train_one_epoch(e)
        tr.recalibrate_batch_norm(e)
        tr.validate("val")
        epochs.append(time.perf_counter() - t)
    n = len(tr.ids["train"])
    later = float(np.mean(epochs[1:]))
    decoder = "processes" if threads != 1 and cache_mod.can_fork_decoders() else "threads"
    res = {"threads": threads, "decoder": decoder, "train_images": n,
           "images": len(tr.store), "decode_seconds": round(decode, 3),
           "decode_img_s": round(len(tr.store) / decode, 1), "setup_seconds": round(setup, 3),
           "epoch_seconds": [round(s, 3) for s in epochs],
           "first_epoch_img_s": round(n / (decode + epochs[0]), 1), "later_epochs_img_s": round(n / later, 1),
           "first_epoch_ratio": round(later / (decode + epochs[0]), 3),
           "first_epoch_ratio_with_setup": round(later / (setup + epochs[0]), 3)}
    tr._save_best()
    return {"result": res, "trainer": tr}


def prediction(tr: Trainer, args: argparse.Namespace) -> dict[str, Any]:
    """``predict()`` from the files (fresh cache) against ``infer()`` on the decoded rows, same images."""
    root = tr.project.root
    shutil.rmtree(root / "cellclass_cache", ignore_errors=True)
    trained = load_model(tr.out_dir)
    index = np.arange(len(tr.store))
    infer(trained, tr.store, index[:args.predict_batch_size], device=torch.device("cpu"))  # warm-up
    t, c = time.perf_counter(), time.process_time()
    infer(trained, tr.store, index, device=torch.device("cpu"), batch_size=args.predict_batch_size)
    cache_s, infer_cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    res = predict(trained, tr.project, all_images=True, write=False, batch_size=args.predict_batch_size,
                  device="cpu")
    files_s = time.perf_counter() - t
    # CPU time of decoding one image (one thread in this process, so process_time sees all of it)
    store = cache_mod.ImageStore([tr.project.path(i) for i in tr.store.keys], trained.input_size,
                                 trained.normalisation.scaling, threads=1, processes=False)
    c = time.process_time()
    for _ in store.build():
        pass
    decode_cpu = time.process_time() - c
    n = len(index)
    return {"images": len(res), "from_cache_img_s": round(n / cache_s, 1),
            "from_files_img_s": round(len(res) / files_s, 1), "ratio_files_to_cache": round(cache_s / files_s, 3),
            "cpu_us_per_image": {"inference": round(infer_cpu / n * 1e6), "decoding": round(decode_cpu / n * 1e6)},
            # the most the ratio can be when decoding and inference keep every core busy: the CPU time of
            # inference over that of inference and decoding
            "ratio_bound_by_cpu_time": round(infer_cpu / (infer_cpu + decode_cpu), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="mobilenetv3_small_100")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--predict-batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", default="0", help="decoding threads to compare, e.g. 1,2 (0: the store's default)")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "first_epoch", "backbone": args.backbone, "input_size": args.input_size,
                              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "load_average": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="cellclass-first-epoch-") as tmp:
        work = Path(tmp)
        project = make_sample_project(work / "p", n=args.images, seed=1, labelled_fraction=1.0,
                                      size=args.image_size)
        runs = []
        tr = None
        for k, th in enumerate(int(t) for t in args.threads.split(",")):
            out = run(project.root, work / f"m{k}", args, th)
            runs.append(out["result"])
            tr = out["trainer"]
        result["training"] = runs
        result["prediction"] = prediction(tr, args)
    result["load_average_after"] = os.getloadavg()[0]
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["cache"] = tr.store.location
    print(json.dumps(result))
    print("first epoch ratio " + ", ".join(f"{r['first_epoch_ratio']} ({r['threads']} threads)" for r in runs)
          + f"; prediction from files / cache {result['prediction']['ratio_files_to_cache']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
