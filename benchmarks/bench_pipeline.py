"""Training and prediction throughput: the project's pipeline against the pure model step and a naive reference.

One command, one JSON object on stdout; every figure is measured in the same run::

    python benchmarks/bench_pipeline.py                                  # CPU defaults, a few minutes
    python benchmarks/bench_pipeline.py --device cuda --precision bf16 --backbone resnet50 \
        --input-size 224 --batch-size 128 --images 5000 --scale 10000,50000

For training and for prediction it measures

1. ``pipeline``: the project's own path from image files on disk (:class:`Trainer`: decode-once
   cache, batched augmentation on the device; :func:`predict`), first epoch (decoding included)
   and later epochs separately;
2. ``pure``: the model step on tensors already on the device (forward + backward + optimizer
   step; for prediction the forward pass under ``inference_mode``), the practical limit;
3. ``naive``: a per-image ``Dataset`` over the same files (tifffile + torchvision transforms) and
   a ``DataLoader``, fp32, as in the usual transfer-learning write-ups.

The pure step and a naive epoch run right after each pipeline epoch (the same images), so load
from other processes hits all three alike. On the CPU ``ratio_1_2`` and ``ratio_1_3`` compare the
median seconds per batch of the epochs after the first (robust against bursts of load on a shared
machine); on CUDA, where per-batch times would need a sync each, the summed epoch times
(``*_totals``, reported everywhere). Peak host RSS (``VmHWM``, reset per phase; DataLoader
workers are separate processes, not counted) and on CUDA peak GPU memory are given per phase.
``--scale`` repeats the pipeline on generated projects of the given sizes.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cellclass.core.project import Project
from napari_cellclass.core.sample import make_sample_project
from napari_cellclass.learn.config import TrainConfig
from napari_cellclass.learn.engine import Trainer, autocast, resolve_device, resolve_precision
from napari_cellclass.learn.models import build_model
from napari_cellclass.learn.predict import infer, predict


# ---------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds ``fn()`` takes with the device's queue drained before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def reset_peaks(device: torch.device) -> None:
    """Reset the peak resident set size (Linux ``clear_refs``) and the CUDA peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> dict[str, float]:
    """Peak host RSS (MiB) since the last reset, and peak CUDA memory allocated."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        import resource

        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def rate(images: int, seconds: float) -> float:
    return round(images / max(seconds, 1e-9), 1)


# ---------------------------------------------------------------------------- the pure model step
class PureStep:
    """The training step of ``trainer`` on fixed device tensors (a copy of its model and optimizer)."""

    def __init__(self, trainer: Trainer, batch_size: int) -> None:
        self.t = trainer
        self.device = trainer.device
        self.model = copy.deepcopy(trainer.model).train()
        opt = trainer.optimizer
        accepted = inspect.signature(type(opt)).parameters
        self.optimizer = type(opt)(self.model.parameters(), **{k: v for k, v in opt.defaults.items() if k in accepted})
        shape = (batch_size, trainer.in_chans, trainer.input_size, trainer.input_size)
        self.x = torch.randn(shape, device=self.device)
        if trainer.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = trainer.targets_dev["train"][torch.arange(batch_size, device=self.device) % len(trainer.ids["train"])]

    def run(self, steps: int, times: list[float] | None = None) -> None:
        """``steps`` optimizer steps; on the CPU each step's seconds are appended to ``times``."""
        for _ in range(steps):
            t = time.perf_counter()
            with autocast(self.device, self.t.precision):
                logits = self.model(self.x)
            loss = self.t.criterion(logits.float(), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if times is not None and self.device.type == "cpu":
                times.append(time.perf_counter() - t)


def pure_inference(trainer: Trainer, batch_size: int, steps: int) -> float:
    """Seconds for ``steps`` forward passes of a fixed batch under ``inference_mode``."""
    model = trainer.model.eval()
    x = torch.randn((batch_size, trainer.in_chans, trainer.input_size, trainer.input_size), device=trainer.device)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def go() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                with autocast(trainer.device, trainer.precision):
                    torch.softmax(model(x).float(), dim=1)

    go() if steps > 1 else None  # warm-up (kernel selection, allocator)
    return timed(go, trainer.device)[0]


# ---------------------------------------------------------------------------- the naive reference
class FileDataset(torch.utils.data.Dataset):
    """One image file per item, read with tifffile and transformed with torchvision (per image)."""

    def __init__(self, paths: list[Path], targets: list[int], size: int, mean: list[float], std: list[float],
                 train: bool) -> None:
        from torchvision.transforms import v2

        self.paths, self.targets = paths, targets
        steps: list[Any] = [v2.Resize((size, size), antialias=True)]
        if train:
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        steps.append(v2.Normalize(mean, std))
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import tifffile

        pix = tifffile.imread(self.paths[i])
        pix = pix[None] if pix.ndim == 2 else pix
        x = torch.from_numpy(pix.astype(np.float32) / float(np.iinfo(pix.dtype).max if pix.dtype.kind in "ui" else 1))
        return self.transform(x), self.targets[i]


def naive_loader(project: Project, ids: list[str], classes: tuple[str, ...], size: int, batch_size: int,
                 workers: int, train: bool) -> torch.utils.data.DataLoader:
    targets = [classes.index(project.labels(i)[0]) if project.labels(i) else 0 for i in ids]
    c = project.read_image(ids[0]).n_channels
    ds = FileDataset([project.path(i) for i in ids], targets, size, [0.5] * c, [0.25] * c, train)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=workers,
                                       drop_last=train, persistent_workers=workers > 0)


class NaiveTraining:
    """fp32 training from files through the per-image ``DataLoader`` (a fresh model of the same backbone)."""

    def __init__(self, trainer: Trainer, args: argparse.Namespace) -> None:
        self.device = trainer.device
        torch.manual_seed(0)
        model, _ = build_model(args.backbone, len(trainer.data.classes), in_chans=trainer.in_chans, pretrained=None)
        self.model = model.to(self.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=trainer.cfg.lr, weight_decay=trainer.cfg.weight_decay)
        self.crit = torch.nn.CrossEntropyLoss()
        self.workers = args.naive_workers
        self.loader = naive_loader(trainer.project, trainer.ids["train"], trainer.data.classes, trainer.input_size,
                                   args.batch_size, args.naive_workers, True)

    def epoch(self, times: list[float] | None = None) -> int:
        """One epoch; on the CPU the seconds of each batch (loading included) go to ``times``."""
        n = 0
        t = time.perf_counter()
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            loss = self.crit(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += len(y)
            if times is not None and self.device.type == "cpu":
                now = time.perf_counter()
                times.append(now - t)
                t = now
        return n


def naive_prediction(trainer: Trainer, args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    """fp32 prediction from files through the per-image ``DataLoader`` (no caching)."""
    dev = trainer.device
    model = copy.deepcopy(trainer.model).float().eval().to(memory_format=torch.contiguous_format)
    loader = naive_loader(trainer.project, ids, trainer.data.classes, trainer.input_size, args.predict_batch_size,
                          args.naive_workers, False)

    def run() -> int:
        n = 0
        with torch.no_grad():
            for x, _y in loader:
                torch.softmax(model(x.to(dev)), dim=1).cpu()
                n += len(x)
        return n

    reset_peaks(dev)
    s, n = timed(run, dev)
    return {"img_s": rate(n, s), "seconds": round(s, 3), **peaks(dev)}


# ---------------------------------------------------------------------------- the project's pipeline
def make_trainer(project: Project, args: argparse.Namespace, epochs: int, out: Path) -> Trainer:
    cfg = TrainConfig(backbone=args.backbone, input_size=args.input_size, batch_size=args.batch_size,
                      epochs=epochs, device=args.device, precision=args.precision, seed=0,
                      num_workers=args.num_workers, cache_memory_mb=args.cache_memory_mb)
    return Trainer(project, cfg, out)


def drain(gen: Any) -> Any:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def epoch_with_batch_times(trainer: Trainer, epoch: int) -> list[float]:
    """Train one epoch; the seconds of each batch (the last entry: the end-of-epoch metrics)."""
    times = []
    gen = trainer.train_epoch_events(epoch)
    t = time.perf_counter()
    while True:
        try:
            next(gen)
        except StopIteration:
            times.append(time.perf_counter() - t)
            return times
        now = time.perf_counter()
        times.append(now - t)
        t = now


def pipeline_training(trainer: Trainer, epochs: int, pure_batch: int = 0,
                      naive_args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Setup (decode + cache) and ``epochs`` training epochs; with ``pure_batch``, a pure-step
    round of as many steps after each epoch but the first; with ``naive_args``, a naive epoch
    after each epoch."""
    dev = resolve_device(trainer.cfg.device)
    reset_peaks(dev)
    setup_s, _ = timed(lambda: drain(trainer.setup()), dev)
    pure = PureStep(trainer, pure_batch) if pure_batch else None
    naive = NaiveTraining(trainer, naive_args) if naive_args is not None else None
    naive_s: list[float] = []
    naive_batch_s: list[float] = []
    naive_seen = 0
    n_train = len(trainer.ids["train"])
    steps = trainer.steps_per_epoch
    seen = sum(len(b) for b in trainer._batches(trainer.index["train"], np.random.default_rng(0)))
    train_s, val_s, pure_s = [], [], []
    batch_s: list[float] = []
    step_s: list[float] = []
    for epoch in range(1, epochs + 1):
        s, times = timed(lambda e=epoch: epoch_with_batch_times(trainer, e), dev)
        train_s.append(s)
        if epoch > 1:
            batch_s += times[1:-1]  # whole batches (the first also draws the epoch's order)
        v, _ = timed(lambda e=epoch: (trainer.recalibrate_batch_norm(e), trainer.validate("val")), dev)
        val_s.append(v)
        if pure is not None:
            if epoch == 1:
                pure.run(2)  # warm-up
            else:
                pure_s.append(timed(lambda: pure.run(steps, step_s), dev)[0])
        if naive is not None:
            ns, naive_seen = timed(lambda e=epoch: naive.epoch(naive_batch_s if e > 1 else None), dev)
            naive_s.append(ns)
    out: dict[str, Any] = {
        "train_images": n_train, "val_images": len(trainer.ids["val"]), "steps_per_epoch": steps,
        "decode_cache_seconds": round(setup_s, 3), "cache": trainer.store.location,
        "first_epoch_img_s": rate(seen, setup_s + train_s[0]),
        "first_epoch_img_s_without_decoding": rate(seen, train_s[0]),
        "epoch_seconds": [round(s, 3) for s in train_s],
        "bn_recalibration_and_validation_seconds": [round(s, 3) for s in val_s],
    }
    if epochs > 1:
        out["later_epochs_img_s"] = rate(seen * (epochs - 1), sum(train_s[1:]))
        out["later_epochs_img_s_with_validation"] = rate(seen * (epochs - 1), sum(train_s[1:]) + sum(val_s[1:]))
    out.update(peaks(dev))
    if pure_s:
        # each pure round runs right after the epoch it is paired with: the median of the paired
        # ratios is robust against bursts of load from other processes on a shared machine
        paired = [p / e for p, e in zip(pure_s, train_s[1:], strict=False)]
        out["_pure"] = {"img_s": rate(pure_batch * steps * len(pure_s), sum(pure_s)),
                        "round_seconds": [round(s, 3) for s in pure_s],
                        "paired_ratios": [round(r, 3) for r in paired],
                        "paired_median_ratio": round(float(np.median(paired)), 3)}
        if step_s and batch_s:
            out["median_batch_img_s"] = rate(pure_batch, float(np.median(batch_s)))
            out["_pure"]["median_step_img_s"] = rate(pure_batch, float(np.median(step_s)))
    if naive_s:
        out["_naive"] = {"first_epoch_img_s": rate(naive_seen, naive_s[0]),
                         "epoch_seconds": [round(s, 3) for s in naive_s], "workers": naive.workers,
                         "precision": "fp32"}
        if len(naive_s) > 1:
            paired = [e / n for e, n in zip(train_s[1:], naive_s[1:], strict=False)]
            out["_naive"]["later_epochs_img_s"] = rate(naive_seen * (len(naive_s) - 1), sum(naive_s[1:]))
            out["_naive"]["paired_ratios"] = [round(1 / r, 3) for r in paired]
            out["_naive"]["paired_median_ratio"] = round(float(np.median([1 / r for r in paired])), 3)
        if naive_batch_s and batch_s:
            out["_naive"]["median_batch_img_s"] = rate(naive_args.batch_size, float(np.median(naive_batch_s)))
        del naive
    return out


def pipeline_prediction(trainer: Trainer, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``predict()`` from the files (decoding included) and ``infer()`` on the already built cache."""
    dev = trainer.device
    ids = list(trainer.project.image_ids)
    reset_peaks(dev)
    s_files, res = timed(lambda: predict(model_dir, trainer.project, all_images=True, write=False,
                                         batch_size=args.predict_batch_size, device=args.device), dev)
    mem = peaks(dev)
    from napari_cellclass.learn.checkpoint import load_model

    trained = load_model(model_dir)
    index = np.arange(len(trainer.store))
    infer(trained, trainer.store, index[:args.predict_batch_size], device=dev, batch_size=args.predict_batch_size)
    s_cache, _ = timed(lambda: infer(trained, trainer.store, index, device=dev,
                                     batch_size=args.predict_batch_size), dev)
    return {"images": len(res), "from_files_img_s": rate(len(res), s_files), "from_files_seconds": round(s_files, 3),
            "from_cache_img_s": rate(len(index), s_cache), "cached_images": len(index), **mem, "_ids": ids}


# ---------------------------------------------------------------------------- runs
def main_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t = time.perf_counter()
    project = make_sample_project(work / "main", n=args.images, seed=1, labelled_fraction=1.0, size=args.image_size)
    gen_s = time.perf_counter() - t
    trainer = make_trainer(project, args, args.epochs, work / "model")
    result: dict[str, Any] = {"generated_images": args.images, "generate_seconds": round(gen_s, 2)}
    train = pipeline_training(trainer, args.epochs, args.batch_size, args)
    pure_train = train.pop("_pure")
    naive_train = train.pop("_naive")
    trainer._save_best()

    pred = pipeline_prediction(trainer, trainer.out_dir, args)
    ids = pred.pop("_ids")
    steps = max(2, -(-len(ids) // args.predict_batch_size))
    rounds = [pure_inference(trainer, args.predict_batch_size, steps) for _ in range(2)]
    pure_pred = {"img_s": rate(2 * steps * args.predict_batch_size, sum(rounds)), "batches": 2 * steps}
    naive_pred = naive_prediction(trainer, args, ids)

    later = train.get("later_epochs_img_s", train["first_epoch_img_s"])
    result["training"] = {
        "pipeline": train, "pure_step": pure_train, "naive": naive_train,
        "ratio_1_2": (round(train["median_batch_img_s"] / pure_train["median_step_img_s"], 3)
                      if "median_batch_img_s" in train else round(later / pure_train["img_s"], 3)),
        "ratio_1_2_paired_epochs": pure_train["paired_median_ratio"],
        "ratio_1_2_totals": round(later / pure_train["img_s"], 3),

        "ratio_1_2_first_epoch": round(train["first_epoch_img_s"] / pure_train["img_s"], 3),
        "ratio_1_3": (round(train["median_batch_img_s"] / naive_train["median_batch_img_s"], 3)
                      if "median_batch_img_s" in naive_train else round(later / naive_train.get(
                          "later_epochs_img_s", naive_train["first_epoch_img_s"]), 3)),
        "ratio_1_3_paired_epochs": naive_train.get("paired_median_ratio"),
        "ratio_1_3_totals": round(later / naive_train.get("later_epochs_img_s", naive_train["first_epoch_img_s"]), 3),
        "ratio_1_3_first_epoch": round(train["first_epoch_img_s"] / naive_train["first_epoch_img_s"], 3),
    }
    result["prediction"] = {
        "pipeline": pred, "pure_forward": pure_pred, "naive": naive_pred,
        "ratio_1_2": round(pred["from_cache_img_s"] / pure_pred["img_s"], 3),
        "ratio_1_2_from_files": round(pred["from_files_img_s"] / pure_pred["img_s"], 3),
        "ratio_1_3": round(pred["from_cache_img_s"] / naive_pred["img_s"], 3),
        "ratio_1_3_from_files": round(pred["from_files_img_s"] / naive_pred["img_s"], 3),
    }
    trainer.store.close()
    return result


def scale_run(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The pipeline (2 epochs, first and second) and cached prediction on a generated project of ``n`` images."""
    t = time.perf_counter()
    project = make_sample_project(work / f"scale{n}", n=n, seed=2, labelled_fraction=1.0, size=args.scale_image_size)
    gen_s = time.perf_counter() - t
    trainer = make_trainer(project, args, 2, work / f"model{n}")
    train = pipeline_training(trainer, 2)
    trainer._save_best()
    from napari_cellclass.learn.checkpoint import load_model

    trained = load_model(trainer.out_dir)
    index = np.arange(len(trainer.store))
    s, _ = timed(lambda: infer(trained, trainer.store, index, device=trainer.device,
                               batch_size=args.predict_batch_size), trainer.device)
    trainer.store.close()
    return {"images": n, "image_size": args.scale_image_size, "generate_seconds": round(gen_s, 1),
            "decode_cache_img_s": rate(n, train["decode_cache_seconds"]), "cache": train["cache"],
            "first_epoch_img_s": train["first_epoch_img_s"], "later_epochs_img_s": train["later_epochs_img_s"],
            "predict_from_cache_img_s": rate(len(index), s), "peak_rss_mib": train["peak_rss_mib"],
            **({"peak_gpu_mib": train["peak_gpu_mib"]} if "peak_gpu_mib" in train else {})}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="mobilenetv3_small_100")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--predict-batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps", "auto"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 on CUDA, fp32 elsewhere (the engine's rule)")
    p.add_argument("--images", type=int, default=640, help="images in the generated sample project")
    p.add_argument("--image-size", type=int, default=128, help="pixel size of the generated images")
    p.add_argument("--epochs", type=int, default=4, help="pipeline epochs (the first includes decoding)")
    p.add_argument("--naive-workers", type=int, default=2, help="DataLoader workers of the naive reference")
    p.add_argument("--num-workers", type=int, default=0, help="the pipeline's prefetch threads (TrainConfig)")
    p.add_argument("--cache-memory-mb", type=int, default=2048)
    p.add_argument("--scale", default="", help="comma-separated project sizes to also run, e.g. 1000,10000")
    p.add_argument("--scale-image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--workdir", help="folder for the generated projects (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    args.device = device.type
    result: dict[str, Any] = {
        "benchmark": "pipeline", "device": device_name(device), "torch": torch.__version__,
        "backbone": args.backbone, "input_size": args.input_size, "batch_size": args.batch_size,
        "predict_batch_size": args.predict_batch_size, "precision": resolve_precision(args.precision, device),
        "channels_last": device.type == "cuda", "epochs": args.epochs,
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cellclass-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        result.update(main_run(args, work))
        sizes = [int(s) for s in args.scale.split(",") if s.strip()]
        result["scaling"] = [scale_run(n, args, work) for n in sizes]
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    tr, pr = result["training"], result["prediction"]
    print(f"training: ratio 1/2 {tr['ratio_1_2']}, ratio 1/3 {tr['ratio_1_3']}; "
          f"prediction: ratio 1/2 {pr['ratio_1_2']}, ratio 1/3 {pr['ratio_1_3']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
