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
  ``ratio`` = pure seconds / pipeline seconds (1: no overhead at all), the median of ``--repeat``
  such pairs (one pair's wall times vary by up to a second on a shared 2-core machine);
- ``in_process``: one run in this process with a pure round right after each epoch: the median
  of the paired ratios pure round / epoch cycle (robust against bursts of load from other
  processes, which the outside figure is not), and where an epoch's time goes: training
  batches, batch-norm statistics and validation, end of epoch (metrics, checkpoint snapshots).
"""
from __future__ import annotations

import argparse
import copy
import inspect
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
from napari_cellclass.learn.events import BatchProgress, EpochEnd
from napari_cellclass.learn.models import build_model

try:  # denormals flushed on the CPU as this version's trainer does
    from napari_cellclass.learn.device import flush_denormals  # noqa: F401
    FLUSH = True
except ImportError:
    FLUSH = False
try:  # the optimizer as the trainer builds it (fused where it can be)
    from napari_cellclass.learn.builders import fused_kwargs
except ImportError:  # a version before fused optimizers: torch's default, as its trainer
    def fused_kwargs(params: list) -> dict[str, bool]:
        return {}


def pure_seconds(args: argparse.Namespace, in_chans: int, n_classes: int, images: int) -> float:
    """Seconds of the pure model step for ``images`` training images (whole batches, as the pipeline)."""
    torch.manual_seed(0)
    torch.set_flush_denormal(FLUSH)  # as the trainer of this version runs
    model, _ = build_model(args.backbone, n_classes, in_chans=in_chans, pretrained=None)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **fused_kwargs(list(model.parameters())))
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


class PureRound:
    """The pure model step on a copy of a trainer's model (its own AdamW), for as many images as an epoch."""

    def __init__(self, trainer: Trainer, batch_size: int) -> None:
        self.model = copy.deepcopy(trainer.model).train()
        opt = trainer.optimizer  # the same optimizer and settings (fused where the trainer's is)
        accepted = inspect.signature(type(opt)).parameters
        self.opt = type(opt)(self.model.parameters(), **{k: v for k, v in opt.defaults.items() if k in accepted})
        n = len(trainer.ids["train"])
        self.sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        self.x = torch.randn(batch_size, trainer.in_chans, trainer.input_size, trainer.input_size)
        self.y = torch.arange(batch_size) % len(trainer.data.classes)
        self.crit = torch.nn.CrossEntropyLoss()

    def run(self) -> float:
        t = time.perf_counter()
        for n in self.sizes:
            loss = self.crit(self.model(self.x[:n]), self.y[:n])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - t


def phases(project: Path, out: Path, args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """An in-process run with a pure round paired with each epoch: median seconds per epoch phase
    (epochs after the first) and the median of the paired ratios pure / whole epoch cycle.

    The epoch cycle runs from one epoch's first batch to the next one's (training, batch-norm
    statistics, validation, metrics, checkpoint snapshots and writes); the pure round runs at
    each epoch's end and its time is taken out of the cycle. ``end_of_epoch``: from one epoch's
    end to the next epoch's first batch.
    """
    cfg = TrainConfig(backbone=args.backbone, input_size=args.input_size, batch_size=args.batch_size, epochs=epochs,
                      device="cpu", seed=0, early_stopping=0)
    start: dict[int, float] = {}
    train_end: dict[int, float] = {}
    end: dict[int, float] = {}
    pure: dict[int, float] = {}
    trainer = Trainer(project, cfg, out)
    rounds: PureRound | None = None
    paused = 0.0  # seconds spent in pure rounds, taken out of the run's clock
    last = time.perf_counter()
    for ev in trainer.events():
        now = time.perf_counter() - paused
        if isinstance(ev, BatchProgress) and ev.phase == "train":
            if ev.batch == 1:
                start[ev.epoch] = last
            if ev.batch == ev.num_batches:
                train_end[ev.epoch] = now
        elif isinstance(ev, EpochEnd):
            end[ev.epoch] = now
            if rounds is None:
                rounds = PureRound(trainer, args.batch_size)
                rounds.run()  # warm-up
            t = time.perf_counter()
            pure[ev.epoch] = rounds.run()
            paused += time.perf_counter() - t
            now = time.perf_counter() - paused
        last = now
    later = [e for e in sorted(end) if e > 1 and e + 1 in start]
    cycle = {e: start[e + 1] - start[e] for e in later}
    out_ = {"train": [train_end[e] - start[e] for e in later],
            "bn_and_validation": [end[e] - train_end[e] for e in later],
            "end_of_epoch": [start[e + 1] - end[e] for e in later],
            "epoch_cycle": list(cycle.values()), "pure_round": [pure[e] for e in later]}
    res: dict[str, Any] = {k: round(float(np.median(v)), 3) for k, v in out_.items() if v}
    ratios = [pure[e] / cycle[e] for e in later]
    res["paired_ratios"] = [round(r, 3) for r in ratios]
    res["ratio"] = round(float(np.median(ratios)), 3) if ratios else None
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=270, help="sample images, all labelled (80 %% train)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs-short", type=int, default=2)
    p.add_argument("--epochs-long", type=int, default=6)
    p.add_argument("--repeat", type=int, default=3, help="pairs of commands (short, long); the median pair is reported")
    p.add_argument("--no-phases", action="store_true", help="skip the in-process breakdown of an epoch")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "overhead", "backbone": args.backbone, "input_size": args.input_size,
                              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    with tempfile.TemporaryDirectory(prefix="cellclass-overhead-") as tmp:
        work = Path(tmp)
        project = make_sample_project(work / "p", n=args.images, seed=1, labelled_fraction=1.0,
                                      size=args.image_size)
        pairs = []
        for r in range(args.repeat):  # short, pure, long, pure: the median pair is robust against bursts of load
            short = train_command(project.root, work / f"short{r}", args.epochs_short, args)
            cfg = json.loads((work / f"short{r}" / "config.json").read_text())
            train_n = len(cfg["split"]["ids"]["train"])
            n_classes, in_chans = len(cfg["classes"]), int(cfg["in_chans"])
            extra = (args.epochs_long - args.epochs_short) * train_n
            pure_before = pure_seconds(args, in_chans, n_classes, extra)
            long = train_command(project.root, work / f"long{r}", args.epochs_long, args)
            pure_after = pure_seconds(args, in_chans, n_classes, extra)
            pipeline = long["wall_seconds"] - short["wall_seconds"]
            pure = (pure_before + pure_after) / 2
            pairs.append({"pipeline_seconds": round(pipeline, 3), "pure_seconds": round(pure, 3),
                          "ratio": round(pure / pipeline, 3),
                          "wall_seconds": {"short": short["wall_seconds"], "long": long["wall_seconds"]},
                          "epoch_seconds_long": long["epoch_seconds"]})
        result["train_images"] = train_n
        result["startup"] = {"wall_to_first_batch_seconds": long["startup"].get("seconds"), **long["startup"]}
        result["per_epoch"] = {
            "epochs": f"{args.epochs_long} - {args.epochs_short}", "images": extra,
            "ratio": round(float(np.median([q["ratio"] for q in pairs])), 3),
            "ratio_of_sums": round(sum(q["pure_seconds"] for q in pairs) / sum(q["pipeline_seconds"] for q in pairs),
                                   3),
            "pipeline_seconds": round(float(np.median([q["pipeline_seconds"] for q in pairs])), 3),
            "pure_seconds": round(float(np.median([q["pure_seconds"] for q in pairs])), 3),
            "pairs": pairs,
        }
        if not args.no_phases:
            result["in_process"] = phases(project.root, work / "phases", args, args.epochs_long)
    result["load_average_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(result))
    paired = result.get("in_process", {}).get("ratio")
    pe = result["per_epoch"]
    each = [q["ratio"] for q in pe["pairs"]]
    print(f"per-epoch ratio: paired in process {paired}; from outside {pe['ratio']} (median of {each}; pure "
          f"{pe['pure_seconds']} s / pipeline {pe['pipeline_seconds']} s); first batch "
          f"{result['startup'].get('seconds')} s after the command", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
