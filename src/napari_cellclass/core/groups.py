"""Groups of images that must stay in one split (a specimen, a video, a well), from a ``group_by`` spec.

A spec is one of:

- a regular expression with a named group, searched in the image id (the project-relative
  path with ``/``): ``(?P<well>[A-P][0-9]{2})``; with several named groups the group is their
  combination (``(?P<plate>plate[0-9]+)/(?P<well>[A-P][0-9]{2})`` -> ``plate1/B03``);
- ``folder`` (the folder holding the image), ``folder:N`` (the N-th folder from the top,
  0 = the first folder below the project) or ``folder:-N`` (N-th from the image upward);
- ``column:NAME`` or a bare ``NAME`` (no regex characters): the column ``NAME`` of
  ``<project>/cellclass_groups.csv``, whose first column (or one headed ``image_id``) names
  the images (ids, file names or stems, as ``import-labels`` reads them).

An image the spec does not cover (no match, not that deep, not in the CSV or an empty cell)
is a group of its own.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, ProjectError

if TYPE_CHECKING:
    from .project import Project

__all__ = ["GROUPS_NAME", "GroupSpec", "Groups", "assign_groups", "crossing_note", "parse_group_spec"]

#: The project file of ``column:NAME`` specs: ``image_id,<column>,...`` rows with a header.
GROUPS_NAME = "cellclass_groups.csv"
_REGEX_CHARS = set("()[]{}*+?\\^$|")
_FOLDER = re.compile(r"folder(?::(.*))?", re.IGNORECASE)
_FIX = ("use a regex with a named group such as (?P<well>[A-P][0-9]{2}), folder, folder:N or "
        f"column:NAME (a column of {GROUPS_NAME})")
_SINGLE = "\x00"  # prefix of the group of an image the spec does not cover (never a real group name)


@dataclass(frozen=True)
class GroupSpec:
    """A parsed ``group_by`` value: ``kind`` is ``'regex'``, ``'folder'`` or ``'column'``."""

    text: str
    kind: str
    pattern: re.Pattern[str] | None = None
    level: int = -1
    column: str = ""


def parse_group_spec(text: str) -> GroupSpec | None:
    """The :class:`GroupSpec` of a ``group_by`` value (None when empty).

    Raises
    ------
    ConfigError
        One line naming the value and the fix (a bad regex, no named group, a bad folder level).
    """
    text = (text or "").strip()
    if not text:
        return None
    folder = _FOLDER.fullmatch(text)
    if folder:
        level = folder.group(1)
        try:
            return GroupSpec(text, "folder", level=-1 if level is None else int(level))
        except ValueError:
            raise ConfigError(f"group_by={text!r}: the folder level must be a whole number (folder, folder:0, "
                              "folder:-1)") from None
    if text.casefold().startswith("column:"):
        name = text.split(":", 1)[1].strip()
        if not name:
            raise ConfigError(f"group_by={text!r} names no column; write column:NAME (a column of {GROUPS_NAME})")
        return GroupSpec(text, "column", column=name)
    if not _REGEX_CHARS & set(text):
        return GroupSpec(text, "column", column=text)
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ConfigError(f"group_by={text!r} is not a valid regular expression ({exc}); {_FIX}") from None
    if not pattern.groupindex:
        raise ConfigError(f"group_by={text!r} has no named group; write (?P<name>...) around the part of the image "
                          "id that names the group, e.g. (?P<well>[A-P][0-9]{2})")
    return GroupSpec(text, "regex", pattern=pattern)


@dataclass(frozen=True)
class Groups:
    """The group of each image id, and the ids the spec did not cover (each its own group)."""

    spec: str
    of: Mapping[str, str]
    uncovered: tuple[str, ...] = ()

    def count(self, ids: Sequence[str]) -> int:
        """How many distinct groups ``ids`` belong to."""
        return len({self.of[i] for i in ids})

    def name(self, group: str) -> str:
        """A group as shown to the user (an uncovered image's group is the image id)."""
        return group[len(_SINGLE):] if group.startswith(_SINGLE) else group

    def note(self) -> str | None:
        """A note counting the images the spec did not cover, or None."""
        if not self.uncovered:
            return None
        eg = ", ".join(self.uncovered[:3])
        return (f"group_by {self.spec!r} covers no group for {len(self.uncovered)} of {len(self.of)} labelled "
                f"image(s) (e.g. {eg}); each is a group of its own")


def assign_groups(spec: GroupSpec, ids: Sequence[str], project: Project | None, what: str = "labelled") -> Groups:
    """The group of each of ``ids`` under ``spec`` (``project``: where a ``column:`` spec's CSV lies; ``what``
    the ids are, for the error).

    Raises
    ------
    ProjectError
        One line when the spec covers none of the images (a regex that matches no id, a folder
        level no image has, a CSV column that names none of them) or the CSV cannot be used.
    """
    if spec.kind == "regex":
        found = {i: _regex_group(spec.pattern, i) for i in ids}
        verb = "matches none of the"
        fix = "fix the pattern (it is searched in the project-relative path with /)"
    elif spec.kind == "folder":
        found = {i: _folder_group(spec.level, i) for i in ids}
        verb = "finds that folder level in none of the"
        fix = "pick a level the image paths have (folder = the folder holding the image)"
    elif project is not None:
        found = _column_groups(spec, ids, project)
        verb = "gives a group for none of the"
        fix = f"fill the column '{spec.column}' of {GROUPS_NAME} for the labelled images"
    else:
        raise ProjectError(f"group_by={spec.text!r} reads {GROUPS_NAME}, which needs a project folder")
    uncovered = tuple(i for i in ids if not found.get(i))
    if ids and len(uncovered) == len(ids):
        raise ProjectError(f"group_by={spec.text!r} {verb} {len(ids)} {what} image ids (e.g. {ids[0]!r}); {fix}")
    of = {i: (found[i] if found.get(i) else _SINGLE + i) for i in ids}
    return Groups(spec.text, of, uncovered)


def _regex_group(pattern: re.Pattern[str] | None, iid: str) -> str | None:
    m = pattern.search(iid) if pattern is not None else None
    if m is None:
        return None
    parts = [v for v in (m.group(n) for n in sorted(pattern.groupindex, key=pattern.groupindex.get)) if v]
    return "/".join(parts) or None


def _folder_group(level: int, iid: str) -> str | None:
    folders = iid.split("/")[:-1]
    if -len(folders) <= level < len(folders):
        return folders[level]
    return None


def _column_groups(spec: GroupSpec, ids: Sequence[str], project: Project) -> dict[str, str]:
    """``{image id: cell}`` from the column of ``cellclass_groups.csv``."""
    from .transfer import image_matcher, read_csv_rows

    path = Path(project.root) / GROUPS_NAME
    if not path.is_file():
        raise ProjectError(f"group_by={spec.text!r} reads the column '{spec.column}' of {path}, which does not "
                           f"exist; write it (image_id,{spec.column} rows with a header) or {_FIX}")
    rows = read_csv_rows(path)
    header = [h.strip() for h in rows[0]]
    folded = [h.casefold() for h in header]
    if spec.column.casefold() not in folded:
        raise ProjectError(f"{path}: no column '{spec.column}' (columns: {', '.join(header)}); fix group_by or the "
                           "file's header")
    col = folded.index(spec.column.casefold())
    id_col = folded.index("image_id") if "image_id" in folded else 0
    match = image_matcher(project)
    wanted = set(ids)
    out: dict[str, str] = {}
    for row in rows[1:]:
        if len(row) <= max(col, id_col):
            continue
        iid = match(row[id_col])
        if iid in wanted and row[col].strip():
            out[iid] = row[col].strip()
    return out


def crossing_note(groups: Groups, parts: Mapping[str, Sequence[str]], source: str, examples: int = 2) -> str | None:
    """A warning when a group has images in two or more of ``parts`` (``{'train': ids, ...}``), else None."""
    where: dict[str, dict[str, list[str]]] = {}
    for name, ids in parts.items():
        for i in ids:
            where.setdefault(groups.of[i], {}).setdefault(name, []).append(i)
    crossing = sorted((g for g, by in where.items() if len(by) > 1),
                      key=lambda g: (-sum(len(v) for v in where[g].values()), g))
    if not crossing:
        return None
    first = where[crossing[0]]
    spans = " and ".join(f"{name} ({len(v)})" for name, v in first.items())
    eg = ", ".join(f"{v[0]} ({name})" for name, v in list(first.items())[:examples])
    return (f"group '{groups.name(crossing[0])}' has images in {spans}, e.g. {eg}; {len(crossing)} group(s) of "
            f"group_by {groups.spec!r} span splits in the {source} split, so validation sees the training groups: "
            "fix the split file or folders, or use split=random to split by group")
