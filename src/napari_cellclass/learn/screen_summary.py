"""Per-well summary of a screen's predictions: a CSV of every group and one heatmap PNG per plate."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ..core.groups import parse_group_spec
from ..core.outputs import check_figure_folder
from ..core.plates import DEFAULT_GROUP_BY, ScreenSummary, default_group_by, summarize_groups, write_summary_csv
from ..core.predictions import Prediction
from .figures import plate_figure, save_png

if TYPE_CHECKING:
    from ..core.project import Project

__all__ = ["SUMMARY_NAME", "check_heatmap_class", "check_summary_folder", "default_group_by", "heatmap_name",
           "summarize"]  # default_group_by: re-exported from core.plates

#: The summary CSV written into the output folder.
SUMMARY_NAME = "summary.csv"


def check_heatmap_class(name: str | None, classes: Sequence[str]) -> str:
    """The class a heatmap shows: ``name`` when it is one of ``classes`` (or ``uncertain``), the first class by
    default; :class:`ConfigError` naming the choices otherwise."""
    if name is None or name == "":
        if not classes:
            raise ConfigError("no class to draw: the predictions name no class")
        return classes[0]
    if name not in classes:
        raise ConfigError(f"heatmap class {name!r} is not a column of the predictions; use one of: "
                          f"{', '.join(classes)}")
    return name


def check_summary_folder(out: str | os.PathLike, project_root: str | os.PathLike | None = None) -> Path:
    """The summary folder (made later) when it may hold the files; :class:`ProjectError` otherwise."""
    return check_figure_folder(out, project_root, "--summary", "the heatmaps", "summary")


def heatmap_name(plate: str, class_name: str) -> str:
    """``heatmap_<plate>_<class>.png`` with characters unsafe in a file name replaced by ``-``."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"

    return f"heatmap_{safe(plate or 'plate')}_{safe(class_name)}.png"


def summarize(predictions: Iterable[Prediction] | Mapping[str, Prediction], spec: str | None,
              out: str | os.PathLike | None, heatmap_class: str | None = None, *, project: Project | None = None,
              classes: Sequence[str] | None = None) -> tuple[ScreenSummary, dict[str, Any]]:
    """Summarise predictions per group and (with ``out``) write ``out/summary.csv`` and one
    ``out/heatmap_<plate>_<class>.png`` per plate (the fraction of ``heatmap_class`` per well).

    ``spec``: a ``group_by`` value (None or empty: :data:`~napari_cellclass.core.plates.DEFAULT_GROUP_BY`).
    Returns the summary and a JSON-able ``{"ok", "group_by", "class", "layout", "plates", "groups", "files",
    "notes"}``.

    Raises
    ------
    ConfigError
        A bad ``spec`` or an unknown ``heatmap_class`` (one line naming it and the choices).
    ProjectError
        The spec covers none of the images; ``out`` is a file or inside ``project``.
    """
    parsed = parse_group_spec(spec or DEFAULT_GROUP_BY)
    assert parsed is not None
    folder = check_summary_folder(out, project.root if project is not None else None) if out is not None else None
    summary = summarize_groups(predictions, parsed, project, classes)
    cls = check_heatmap_class(heatmap_class, summary.columns)
    files: list[str] = []
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        files.append(str(write_summary_csv(folder / SUMMARY_NAME, summary)))
        taken: set[str] = set()
        for plate in summary.plates():
            name = heatmap_name(plate, cls)
            while name in taken:
                name = name.replace(".png", "_.png")
            taken.add(name)
            fraction, n = summary.grid(plate, cls)
            title = f"{plate + ': ' if plate else ''}fraction {cls} per well ({int(n.sum())} images)"
            files.append(str(save_png(plate_figure(fraction, n, title, label=f"fraction {cls}"), folder / name)))
    result = {"ok": True, "group_by": summary.spec, "class": cls,
              "layout": f"{summary.layout.wells} wells ({summary.layout.rows} x {summary.layout.columns})",
              "plates": summary.plates(), "groups": [g.to_dict() for g in summary.groups], "files": files,
              "notes": list(summary.notes)}
    return summary, result
