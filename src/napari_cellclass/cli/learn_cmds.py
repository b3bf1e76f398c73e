"""Subcommands about models: backbones, train, predict, evaluate (torch is imported on use)."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from ..core.errors import CellclassError

FREEZE = {"none": "full", "head": "head", "head-then-all": "head-then-all"}


def register(sub: argparse._SubParsersAction) -> None:
    from . import add_common

    p = sub.add_parser("backbones", help="list the backbones (MIA names mapped to timm, AlexNet, any timm model)",
                       description="List the supported backbones with parameter counts and default input size.")
    add_common(p)
    p.set_defaults(handler=cmd_backbones)

    p = sub.add_parser("train", help="train a classifier on a project's labelled images",
                       description="Train a CNN on the labelled images of a project and write a model folder "
                                   "(model.safetensors + config.json). Options override the --config file.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of training settings (TrainConfig fields)")
    p.add_argument("--backbone", help="backbone name (see `backbones`); default mobilenetv3_small_100")
    p.add_argument("--pretrained", metavar="none|imagenet|PATH", help="initial weights (default none)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    p.add_argument("--loss", choices=("ce", "focal", "kl", "bce"))
    p.add_argument("--train-percent", type=float, help="share of labelled images for training (rest: validation)")
    p.add_argument("--test-percent", type=float, help="share of labelled images held out for testing")
    p.add_argument("--input-size", type=int, help="input size in pixels (default 96; 0 = the backbone's default)")
    p.add_argument("--freeze", choices=tuple(FREEZE), help="none: fine-tune all; head: frozen backbone; "
                                                           "head-then-all: head first, then everything")
    p.add_argument("--out", metavar="MODEL", help="model folder to write (default <project>/cellclass_models/<backbone>-<time>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_common(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("predict", help="predict the classes of a project's unlabelled images",
                       description="Predict with a model folder; results go to <project>/cellclass_predictions.csv "
                                   "(labels are never changed) and optionally to --csv.")
    p.add_argument("folder", help="project folder, folder of images or one image file")
    p.add_argument("--model", required=True, metavar="MODEL", help="model folder")
    p.add_argument("--csv", metavar="OUT", help="also write the predictions to this CSV file")
    p.add_argument("--all", action="store_true", help="predict every image, labelled ones too")
    p.add_argument("--tta", action="store_true", help="average over flipped copies (test-time augmentation)")
    p.add_argument("--truth", metavar="CSV", help="CSV of image_id,class: report the accuracy of the predictions")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    add_common(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics of a model on a project's labelled images",
                       description="Evaluate a model folder on the labelled images of its test split (its "
                                   "validation split when there is no test split), or on val/train/all.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--model", required=True, metavar="MODEL", help="model folder")
    p.add_argument("--split", choices=("auto", "test", "val", "train", "all"), default="auto")
    p.add_argument("--tta", action="store_true", help="average over flipped copies")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    add_common(p)
    p.set_defaults(handler=cmd_evaluate)


# ---------------------------------------------------------------------------- backbones
def cmd_backbones(args: argparse.Namespace) -> dict[str, Any]:
    from ..learn.backbones import backbones_command_result, backbones_human
    from . import emit

    result = backbones_command_result()
    emit(args, result, backbones_human)
    return result


# ---------------------------------------------------------------------------- train
def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig of a ``train`` command line (file first, then the options)."""
    from ..learn.config import TrainConfig

    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    options = {"backbone": args.backbone, "pretrained": args.pretrained, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer, "loss": args.loss,
               "train_percent": args.train_percent, "test_percent": args.test_percent, "device": args.device,
               "seed": args.seed}
    base.update({k: v for k, v in options.items() if v is not None})
    if args.train_percent is not None or args.test_percent is not None:
        base["val_percent"] = None
    if args.input_size is not None:
        base["input_size"] = args.input_size or None
    if args.freeze is not None:
        base["fine_tune"] = FREEZE[args.freeze]
    return TrainConfig.from_dict(base)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train; under ``torchrun`` every rank trains and only rank 0 reports (the others stay quiet)."""
    from ..learn import distributed
    from ..learn.engine import run_training
    from ..learn.events import BatchProgress, CancelToken, EpochEnd, Finished, Log, Started, WarningEvent
    from . import emit, stderr_progress

    cfg = config_from_args(args)
    if args.resume and not args.out:
        raise CellclassError("--resume needs --out MODEL (the folder of the run to continue)")
    main_rank = distributed.env_rank() == 0
    say = _err if main_rank else _silent
    token = CancelToken()
    bars = {"cache": stderr_progress("decoding") if main_rank else _silent, "train": None}
    quiet = args.json or not main_rank
    finished = None
    warnings: list[str] = []
    try:
        for ev in run_training(args.folder, cfg, args.out, cancel=token, resume=args.resume):
            if isinstance(ev, BatchProgress):
                if ev.phase == "cache":
                    bars["cache"](ev.batch, ev.num_batches)
                elif ev.phase == "train":
                    if ev.batch == 1:
                        bars["train"] = stderr_progress(f"epoch {ev.epoch}/{cfg.epochs}") if main_rank else _silent
                    bars["train"](ev.batch, ev.num_batches)
            elif isinstance(ev, EpochEnd):
                v, t = ev.val, ev.train
                say(f"epoch {ev.epoch:>3}/{ev.epochs}  loss {t['loss']:.3f}  acc {t['accuracy']:.3f}  |  "
                     f"val loss {v['loss']:.3f}  val acc {v['accuracy']:.3f}"
                     f"{'' if ev.monitor in ('accuracy', 'loss') else f'  val {ev.monitor} {v[ev.monitor]:.3f}'}"
                     f"{'  *best' if ev.is_best else ''}  ({ev.seconds:.1f} s, {ev.images_per_second:.0f} img/s)")
            elif isinstance(ev, Started):
                say(f"training {cfg.backbone} on {ev.n_train} images ({ev.n_val} validation, {ev.n_test} test), "
                     f"{ev.in_chans} channel(s) at {ev.input_size} px on {ev.device} ({ev.precision})")
            elif isinstance(ev, WarningEvent):
                warnings.append(ev.message)
                say(f"warning: {ev.message}")
            elif isinstance(ev, Log) and not quiet:
                say(ev.message)
            elif isinstance(ev, Finished):
                finished = ev
    except KeyboardInterrupt:
        say("interrupted; the best model so far is kept in the model folder")
        raise
    finally:
        distributed.leave()
    assert finished is not None
    result = {"ok": True, "model": finished.model_dir, "best_epoch": finished.best_epoch,
              "epochs_run": finished.epochs_run, "stopped_early": finished.stopped_early,
              "cancelled": finished.cancelled, "seconds": round(finished.seconds, 2),
              "best_metrics": finished.best_metrics, "history": finished.history, "warnings": warnings,
              "config": cfg.to_dict()}

    def human(r: dict[str, Any]) -> str:
        m = r["best_metrics"]
        return (f"model written to {r['model']}\n"
                f"best epoch {r['best_epoch']}: validation accuracy {m.get('accuracy', 0):.3f}, "
                f"balanced accuracy {m.get('balanced_accuracy', m.get('f1_macro', 0)):.3f}, "
                f"macro F1 {m.get('f1_macro', 0):.3f} ({m.get('n', 0)} images); {r['seconds']:.0f} s")

    if main_rank:
        emit(args, result, human)
    return result


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _silent(*_args: Any) -> None:
    """Progress of the ranks other than 0 under torchrun: nothing."""


# ---------------------------------------------------------------------------- predict
def read_truth(path: str) -> dict[str, str]:
    """``{image_id: class}`` from a CSV whose first two columns are image id and class."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise CellclassError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if rows and rows[0] and rows[0][0].strip().lower() in ("image_id", "id", "image", "file"):
        rows = rows[1:]
    return {r[0].strip(): r[1].strip() for r in rows if len(r) >= 2}


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from ..learn.predict import predict
    from . import emit, stderr_progress

    result = predict(args.model, args.folder, all_images=args.all, tta=args.tta, batch_size=args.batch_size,
                     device=args.device, csv=args.csv, progress=stderr_progress("predicting"))
    out = {"ok": True, **result.to_dict(), "csv": args.csv, "tta": args.tta}
    if result.stored_in:
        out["stored_in"] = result.stored_in
    target = Path(args.folder)
    in_project = target.is_dir() and (target / "cellclass.json").exists()
    if in_project and len(result) and not result.stored_in and not args.csv:
        # nothing could be saved: the results still go to stdout, the exit code says it failed
        out["ok"] = False
        out["error"] = " ".join(result.warnings[0].split()) if result.warnings else "the predictions were not saved"
    for w in result.warnings if out["ok"] else result.warnings[1:]:
        _err(f"warning: {' '.join(w.split())}")
    if args.truth:
        truth = read_truth(args.truth)
        pairs = [(truth[i], p) for i, p in zip(result.ids, result.top_class) if i in truth]
        if not pairs:
            raise CellclassError(f"{args.truth}: none of the {len(result)} predicted images is listed")
        out["truth"] = {"file": args.truth, "n": len(pairs),
                        "accuracy": sum(t == p for t, p in pairs) / len(pairs)}

    def human(r: dict[str, Any]) -> str:
        counts: dict[str, int] = {}
        for p in r["predictions"]:
            key = ";".join(p["predicted"]) or "(none)"
            counts[key] = counts.get(key, 0) + 1
        lines = [f"predicted {r['n']} image(s) with {Path(r['model']).name}: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items())]
        if r.get("stored_in"):
            lines.append(f"stored in {r['stored_in']} (labels unchanged)")
        if r.get("csv"):
            lines.append(f"written to {r['csv']}")
        for s in r["skipped"]:
            lines.append(f"skipped {s['image_id']}: {s['reason']}")
        if r.get("truth"):
            t = r["truth"]
            lines.append(f"accuracy against {t['file']}: {t['accuracy']:.3f} ({t['n']} images)")
        return "\n".join(lines)

    emit(args, out, human)
    if not out["ok"]:
        from . import PROG

        _err(f"{PROG}: error: {out['error']}")
    return out


# ---------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from ..learn.evaluate import evaluate
    from . import emit, stderr_progress

    result = evaluate(args.model, args.folder, split=args.split, tta=args.tta, device=args.device,
                      progress=stderr_progress("evaluating"))

    def human(r: dict[str, Any]) -> str:
        m = r["metrics"]
        lines = [f"evaluation of {Path(r['model']).name} on the '{r['split']}' split ({r['n']} labelled images)"]
        keys = ("loss", "accuracy", "balanced_accuracy", "exact_match", "f1_macro", "f1_weighted", "f1_micro")
        lines.append("  " + "  ".join(f"{k} {m[k]:.3f}" for k in keys if k in m))
        lines.append(f"  {'class':<24}{'precision':>10}{'recall':>8}{'f1':>7}{'n':>5}")
        for name, pc in m["per_class"].items():
            lines.append(f"  {name:<24}{pc['precision']:>10.3f}{pc['recall']:>8.3f}{pc['f1']:>7.3f}{pc['support']:>5}")
        if "confusion_matrix" in m:
            lines.append("  confusion matrix (rows: true, columns: predicted, in class order):")
            for name, row in zip(r["classes"], m["confusion_matrix"]):
                lines.append(f"  {name:<24}" + "".join(f"{v:>6}" for v in row))
        for s in r["skipped"]:
            lines.append(f"  skipped {s['image_id']}: {s['reason']}")
        return "\n".join(lines)

    emit(args, result, human)
    return result
