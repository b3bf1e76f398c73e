"""Per-group (per-well) summaries of predictions and the plate layout of their wells (numpy only).

The group of an image comes from a ``group_by`` spec (see :mod:`.groups`). Its plate and well:
the named regex groups ``plate`` and ``well`` when the spec has them (other named groups make up
the plate when there is no ``plate``); otherwise the well is a well-looking last part of the group
(``plate1_B03`` -> plate ``plate1``, well ``B03``). Wells are ``A1``, ``A01``, ``b3`` or
``r02c05`` (row 2, column 5 -> ``B05``); rows past ``Z`` are ``AA`` .. ``AF`` (1536 wells).
The layout (96, 384 or 1536 wells) is the smallest that holds every well seen.

Wells of one plate with the same position (``A1``, ``A01``) are one group. Per group: the image
count, how many images have each class (single-label: the predicted class; multi-label: every
predicted class), the fraction of the group they are and the mean confidence.
With a ``verdict`` column, an ``uncertain`` image counts only in the ``uncertain`` column.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_write_text
from .errors import ProjectError
from .groups import GroupSpec, assign_groups
from .outputs import check_output_file
from .predictions import UNCERTAIN, Prediction

if TYPE_CHECKING:
    from .project import Project

__all__ = ["DEFAULT_GROUP_BY", "LAYOUTS", "NO_GROUP", "GroupSummary", "PlateLayout", "ScreenSummary",
           "default_group_by", "infer_layout", "parse_well", "summarize_groups", "summary_csv_text", "well_name",
           "write_summary_csv"]

#: The default ``group_by`` of summaries: the well in the file name (rows A-P: ``B03``, ``b3``, or ``r02c05``)
#: and the folder holding the image as the plate (``plate1/B03_s1.tif``, ``Plate_01/A01_f02.tif``,
#: ``r02c05f01.tiff``). 1536-well names (rows AA-AF) need a spec of their own.
DEFAULT_GROUP_BY = (r"(?i)(?:^|/)(?:(?P<plate>[^/]+)/)?[^/]*?(?<![a-z0-9])"
                    r"(?P<well>[a-p][0-9]{1,2}|r[0-9]{1,2}c[0-9]{1,2})(?![0-9])[^/]*$")
#: The group of the images the spec does not cover.
NO_GROUP = "(no group)"
_WELL = re.compile(r"(?i)([a-z]{1,2})0*([0-9]{1,2})|r0*([0-9]{1,2})c0*([0-9]{1,2})")
_LAST_WELL = re.compile(r"(?i)(?:^|[^a-z0-9])([a-z]{1,2}[0-9]{1,2}|r[0-9]{1,2}c[0-9]{1,2})$")


@dataclass(frozen=True)
class PlateLayout:
    """A plate format: ``rows`` x ``columns`` wells."""

    rows: int
    columns: int

    @property
    def wells(self) -> int:
        """How many wells the plate has."""
        return self.rows * self.columns

    def row_names(self) -> list[str]:
        """``['A', 'B', ...]`` (``'AA'`` .. after ``'Z'``)."""
        return [_row_letters(r) for r in range(self.rows)]


#: The plate formats, smallest first.
LAYOUTS = (PlateLayout(8, 12), PlateLayout(16, 24), PlateLayout(32, 48))


def _row_letters(row: int) -> str:
    return chr(65 + row) if row < 26 else "A" + chr(65 + row - 26)


def parse_well(text: str) -> tuple[int, int] | None:
    """``(row, column)`` from 0 of a well name (``A1``, ``A01``, ``p24``, ``AF48``, ``r02c05``), or None."""
    m = _WELL.fullmatch(text.strip())
    if m is None:
        return None
    if m.group(3) is not None:
        row, col = int(m.group(3)) - 1, int(m.group(4)) - 1
    else:
        letters = m.group(1).upper()
        if len(letters) == 2 and (letters[0] != "A" or letters[1] > "F"):
            return None
        row = ord(letters[-1]) - 65 + (26 if len(letters) == 2 else 0)
        col = int(m.group(2)) - 1
    return (row, col) if row >= 0 and col >= 0 else None


def well_name(row: int, column: int) -> str:
    """``B03`` for row 1, column 2 (from 0)."""
    return f"{_row_letters(row)}{column + 1:02d}"


def default_group_by(model_config: Mapping[str, object] | None = None) -> str:
    """The ``group_by`` a model was trained with (its ``config.json``), else :data:`DEFAULT_GROUP_BY`."""
    cfg = model_config or {}
    train, split = cfg.get("train_config"), cfg.get("split")
    found = ((train.get("group_by") if isinstance(train, Mapping) else None)
             or (split.get("group_by") if isinstance(split, Mapping) else None))
    return str(found) if found else DEFAULT_GROUP_BY


def infer_layout(wells: Iterable[tuple[int, int]]) -> PlateLayout:
    """The smallest plate format (96, 384, 1536 wells) that holds every ``(row, column)``; a bigger grid when
    none does."""
    cells = list(wells)
    rows = max((r for r, _c in cells), default=0) + 1
    cols = max((c for _r, c in cells), default=0) + 1
    for layout in LAYOUTS:
        if rows <= layout.rows and cols <= layout.columns:
            return layout
    return PlateLayout(rows, cols)


@dataclass(frozen=True)
class GroupSummary:
    """The predictions of one group: counts and fractions per class (and ``uncertain``), mean confidence."""

    group: str
    plate: str
    well: str  # normalised (``B03``); empty when the group names no well
    position: tuple[int, int] | None
    image_ids: tuple[str, ...]
    counts: dict[str, int]
    mean_confidence: float

    @property
    def n(self) -> int:
        """How many images the group has."""
        return len(self.image_ids)

    @property
    def fractions(self) -> dict[str, float]:
        """``count / n`` per column."""
        return {k: (v / self.n if self.n else 0.0) for k, v in self.counts.items()}

    def to_dict(self) -> dict[str, object]:
        """``{"group", "plate", "well", "n", "mean_confidence", "counts", "fractions"}``."""
        return {"group": self.group, "plate": self.plate, "well": self.well, "n": self.n,
                "mean_confidence": round(self.mean_confidence, 6), "counts": dict(self.counts),
                "fractions": {k: round(v, 6) for k, v in self.fractions.items()}}


@dataclass(frozen=True)
class ScreenSummary:
    """Every group's summary, the columns counted and the plate layout of the wells."""

    spec: str
    columns: tuple[str, ...]
    groups: tuple[GroupSummary, ...]
    layout: PlateLayout
    notes: tuple[str, ...] = field(default=())

    def plates(self) -> list[str]:
        """The plates that have wells, in order."""
        return list(dict.fromkeys(g.plate for g in self.groups if g.position is not None))

    def grid(self, plate: str, column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(fraction, n)`` of ``plate``, each ``(rows, columns)``: the fraction of ``column`` per well (NaN
        where the well has no images) and the image count."""
        frac = np.full((self.layout.rows, self.layout.columns), np.nan)
        n = np.zeros(frac.shape, np.int64)
        for g in self.groups:
            if g.plate == plate and g.position is not None and g.n:
                frac[g.position] = g.fractions.get(column, 0.0)
                n[g.position] = g.n
        return frac, n

    def find(self, plate: str, position: tuple[int, int]) -> GroupSummary | None:
        """The group at a well of a plate, or None."""
        return next((g for g in self.groups if g.plate == plate and g.position == position), None)


def _plate_and_well(group: str, parts: Mapping[str, str] | None) -> tuple[str, str]:
    """The (plate, well text) of a group: named ``plate``/``well`` parts, else a well-looking last part."""
    if parts is not None and parts.get("well"):
        plate = parts.get("plate") or "/".join(v for k, v in parts.items() if k != "well" and v)
        return plate, parts["well"]
    m = _LAST_WELL.search(group)
    if m is None or parse_well(m.group(1)) is None:
        return "", ""
    return group[:m.start(1)].rstrip("/_- ."), m.group(1)


def _regex_parts(spec: GroupSpec, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    assert spec.pattern is not None
    order = sorted(spec.pattern.groupindex, key=spec.pattern.groupindex.get)
    out: dict[str, dict[str, str]] = {}
    for iid in ids:
        m = spec.pattern.search(iid)
        if m is not None:
            parts = {k: m.group(k) for k in order if m.group(k)}
            if parts:
                out[iid] = parts
    return out


def _columns(predictions: Sequence[Prediction], classes: Sequence[str] | None) -> list[str]:
    cols = list(classes or ())
    for p in predictions:
        for c in (*p.probabilities, *p.classes):
            if c not in cols:
                cols.append(c)
    if any(p.verdict for p in predictions) and UNCERTAIN not in cols:
        cols.append(UNCERTAIN)
    return cols


def summarize_groups(predictions: Iterable[Prediction] | Mapping[str, Prediction], spec: GroupSpec,
                     project: Project | None = None, classes: Sequence[str] | None = None) -> ScreenSummary:
    """Group ``predictions`` by ``spec`` and count their classes per group (see the module's text).

    ``classes``: the class columns in order (default: as the predictions name them). Images the spec
    does not cover make one group, ``(no group)``.

    Raises
    ------
    ProjectError
        One line when the spec covers none of the images (or a ``column:`` spec has no project).
    """
    items = list(predictions.values() if isinstance(predictions, Mapping) else predictions)
    ids = [p.image_id for p in items]
    if spec.kind == "regex":
        parts = _regex_parts(spec, ids)
        of = {i: "/".join(parts[i].values()) for i in parts}
        if ids and not of:
            raise ProjectError(f"group_by={spec.text!r} matches none of the {len(ids)} predicted image ids (e.g. "
                               f"{ids[0]!r}); fix the pattern (it is searched in the image id, a path with /)")
    else:
        parts = {}
        groups = assign_groups(spec, ids, project, what="predicted")
        uncovered = set(groups.uncovered)
        of = {i: g for i, g in groups.of.items() if i not in uncovered}
    cols = _columns(items, classes)
    # one entry per well of a plate (A1 and A01 are one well), else per group
    members: dict[object, tuple[str, str, tuple[int, int] | None, list[Prediction]]] = {}
    for p in items:
        group = of.get(p.image_id, NO_GROUP)
        plate, well = ("", "") if group == NO_GROUP else _plate_and_well(group, parts.get(p.image_id))
        position = parse_well(well) if well else None
        key = (plate, position) if position is not None else group
        members.setdefault(key, (group, plate, position, []))[3].append(p)
    rows: list[GroupSummary] = []
    for group, plate, position, preds in members.values():
        counts = dict.fromkeys(cols, 0)
        for p in preds:
            if p.verdict == UNCERTAIN:
                counts[UNCERTAIN] += 1
            else:
                for c in p.classes:
                    counts[c] += 1
        conf = [p.confidence for p in preds if math.isfinite(p.confidence)]
        rows.append(GroupSummary(group, plate, well_name(*position) if position else "", position,
                                 tuple(p.image_id for p in preds), counts, float(np.mean(conf)) if conf else 0.0))
    rows.sort(key=lambda g: (g.group == NO_GROUP, g.position is None, g.plate, g.position or (0, 0), g.group))
    layout = infer_layout(g.position for g in rows if g.position is not None)
    notes = []
    if NO_GROUP in members:
        left = members[NO_GROUP][3]
        notes.append(f"group_by {spec.text!r} covers no group for {len(left)} of {len(items)} image(s) (e.g. "
                     f"{left[0].image_id}); they are counted as {NO_GROUP}")
    return ScreenSummary(spec.text, tuple(cols), tuple(rows), layout, tuple(notes))


def summary_csv_text(summary: ScreenSummary) -> str:
    """``group,plate,well,n,mean_confidence,count:<class>...,fraction:<class>...`` rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "plate", "well", "n", "mean_confidence", *(f"count:{c}" for c in summary.columns),
                *(f"fraction:{c}" for c in summary.columns)])
    for g in summary.groups:
        fr = g.fractions
        w.writerow([g.group, g.plate, g.well, g.n, f"{g.mean_confidence:.6f}", *(g.counts[c] for c in summary.columns),
                    *(f"{fr[c]:.6f}" for c in summary.columns)])
    return buf.getvalue()


def write_summary_csv(path: str | os.PathLike, summary: ScreenSummary) -> Path:
    """Write the summary as a CSV file (atomic; a project's own files are refused)."""
    path = check_output_file(path)
    atomic_write_text(path, summary_csv_text(summary), fsync=False)
    return path
