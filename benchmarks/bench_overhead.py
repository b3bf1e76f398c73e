"""What a user feels of a training run: start-up and per-epoch overhead, measured from outside.

One command, one JSON object on stdout; every figure is measured in the same run::

    python benchmarks/bench_overhead.py          # resnet18, 64 px, batch 32, 270 sample images (216 train)

- ``startup``: wall seconds from starting ``napari-cellclass train`` to its first training batch,
  by phase (the command's own ``startup`` report: process start and imports, split, images, timm
  import, model, optimizer, first step);
- ``per_epoch``: the ``train`` command's wall time for ``--epochs-long`` epochs minus that for
  ``--epochs-short`` (start-up, the first epoch and the end of the run cancel out), against the
  pure model step (forward, backward, optimizer step on tensors already in memory) for as many
  images, timed in this process right before and right after the two commands;
  ``ratio`` = pure seconds / pipeline seconds (1: no overhead at all);
- ``phases``: where an epoch's time goes, from one in-process run's events: training batches,
  batch-norm recalibration, validation, end of epoch (metrics, checkpoint writes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cellclass.core.sample import make_sample_project
from napari_cellclass.learn.config import TrainConfig
from napari_cellclass.learn.engine import Trainer
from napari_cellclass.learn.events import BatchProgress, CheckpointSaved, EpochEnd
from napari_cellclass.learn.models import build_model


def pure_seconds(args: argparse.Namespace, in_chans: int, n_classes: int, images: int) -> float:
    """Seconds of the pure model step for ``images`` training images (whole batches, as the pipeline)."""
    torch.manual_seed(0)
    model, _ = build_model(args.backbone, n_classes, in_chans=in_chans, pretrained=None)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, in_chans, args.input_size, args.input_size)
    y = torch.arange(args.batch_size) % n_classes
    crit = torch.nn.CrossEntropyLoss()

    def step(n: int) -> None:
        xb, yb = x[:n], y[:n]
        loss = crit(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(args.batch_size)  # warm-up
    sizes = [args.batch_size] * (images // args.batch_size) + ([images % args.batch_size] if images % args.batch_size
                                                               else [])
    t = time.perf_counter()
    for n in sizes:
        step(n)
    return time.perf_counter() - t


def train_command(project: Path, out: Path, epochs: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``napari-cellclass train --json``; its wall seconds, its own seconds and start-up report."""
    cmd = [sys.executable, "-m", "napari_cellclass", "train", str(project), "--backbone", args.backbone,
           "--input-size", str(args.input_size), "--batch-size", str(args.batch_size), "--epochs", str(epochs),
           "--device", "cpu", "--seed", "0", "--out", str(out), "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"train failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout)
    return {"wall_seconds": round(wall, 3), "run_seconds": res["seconds"], "startup": res.get("startup", {}),
            "epoch_seconds": [h["seconds"] for h in res["history"]]}


def phases(project: Path, out: Path, args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """Seconds per epoch phase of an in-process run (epochs after the first), from its events' times."""
    cfg = TrainConfig(backbone=args.backbone, input_size=args.input_size, batch_size=args.batch_size, epochs=epochs,
                      device="cpu", seed=0, early_stopping=0)
    sums: dict[str, list[float]] = {"train": [], "bn_and_validation": [], "validation": [], "end_of_epoch": []}
    last = time.perf_counter()
    mark: dict[str, float] = {}
    epoch = 0
    for ev in Trainer(project, cfg, out).events():
        now = time.perf_counter()
        if isinstance(ev, BatchProgress) and ev.phase == "train" and ev.batch == 1:
            epoch = ev.epoch
            mark = {"start": last}
        elif isinstance(ev, BatchProgress) and ev.phase == "train" and ev.batch == ev.num_batches:
            mark["train_end"] = now
        elif isinstance(ev, BatchProgress) and ev.phase == "val" and ev.batch == 1:
            mark["val_start"] = last
        elif isinstance(ev, EpochEnd):
            mark["epoch_end"] = now
        elif isinstance(ev, CheckpointSaved) and ev.kind == "last":
            mark["end"] = now
            if epoch > 1:
                sums["train"].append(mark["train_end"] - mark["start"])
                sums["bn_and_validation"].append(mark["epoch_end"] - mark["train_end"])
                sums["validation"].append(mark["epoch_end"] - mark["val_start"])
                sums["end_of_epoch"].append(now - mark["epoch_end"])
        last = now
    return {k: round(float(np.median(v)), 3) for k, v in sums.items() if v}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=270, help="sample images, all labelled (80 %% train)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs-short", type=int, default=2)
    p.add_argument("--epochs-long", type=int, default=6)
    p.add_argument("--no-phases", action="store_true", help="skip the in-process breakdown of an epoch")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "overhead", "backbone": args.backbone, "input_size": args.input_size,
                              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    with tempfile.TemporaryDirectory(prefix="cellclass-overhead-") as tmp:
        work = Path(tmp)
        project = make_sample_project(work / "p", n=args.images, seed=1, labelled_fraction=1.0,
                                      size=args.image_size)
        short = train_command(project.root, work / "short", args.epochs_short, args)
        cfg = json.loads((work / "short" / "config.json").read_text())
        train_n = len(cfg["split"]["ids"]["train"])
        n_classes, in_chans = len(cfg["classes"]), int(cfg["in_chans"])
        extra = (args.epochs_long - args.epochs_short) * train_n
        pure_before = pure_seconds(args, in_chans, n_classes, extra)
        long = train_command(project.root, work / "long", args.epochs_long, args)
        pure_after = pure_seconds(args, in_chans, n_classes, extra)
        pipeline = long["wall_seconds"] - short["wall_seconds"]
        pure = (pure_before + pure_after) / 2
        result["train_images"] = train_n
        result["startup"] = {"wall_to_first_batch_seconds": long["startup"].get("seconds"), **long["startup"]}
        result["per_epoch"] = {
            "epochs": f"{args.epochs_long} - {args.epochs_short}", "images": extra,
            "pipeline_seconds": round(pipeline, 3), "pure_seconds": round(pure, 3),
            "pure_seconds_before_after": [round(pure_before, 3), round(pure_after, 3)],
            "ratio": round(pure / pipeline, 3),
            "wall_seconds": {"short": short["wall_seconds"], "long": long["wall_seconds"]},
            "epoch_seconds_long": long["epoch_seconds"],
        }
        if not args.no_phases:
            result["phases"] = phases(project.root, work / "phases", args, 4)
    result["load_average_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(result))
    print(f"per-epoch ratio {result['per_epoch']['ratio']} (pure {result['per_epoch']['pure_seconds']} s / pipeline "
          f"{result['per_epoch']['pipeline_seconds']} s); first batch {result['startup'].get('seconds')} s after the "
          "command", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
