"""Subcommands about models: backbones, train, predict, evaluate (torch is imported on use)."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import CellclassError
from . import screen_cmds

if TYPE_CHECKING:
    from ..core.predictions import Prediction
    from ..learn.config import TrainConfig
    from ..learn.events import BatchProgress, EpochEnd, Event, Finished
    from ..learn.predict import PredictionResult
    from ..learn.settings import Setting

FREEZE = {"none": "full", "head": "head", "head-then-all": "head-then-all"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the backbones, train, predict and evaluate subcommands."""
    from . import add_common, add_device

    p = sub.add_parser("backbones", help="list the backbones (MIA names mapped to timm, AlexNet, any timm model)",
                       description="List the supported backbones with parameter counts and default input size.")
    add_common(p)
    p.set_defaults(handler=cmd_backbones)

    p = sub.add_parser("train", help="train a classifier on a project's labelled images",
                       description="Train a CNN on the labelled images of a project and write a model folder "
                                   "(model.safetensors + config.json). Options override the --config file.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of training settings (TrainConfig fields)")
    p.defer(_add_train_flags)  # generated from TrainConfig, which loads torch: only when `train` is used
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("predict", help="predict the classes of a project's unlabelled images, or of a whole screen",
                       description="Predict with a model folder; results go to <project>/cellclass_predictions.csv "
                                   "(labels are never changed) and optionally to --csv. Images are decoded and "
                                   "predicted in chunks, so memory does not grow with their number; --csv grows "
                                   "chunk by chunk, and a rerun skips the images it already holds predictions of "
                                   "by the same model (same name and weights). Under torchrun each process "
                                   "predicts its share and rank 0 writes.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a project folder, or folders of images, image files and glob patterns (quoted, e.g. "
                        "'plate*/**/*.tif'; ** goes down any number of folders)")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model folder, or a BioImage Model Zoo classifier package (.zip or folder)")
    p.add_argument("--csv", metavar="OUT", help="also write the predictions to this CSV file (appended chunk by chunk)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", default=None,
                       help="skip images the outputs already hold predictions of by this model, made after the "
                            "image last changed (the default outside a project)")
    again.add_argument("--fresh", dest="resume", action="store_false",
                       help="predict every image again and start --csv afresh (the default for a project)")
    p.add_argument("--chunk-size", type=int, metavar="N",
                   help="images decoded and predicted at a time, per process (default: what fits 512 MB, "
                        "at most 4096)")
    p.add_argument("--all", action="store_true", help="predict every image, labelled ones too")
    p.add_argument("--tta", action="store_true", help="average over flipped copies (test-time augmentation)")
    p.add_argument("--truth", metavar="CSV", help="CSV of image_id,class: report the accuracy of the predictions")
    p.add_argument("--min-confidence", metavar="P", type=_or_auto(float),
                   help="mark images whose prediction is less sure than P (0..1) as uncertain: a 'verdict' column "
                        "with the class or 'uncertain'; auto: the confidence at which the model was 95%% accurate "
                        "on its validation images")
    p.add_argument("--batch-size", type=int, default=128)
    screen_cmds.add_summary_flags(p)
    add_device(p)
    add_common(p)
    p.set_defaults(handler=cmd_predict, resume=None)

    p = sub.add_parser("evaluate", help="metrics of a model on a project's labelled images",
                       description="Evaluate a model folder on the labelled images of its test split (its "
                                   "validation split when there is no test split), or on val/train/all. With "
                                   "--out DIR, also write the files the Metrics dock exports: "
                                   "<model>_<split>_metrics.csv (per-class precision, recall, F1, support and the "
                                   "averages), <model>_<split>_predictions.csv (each image's true and predicted "
                                   "class) and <model>_<split>_confusion_matrix.csv (rows: true class, columns: "
                                   "predicted; multi-label: each class's true/false positives and negatives), "
                                   "<model>_<split>_reliability.csv/.png (accuracy per confidence bin, without "
                                   "and with the model's calibration) and <model>_<split>_coverage.csv (accuracy "
                                   "of the images accepted above each confidence).")
    p.add_argument("folder", help="project folder")
    p.add_argument("--model", required=True, metavar="MODEL", help="model folder")
    p.add_argument("--split", choices=("auto", "test", "val", "train", "all"), default="auto")
    p.add_argument("--tta", action="store_true", help="average over flipped copies")
    add_device(p)
    p.add_argument("--out", metavar="DIR", help="also write the metrics, per-image predictions, confusion-matrix, "
                                                "reliability and coverage CSV files and the reliability diagram "
                                                "(PNG) into this folder (created when missing)")
    p.add_argument("--target-accuracy", type=float, default=0.95, metavar="A",
                   help="report the confidence at which the predictions reach this accuracy (default 0.95)")
    add_common(p)
    p.set_defaults(handler=cmd_evaluate)


# ---------------------------------------------------------------------------- backbones
def cmd_backbones(args: argparse.Namespace) -> dict[str, Any]:
    """List the backbones."""
    from ..learn.backbones import backbones_command_result, backbones_human
    from . import emit

    result = backbones_command_result()
    emit(args, result, backbones_human)
    return result


# ---------------------------------------------------------------------------- train
def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``train``: one per setting declared with ``cli=True``, then the run's own flags."""
    from ..learn.config import TrainConfig
    from . import add_common

    for s in TrainConfig.settings():
        if s.cli:
            p.add_argument(s.flag, **setting_flag(s))
    p.add_argument("--freeze", choices=tuple(FREEZE), help="none: fine-tune all; head: frozen backbone; "
                                                           "head-then-all: head first, then everything")
    p.add_argument("--out", metavar="MODEL",
                   help="model folder to write (default <project>/cellclass_models/<backbone>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_common(p)


def setting_flag(s: Setting) -> dict[str, Any]:
    """``add_argument`` options of a declared setting: its type, choices and help (default None: not given)."""
    default = s.none_value if s.default is None else s.default
    help_text = (f"{s.description} (default {default})" if default != "" else s.description).replace("%", "%%")
    if s.kind is bool:
        return {"action": argparse.BooleanOptionalAction, "help": help_text}
    kind = {int: int, float: float}.get(s.kind, str)
    kw: dict[str, Any] = {"type": _or_auto(kind) if s.auto else kind, "help": help_text}
    if s.enum:
        kw["choices"] = s.enum
    if s.metavar:
        kw["metavar"] = s.metavar
    return kw


def _or_auto(kind: type) -> Callable[[str], Any]:
    """An argparse type that also takes the word ``auto``."""
    def parse(text: str) -> Any:
        return text if text == "auto" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a ``train`` command line (file first, then the options)."""
    from ..learn.config import TrainConfig

    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    for s in TrainConfig.settings():
        value = getattr(args, s.name, None) if s.cli else None
        if value is not None:
            base[s.name] = None if s.nullable and value == s.none_value else value
    if args.train_percent is not None or args.test_percent is not None:
        base["val_percent"] = None  # validation: what the options leave
    if args.freeze is not None:
        base["fine_tune"] = FREEZE[args.freeze]
    return TrainConfig.from_dict(base)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train; under ``torchrun`` every rank trains and only rank 0 reports (the others stay quiet)."""
    from ..learn import distributed
    from ..learn.engine import run_training
    from ..learn.events import CancelToken
    from . import emit

    cfg = config_from_args(args)
    if args.resume and not args.out:
        raise CellclassError("--resume needs --out MODEL (the folder of the run to continue)")
    main_rank = distributed.env_rank() == 0
    report = _TrainReport(cfg, main_rank, quiet=args.json or not main_rank)
    try:
        for ev in run_training(args.folder, cfg, args.out, cancel=CancelToken(), resume=args.resume):
            report.show(ev)
    except KeyboardInterrupt:
        report.say(report.interrupted())
        raise
    finally:
        distributed.leave()
    fin = report.finished
    assert fin is not None
    result = {"ok": True, "model": fin.model_dir, "best_epoch": fin.best_epoch, "epochs_run": fin.epochs_run,
              "stopped_early": fin.stopped_early, "cancelled": fin.cancelled, "seconds": round(fin.seconds, 2),
              "startup": fin.startup,
              "best_metrics": fin.best_metrics, "history": fin.history, "warnings": report.warnings,
              "config": cfg.to_dict()}
    if main_rank:
        emit(args, result, _train_human)
    return result


class _TrainReport:
    """What ``train`` prints on stderr while it runs (rank 0 only), and the warnings and result it keeps."""

    def __init__(self, cfg: TrainConfig, main_rank: bool, quiet: bool) -> None:
        from . import stderr_progress

        self.cfg = cfg
        self.main_rank = main_rank
        self.quiet = quiet
        self.say: Callable[[str], None] = _err if main_rank else _silent
        self.cache_bar = stderr_progress("decoding") if main_rank else _silent
        self.train_bar: Callable[[int, int], None] = _silent
        self.warnings: list[str] = []
        self.finished: Finished | None = None
        self.best_saved: str | None = None  # the model folder, once a best epoch was written

    def interrupted(self) -> str:
        """What an interrupted run leaves behind, in one line."""
        if self.best_saved is None:
            return "interrupted before the first epoch ended; no model was saved"
        return f"interrupted; the best model so far is kept in {self.best_saved}"

    def show(self, ev: Event) -> None:
        """Print (or keep) one event of the run."""
        from ..learn.events import BatchProgress, CheckpointSaved, EpochEnd, Finished, Log, Started, WarningEvent

        if isinstance(ev, CheckpointSaved) and ev.kind == "best":
            self.best_saved = ev.path
        if isinstance(ev, BatchProgress):
            self._progress(ev)
        elif isinstance(ev, EpochEnd):
            self.say(_epoch_line(ev))
        elif isinstance(ev, Started):
            self.say(f"training {self.cfg.backbone} on {ev.n_train} images ({ev.n_val} validation, {ev.n_test} "
                     f"test), {ev.in_chans} channel(s) at {ev.input_size} px on {ev.device} ({ev.precision})")
        elif isinstance(ev, WarningEvent):
            self.warnings.append(ev.message)
            self.say(f"warning: {ev.message}")
        elif isinstance(ev, Log) and not self.quiet:
            self.say(ev.message)
        elif isinstance(ev, Finished):
            self.finished = ev

    def _progress(self, ev: BatchProgress) -> None:
        from . import stderr_progress

        if ev.phase == "cache":
            self.cache_bar(ev.batch, ev.num_batches)
        elif ev.phase == "train":
            if ev.batch == 1 and self.main_rank:
                self.train_bar = stderr_progress(f"epoch {ev.epoch}/{self.cfg.epochs}")
            self.train_bar(ev.batch, ev.num_batches)


def _epoch_line(ev: EpochEnd) -> str:
    v, t = ev.val, ev.train
    extra = "" if ev.monitor in ("accuracy", "loss") else f"  val {ev.monitor} {v[ev.monitor]:.3f}"
    return (f"epoch {ev.epoch:>3}/{ev.epochs}  loss {t['loss']:.3f}  acc {t['accuracy']:.3f}  |  "
            f"val loss {v['loss']:.3f}  val acc {v['accuracy']:.3f}{extra}{'  *best' if ev.is_best else ''}  "
            f"({ev.seconds:.1f} s, {ev.images_per_second:.0f} img/s)")


def _train_human(r: dict[str, Any]) -> str:
    m = r["best_metrics"]
    return (f"model written to {r['model']}\n"
            f"best epoch {r['best_epoch']}: validation accuracy {m.get('accuracy', 0):.3f}, "
            f"balanced accuracy {m.get('balanced_accuracy', m.get('f1_macro', 0)):.3f}, "
            f"macro F1 {m.get('f1_macro', 0):.3f} ({m.get('n', 0)} images); {r['seconds']:.0f} s"
            + (f" (first batch {r['startup']['seconds']:.1f} s after the start)" if r.get("startup") else ""))


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _silent(*_args: Any) -> None:
    """Progress of the ranks other than 0 under torchrun: nothing."""


# ---------------------------------------------------------------------------- predict
def read_truth(path: str) -> dict[str, str]:
    """``{image_id: class}`` from a CSV whose first two columns are image id and class.

    Read without blocking and bounded: a FIFO, a device or a huge file is one error line.
    """
    from ..core.textfiles import MAX_CSV_BYTES, read_text_bounded

    text = read_text_bounded(path, MAX_CSV_BYTES, "CSV file of true classes",
                             fix="give a CSV file of image_id,class rows", error=CellclassError)
    rows = list(csv.reader(io.StringIO(text or "", newline="")))
    if rows and rows[0] and rows[0][0].strip().lower() in ("image_id", "id", "image", "file"):
        rows = rows[1:]
    return {r[0].strip(): r[1].strip() for r in rows if len(r) >= 2}


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Predict a project's (or files') classes; store them and optionally write a CSV. Under ``torchrun``
    every rank predicts its share and only rank 0 writes and reports."""
    from ..learn import distributed
    from ..learn.predict import predict
    from . import emit, stderr_progress

    main_rank = distributed.env_rank() == 0
    if not main_rank:
        args.json = False  # under torchrun only rank 0 prints on stdout (an error of another rank: on stderr)
    truth = read_truth(args.truth) if args.truth else None  # a bad file is refused before predicting
    summary = screen_cmds.plan_summary(args)  # so are a bad --group-by, --heatmap-class or --summary
    images = args.paths[0] if len(args.paths) == 1 else args.paths
    try:
        result = predict(args.model, images, all_images=args.all, tta=args.tta, batch_size=args.batch_size,
                         device=args.device, csv=args.csv,
                         progress=stderr_progress("predicting") if main_rank else None,
                         min_confidence=args.min_confidence, resume=args.resume, chunk_size=args.chunk_size)
    finally:
        distributed.leave()
    if not main_rank:
        return {"ok": True}
    counts: dict[str, int] = {}
    for pred in result.predicted():
        key = ";".join(pred) or "(none)"
        counts[key] = counts.get(key, 0) + 1
    fields = result.to_dict() if args.json else {"model": result.model_name, "n": len(result), "reused": result.reused,
                                                 "skipped": [{"image_id": k, "reason": v}
                                                             for k, v in result.skipped.items()]}
    if result.min_confidence is not None and not args.json:  # the text needs only the numbers
        fields.update(min_confidence=result.min_confidence, uncertain=result.verdicts().count("uncertain"))
    out = {"ok": True, **fields, "counts": counts, "csv": args.csv, "tta": args.tta}
    if result.stored_in:
        out["stored_in"] = result.stored_in
    target = Path(args.paths[0])
    in_project = len(args.paths) == 1 and target.is_dir() and (target / "cellclass.json").exists()
    if in_project and len(result) and not result.stored_in and not args.csv:
        # nothing could be saved: the results still go to stdout, the exit code says it failed
        out["ok"] = False
        out["error"] = " ".join(result.warnings[0].split()) if result.warnings else "the predictions were not saved"
    for w in result.warnings if out["ok"] else result.warnings[1:]:
        _err(f"warning: {' '.join(w.split())}")
    if truth is not None:
        pairs = [(truth[i], p) for i, p in zip(result.ids, result.top_class, strict=False) if i in truth]
        if not pairs:
            raise CellclassError(f"{args.truth}: none of the {len(result)} predicted images is listed")
        out["truth"] = {"file": args.truth, "n": len(pairs),
                        "accuracy": sum(t == p for t, p in pairs) / len(pairs)}
    if summary is not None and (len(result) or result.reused):
        out["summary"] = summary.run(_all_records(result, args.csv, args.paths[0] if in_project else None))

    def human(r: dict[str, Any]) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
        lines = [f"predicted {r['n']} image(s) with {Path(r['model']).name}" + (f": {counts}" if counts else "")]
        if r.get("reused"):
            lines.append(f"skipped {r['reused']} image(s) already predicted by this model")
        if "uncertain" in r:
            lines.append(f"uncertain (confidence below {r['min_confidence']:.3g}): {r['uncertain']} of {r['n']}")
        if r.get("stored_in"):
            lines.append(f"stored in {r['stored_in']} (labels unchanged)")
        if r.get("csv"):
            lines.append(f"written to {r['csv']}")
        for s in r["skipped"]:
            lines.append(f"skipped {s['image_id']}: {s['reason']}")
        if r.get("truth"):
            t = r["truth"]
            lines.append(f"accuracy against {t['file']}: {t['accuracy']:.3f} ({t['n']} images)")
        return "\n".join(lines + (screen_cmds.summary_lines(r["summary"]) if "summary" in r else []))

    emit(args, out, human)
    if not out["ok"]:
        from . import PROG

        _err(f"{PROG}: error: {out['error']}")
    return out


def _all_records(result: PredictionResult, csv_path: str | None, project: str | None) -> list[Prediction]:
    """The predictions of the run, with those a resumed run skipped: every row of this model in ``--csv``
    (or the project's file)."""
    from ..core.predictions import read_predictions, read_predictions_csv

    if not result.reused or (csv_path is None and project is None):
        return result.records()
    rows = read_predictions_csv(csv_path) if csv_path is not None else read_predictions(project)  # type: ignore[arg-type]
    return [p for p in rows.values() if p.model_id == result.model_id]


# ---------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Metrics of a model on a split (and with --out, their CSV files)."""
    from ..learn.calibration import describe
    from ..learn.evaluate import evaluate
    from . import emit, stderr_progress

    result = evaluate(args.model, args.folder, split=args.split, tta=args.tta, device=args.device,
                      progress=stderr_progress("evaluating"), out=args.out, target_accuracy=args.target_accuracy)

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
            for name, row in zip(r["classes"], m["confusion_matrix"], strict=False):
                lines.append(f"  {name:<24}" + "".join(f"{v:>6}" for v in row))
        lines += ["  " + line for line in describe(r)]
        for s in r["skipped"]:
            lines.append(f"  skipped {s['image_id']}: {s['reason']}")
        for f in r.get("files", []):
            lines.append(f"  written: {f}")
        return "\n".join(lines)

    emit(args, result, human)
    return result
