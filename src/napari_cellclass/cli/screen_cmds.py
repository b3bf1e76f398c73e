"""Per-well summaries: ``predict --summary DIR`` and ``summarize`` (a predictions CSV or a project's predictions)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import CellclassError

if TYPE_CHECKING:
    from ..core.predictions import Prediction
    from ..core.project import Project

_DEFAULT_HELP = ("default: the model's training group_by, else the well in the file name (B03, b3, r02c05) with "
                 "the folder holding the image as the plate: plate1/B03_s1.tif, Plate_01/A01_f02.tif, r02c05f01.tiff")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the summarize subcommand."""
    from . import add_common

    p = sub.add_parser("summarize", help="per-well summary and plate heatmaps of stored predictions",
                       description="Count the predicted classes per group (well) of a predictions CSV (predict "
                                   "--csv) or of a project's stored predictions, without predicting again. With "
                                   "--out DIR, write DIR/summary.csv (group, plate, well, n, mean confidence, "
                                   "count and fraction per class) and one DIR/heatmap_<plate>_<class>.png per "
                                   "plate (96, 384 or 1536 wells, from the wells seen).")
    p.add_argument("source", help="a predictions CSV file or a project folder")
    p.add_argument("--group-by", metavar="SPEC", help="regex with named groups plate and well, folder, folder:N or "
                                                      f"column:NAME; {_DEFAULT_HELP.replace('%', '%%')}")
    p.add_argument("--out", metavar="DIR", help="write summary.csv and the heatmaps into this folder")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="the class the heatmaps show (default: the first class of the predictions)")
    add_common(p)
    p.set_defaults(handler=cmd_summarize)


def add_summary_flags(p: argparse.ArgumentParser) -> None:
    """``predict``'s ``--summary DIR``, ``--group-by SPEC`` and ``--heatmap-class NAME``."""
    p.add_argument("--summary", metavar="DIR", help="also write DIR/summary.csv (per-group counts and fractions of "
                                                    "each class) and DIR/heatmap_<plate>_<class>.png per plate")
    p.add_argument("--group-by", metavar="SPEC", help="the groups (wells) of --summary: a regex with named groups "
                                                      "plate and well, folder, folder:N or column:NAME; "
                                                      f"{_DEFAULT_HELP.replace('%', '%%')}")
    p.add_argument("--heatmap-class", metavar="NAME",
                   help="the class whose fraction per well the heatmaps show (default: the model's first class)")


@dataclass(frozen=True)
class SummaryPlan:
    """What ``predict`` summarises once it has predicted: the spec, the class and the folder."""

    spec: str
    heatmap_class: str | None
    out: str | None
    project: Project | None

    def run(self, records: list[Prediction]) -> dict[str, Any]:
        """Summarise the final predictions (and write the files); the result's JSON."""
        from ..learn.screen_summary import summarize

        return summarize(records, self.spec, self.out, self.heatmap_class, project=self.project)[1]


def plan_summary(args: argparse.Namespace) -> SummaryPlan | None:
    """The summary ``predict`` was asked for (None without --summary, --group-by or --heatmap-class); a bad spec,
    class or folder is refused here, before predicting."""
    if not (args.summary or args.group_by or args.heatmap_class):
        return None
    from ..core.groups import parse_group_spec
    from ..core.model_folder import read_model_config
    from ..core.plates import default_group_by
    from ..core.predictions import UNCERTAIN
    from ..core.project import CONFIG_NAME, Project
    from ..learn.screen_summary import check_heatmap_class, check_summary_folder

    try:
        config = read_model_config(args.model)
    except CellclassError:
        config = {}  # a BioImage Model Zoo package: its classes are checked once predicted
    spec = args.group_by or default_group_by(config)
    parse_group_spec(spec)
    if config.get("classes"):
        classes = [*config["classes"], *((UNCERTAIN,) if args.min_confidence is not None else ())]
        check_heatmap_class(args.heatmap_class, classes)
    target = Path(args.paths[0]) if len(args.paths) == 1 else None  # a project only when named alone
    project = (Project.open(target, create=False) if target is not None and target.is_dir()
               and (target / CONFIG_NAME).exists() else None)
    if args.summary:
        check_summary_folder(args.summary, project.root if project is not None else None)
    return SummaryPlan(spec, args.heatmap_class, args.summary, project)


def summary_lines(r: dict[str, Any]) -> list[str]:
    """The summary for people: one line per group (up to 24), the plates and the files."""
    cls = r["class"]
    lines = [f"{len(r['groups'])} group(s) by {r['group_by']!r}; {len(r['plates'])} plate(s) of {r['layout']}; "
             f"fraction of {cls} per group:"]
    for g in r["groups"][:24]:
        lines.append(f"  {g['group']:<24} n {g['n']:>5}  {cls} {g['fractions'].get(cls, 0):.3f}")
    if len(r["groups"]) > 24:
        lines.append(f"  ... {len(r['groups']) - 24} more (see the CSV or --json)")
    lines += [f"note: {n}" for n in r["notes"]]
    lines += [f"written: {f}" for f in r["files"]]
    return lines


def _source_predictions(source: str) -> tuple[dict[str, Prediction], Project | None, list[str]]:
    from ..core.errors import ProjectError
    from ..core.predictions import predictions_path, read_predictions_csv
    from ..core.project import CONFIG_NAME, Project

    path = Path(source).expanduser()
    problems: list[str] = []
    if path.is_dir():
        if not (path / CONFIG_NAME).exists():
            raise ProjectError(f"{path}: not a project folder (no {CONFIG_NAME}); give a project or a predictions CSV")
        project = Project.open(path, create=False)
        found = read_predictions_csv(predictions_path(project.root), problems)
        if not found:
            raise ProjectError(f"{path}: the project has no stored predictions; run `napari-cellclass predict` first")
        return found, project, problems
    if not path.is_file():
        raise ProjectError(f"{path}: no such predictions CSV or project folder")
    found = read_predictions_csv(path, problems)
    if not found:
        raise ProjectError(f"{path}: no predictions in the file; write one with `napari-cellclass predict --csv`")
    return found, None, problems


def _model_group_by(project: Project | None, predictions: dict[str, Prediction]) -> str:
    """The training group_by of the project's model that made the predictions (one model only), else the default."""
    from ..core.model_folder import read_model_config
    from ..core.plates import default_group_by
    from ..learn.rundata import MODELS_DIR

    names = {p.model for p in predictions.values()}
    if project is None or len(names) != 1 or not next(iter(names)):
        return default_group_by()
    try:
        return default_group_by(read_model_config(project.root / MODELS_DIR / next(iter(names))))
    except CellclassError:
        return default_group_by()


def cmd_summarize(args: argparse.Namespace) -> dict[str, Any]:
    """Summarise stored predictions per group (and write the CSV and heatmaps)."""
    from ..learn.screen_summary import summarize
    from . import emit

    predictions, project, problems = _source_predictions(args.source)
    spec = args.group_by or _model_group_by(project, predictions)
    _summary, out = summarize(predictions, spec, args.out, args.class_name, project=project)
    out["notes"] += problems
    emit(args, out, lambda r: "\n".join(summary_lines(r)))
    return out
