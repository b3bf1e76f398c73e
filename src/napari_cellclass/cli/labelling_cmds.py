"""Subcommands that help label: suggest (what to label next) and check-labels (likely mistakes)."""
from __future__ import annotations

import argparse
from typing import Any

from ..core.strategies import AUTO_MIN_PER_CLASS, STRATEGIES


def register(sub: argparse._SubParsersAction) -> None:
    """Add the suggest and check-labels subcommands."""
    from . import add_common, add_device

    p = sub.add_parser("suggest", help="suggest which unlabelled images to label next",
                       description="Rank a project's unlabelled images by how much labelling them would teach "
                                   "the model. auto: typical images of unlabelled groups (from an ImageNet backbone, "
                                   "or the model's) until a model exists and every class has "
                                   f"{AUTO_MIN_PER_CLASS} labels, then the "
                                   "model's least certain images (smallest top-2 margin), kept diverse.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--model", metavar="MODEL", help="model folder (default: the project's newest model)")
    p.add_argument("--n", type=int, default=20, help="how many images to suggest (default 20)")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto", help="how to choose (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_device(p)
    add_common(p)
    p.set_defaults(handler=cmd_suggest)

    p = sub.add_parser("check-labels", help="find labelled images whose label is probably wrong",
                       description="Give every labelled image class probabilities from a model that did not see "
                                   "its label (k-fold cross-validation of a linear classifier on frozen backbone "
                                   "features) and rank the likely labelling mistakes with cleanlab's confident "
                                   "learning, most suspicious first.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--model", metavar="MODEL", help="use this model's backbone features (default: a frozen "
                                                    "ImageNet backbone)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the folds (default 0)")
    add_device(p)
    add_common(p)
    p.set_defaults(handler=cmd_check_labels)


def cmd_suggest(args: argparse.Namespace) -> dict[str, Any]:
    """Print the suggested images, best first."""
    from ..learn.suggest import suggest
    from . import emit, stderr_progress

    result = suggest(args.folder, model=args.model, n=args.n, strategy=args.strategy, seed=args.seed,
                     device=args.device, progress=stderr_progress("reading images"))
    out = {"ok": True, **result.to_dict()}

    def human(r: dict[str, Any]) -> str:
        if not r["suggestions"]:
            return "nothing to suggest: every image is labelled"
        lines = [f"{r['n']} image(s) to label next ({r['strategy']}"
                 + (f", features of {r['features']}" if r["features"] else "") + f"; {r['pool']} unlabelled):"]
        lines += [f"  {s['image_id']}  {s['score']:.3f}  {s['reason']}" for s in r["suggestions"]]
        lines += [f"note: {n}" for n in r["notes"]]
        return "\n".join(lines)

    emit(args, out, human)
    return out


def cmd_check_labels(args: argparse.Namespace) -> dict[str, Any]:
    """Print the likely labelling mistakes, most suspicious first."""
    from ..learn.label_check import check_labels
    from . import emit, stderr_progress

    result = check_labels(args.folder, folds=args.folds, model=args.model, seed=args.seed, device=args.device,
                          progress=stderr_progress("reading images"))
    out = {"ok": True, **result.to_dict()}

    def human(r: dict[str, Any]) -> str:
        lines = [f"checked {r['checked']} labelled image(s) with {r['folds']}-fold cross-validation on "
                 f"{r['features']} features (out-of-fold accuracy {r['out_of_fold_accuracy']:.3f}): "
                 f"{r['n_issues']} likely mistake(s)"]
        for i in r["issues"]:
            lines.append(f"  {i['image_id']}  labelled {_names(i['given'])}, looks like {_names(i['suggested'])}  "
                         f"({i['score']:.3f})")
        lines += [f"note: {n}" for n in r["notes"]]
        return "\n".join(lines)

    emit(args, out, human)
    return out


def _names(value: str | list[str]) -> str:
    return value if isinstance(value, str) else (";".join(value) or "(none)")
