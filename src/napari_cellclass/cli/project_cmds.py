"""Subcommands about project folders: sample, info, import-labels, export-labels."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import ProjectError
from ..core.project import Project
from ..core.sample import make_sample_project
from ..core.transfer import export_csv, import_csv, import_folders


def register(sub: argparse._SubParsersAction) -> None:
    from . import add_common

    p = sub.add_parser("sample", help="write the synthetic U2OS arrestin-GFP sample project",
                       description="Write the synthetic U2OS arrestin-GFP dataset (2-channel 16-bit "
                                   "OME-TIFF, part pre-labelled) into a new folder.")
    p.add_argument("folder", help="new or empty folder to write the sample into")
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--labelled", type=float, default=0.6, help="fraction pre-labelled (default 0.6)")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    add_common(p)
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("info", help="summarise a project: images, classes, labels, unreadable files",
                       description="List a project's images, classes and label counts, and check that "
                                   "every image can be read.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--quick", action="store_true", help="do not decode images (skip the readability check)")
    add_common(p)
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("import-labels", help="label images from a CSV or a folder-per-class layout",
                       description="Import labels from a CSV of 'image id, category[, split]' or from a "
                                   "folder-per-class layout ROOT/<class>/<image>.")
    p.add_argument("folder", help="project folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", metavar="FILE", help="CSV with image id and category columns")
    src.add_argument("--from-folders", metavar="ROOT", help="folder whose subfolders are the classes")
    p.add_argument("--multi-label", action="store_true",
                   help="for a new project: allow several classes per image ('a;b' in the CSV)")
    add_common(p)
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("gui", help="open napari with a project and the cellclass widgets",
                       description="Open napari with the project (images as layers, labelling widget "
                                   "docked) and the training and metrics widgets. Needs a display.")
    p.add_argument("folder", nargs="?", help="project folder (optional)")
    add_common(p)
    p.set_defaults(handler=cmd_gui)

    p = sub.add_parser("export-labels", help="write the labels to a CSV",
                       description="Write 'image_id,class[,split]' rows for every labelled image.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--csv", metavar="FILE", required=True, help="CSV file to write")
    p.add_argument("--all", action="store_true", help="include unlabelled images (empty class)")
    add_common(p)
    p.set_defaults(handler=cmd_export)


def cmd_sample(args: argparse.Namespace) -> dict[str, Any]:
    from . import emit

    if args.n < 4 or args.n > 100_000:
        raise ProjectError(f"--n {args.n}: choose between 4 and 100000 images")
    if args.size < 64 or args.size > 2048:
        raise ProjectError(f"--size {args.size}: choose between 64 and 2048 pixels")
    project = make_sample_project(args.folder, n=args.n, seed=args.seed,
                                  labelled_fraction=args.labelled, size=args.size)
    result = {"ok": True, **project.summary()}
    emit(args, result, _human_summary)
    return result


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from . import emit, stderr_progress

    project = Project.open(args.folder, create=False)
    unreadable = {} if args.quick else project.check_images(stderr_progress("checking images"))
    result = {"ok": True, **project.summary(),
              "checked": not args.quick,
              "unreadable": [{"image_id": k, "reason": v} for k, v in unreadable.items()],
              "predefined_split": _split_counts(project)}
    emit(args, result, _human_summary)
    return result


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    from . import emit

    project = Project.open(args.folder, multi_label=args.multi_label)
    report = import_csv(project, args.csv) if args.csv else import_folders(project, args.from_folders)
    result = {"ok": True, **report.as_dict(), "counts": project.counts()}

    def human(r: dict[str, Any]) -> str:
        lines = [f"labelled {r['labelled']} image(s) ({r['unchanged']} already had that label)"]
        if r["copied_images"]:
            lines.append(f"copied {r['copied_images']} image(s) into the project")
        if r["new_classes"]:
            lines.append("new classes: " + ", ".join(r["new_classes"]))
        if r["unmatched"]:
            lines.append(f"{r['unmatched']} row(s) matched no image, e.g. " + ", ".join(r["unmatched_examples"][:3]))
        if r["empty_class"]:
            lines.append(f"{r['empty_class']} row(s) had an empty class and were skipped (labels kept), e.g. "
                         + ", ".join(r["empty_class_examples"][:3]))
        if r["split_counts"]:
            lines.append("predefined split: " + ", ".join(f"{k} {v}" for k, v in r["split_counts"].items()))
        lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items()))
        return "\n".join(lines)

    emit(args, result, human)
    return result


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from . import emit

    project = Project.open(args.folder, create=False)
    n = export_csv(project, args.csv, include_unlabelled=args.all)
    result = {"ok": True, "rows": n, "csv": str(args.csv)}
    emit(args, result, lambda r: f"wrote {r['rows']} row(s) to {r['csv']}")
    return result


def cmd_gui(args: argparse.Namespace) -> dict[str, Any]:
    import os
    import sys

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ProjectError("no display found; run on a desktop, or under Xvfb: xvfb-run napari-cellclass gui DIR")
    if args.folder is not None:
        Project.open(args.folder)  # a clear error now rather than inside napari
    import subprocess

    # napari runs in its own process: the command line never imports the napari floor
    cmd = [sys.executable, "-m", "napari_cellclass._widgets.launch"]
    if args.folder is not None:
        cmd.append(str(Path(args.folder).expanduser().resolve()))
    code = subprocess.call(cmd)
    if code != 0:
        raise ProjectError(f"napari ended with exit code {code} (its messages are above)")
    return {"ok": True}


def _split_counts(project: Project) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in project.predefined_split().values():
        out[s] = out.get(s, 0) + 1
    return out


def _human_summary(r: dict[str, Any]) -> str:
    lines = [f"project {r['folder']}",
             f"  {r['images']} image(s): {r['labelled']} labelled, {r['unlabelled']} unlabelled"
             + (" (multi-label)" if r["multi_label"] else "")]
    for name, n in r["counts"].items():
        lines.append(f"  {name:<24} {n}")
    if r.get("predefined_split"):
        lines.append("  predefined split: " + ", ".join(f"{k} {v}" for k, v in r["predefined_split"].items()))
    for u in r.get("unreadable", []):
        lines.append(f"  unreadable: {u['image_id']}: {u['reason']}")
    for p in r.get("problems", []):
        lines.append(f"  note: {p}")
    return "\n".join(lines)
