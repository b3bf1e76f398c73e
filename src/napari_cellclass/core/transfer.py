"""Importing labels (CSV, folder-per-class) into a project and exporting them to CSV."""
from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .array_images import save_array_image as save_array_image  # its old import path
from .atomic import atomic_write_text
from .classes import class_key, validate_name
from .errors import ClassNameError, ProjectError
from .project import Project
from .scan import SKIP_DIRS, scan_images
from .splits import normalise_split_name, write_split_file
from .textfiles import MAX_CSV_BYTES, read_text_bounded

_ID_COLS = ("image_id", "image id", "image", "id", "file", "filename", "file name", "path", "name")
_CLASS_COLS = ("class", "classes", "category", "label", "labels", "image class", "target", "cell type")
_SPLIT_COLS = ("split", "set", "subset", "fold")
MULTI_SEPARATORS = (";", "|")


@dataclass
class ImportReport:
    """What an import did: counts, new classes, rows that matched no image or gave no class."""

    labelled: int = 0
    unchanged: int = 0
    new_classes: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    split_counts: dict[str, int] = field(default_factory=dict)
    copied: int = 0
    empty: list[str] = field(default_factory=list)  # rows with an empty class cell (left as they were)

    def as_dict(self) -> dict:
        return {"labelled": self.labelled, "unchanged": self.unchanged, "new_classes": self.new_classes,
                "unmatched": len(self.unmatched), "unmatched_examples": self.unmatched[:10],
                "empty_class": len(self.empty), "empty_class_examples": self.empty[:10],
                "split_counts": self.split_counts, "copied_images": self.copied}


def image_matcher(project: Project) -> Callable[[str], str | None]:
    """Map a CSV image reference (id, file name, stem or bare number) to an image id.

    The exact id is tried first (a backslash may be part of a file name); only then are
    backslashes read as Windows path separators.
    """
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    by_num: dict[int, list[str]] = {}
    for iid in project.image_ids:
        name = iid.rsplit("/", 1)[-1]
        stem = os.path.splitext(name)[0]
        by_name.setdefault(name.casefold(), []).append(iid)
        by_stem.setdefault(stem.casefold(), []).append(iid)
        if stem.isdigit():
            by_num.setdefault(int(stem), []).append(iid)

    def lookup(ref: str) -> str | None:
        if ref in project:
            return ref
        for table, key in ((by_name, ref.rsplit("/", 1)[-1].casefold()),
                           (by_stem, os.path.splitext(ref.rsplit("/", 1)[-1])[0].casefold()),
                           (by_num, int(ref) if ref.isdigit() else None)):
            hits = table.get(key, []) if key is not None else []
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ProjectError(
                    f"CSV entry {ref!r} matches several images ({', '.join(hits[:3])}); "
                    "use the image ids (relative paths) in the CSV"
                )
        return None

    def match(ref: str) -> str | None:
        ref = ref.strip()
        found = lookup(ref)
        if found is None and "\\" in ref:
            found = lookup(ref.replace("\\", "/"))
        return found

    return match


def _layout(first: list[str]) -> tuple[int, int, int | None, int]:
    """The columns of image id, class and split, and 1 when ``first`` is a header row (else 0).

    Without a header the columns are id, class and (when the first row's third cell names a
    split) split.
    """
    low = [h.strip().casefold() for h in first]

    def find(names: tuple[str, ...]) -> int | None:
        return next((low.index(n) for n in names if n in low), None)

    i, c, s = find(_ID_COLS), find(_CLASS_COLS), find(_SPLIT_COLS)
    if i is None and c is None:
        return 0, 1, (2 if len(first) > 2 and normalise_split_name(first[2]) else None), 0
    return (0 if i is None else i), (1 if c is None else c), s, 1


def read_csv_rows(path: Path) -> list[list[str]]:
    """The non-blank rows of a CSV file (UTF-8, byte-order mark allowed; the delimiter is sniffed)."""
    text = read_text_bounded(path, MAX_CSV_BYTES, "CSV file")
    try:  # only the delimiter is guessed: quotes are always the standard doubled ones
        delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', doublequote=True)
        rows = [r for r in reader if any(x.strip() for x in r)]
    except csv.Error as exc:
        raise ProjectError(f"{path}: not a readable CSV ({exc}); save it as comma-separated text") from None
    if not rows:
        raise ProjectError(f"{path}: the CSV is empty; expected rows of 'image id, category'")
    return rows


@dataclass
class _CsvLabels:
    """The labels a CSV asks for: ``{image id: names}``, the line of each, its split, conflicts."""

    wanted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    where: dict[str, int] = field(default_factory=dict)
    split: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    def add(self, iid: str, names: list[str], line: int, split: str | None) -> None:
        if iid in self.wanted:
            if {class_key(n) for n in self.wanted[iid]} != {class_key(n) for n in names}:
                self.conflicts.append(f"image '{iid}' has different classes on lines {self.where[iid]} and {line} "
                                      f"({';'.join(self.wanted[iid])!r} vs {';'.join(names)!r})")
            return
        self.wanted[iid] = tuple(names)
        self.where[iid] = line
        if split:
            self.split[iid] = split


def _cell_names(cell: str, multi_label: bool) -> list[str]:
    """The class names of a CSV cell (several, separated by ``;`` or ``|``, in a multi-label project)."""
    names = [cell.strip()]
    if multi_label:
        for sep in MULTI_SEPARATORS:
            if sep in names[0]:
                names = [x.strip() for x in names[0].split(sep)]
                break
    return [n for n in names if n]


def import_csv(project: Project, csv_path: str | os.PathLike, *, create_classes: bool = True) -> ImportReport:
    """Label images from a CSV of ``image id, category[, split]`` (HEp-2 style; header optional).

    Multi-label projects accept several classes per cell separated by ``;`` or ``|``. A split
    column (train/val/test) is saved as the project's predefined split. Class names match the
    project's classes case-insensitively. A row with an empty class cell changes nothing and
    is reported (``ImportReport.empty``). An image listed twice with different classes refuses
    the whole import (one line naming both lines). All checks come first: a refused import
    changes nothing; an accepted one is one undo step.
    """
    path = Path(csv_path)
    rows = read_csv_rows(path)
    id_col, class_col, split_col, header = _layout(rows[0])
    match = image_matcher(project)
    report = ImportReport()
    found = _CsvLabels()
    for k, row in enumerate(rows[header:], start=1 + header):
        if len(row) <= max(id_col, class_col):
            raise ProjectError(f"{path}: line {k} has {len(row)} column(s); expected 'image id, category'")
        iid = match(row[id_col])
        names = _cell_names(row[class_col], project.multi_label) if iid is not None else []
        if iid is None:
            report.unmatched.append(row[id_col].strip())
        elif not names:
            report.empty.append(row[id_col].strip())
        else:
            cell = row[split_col].strip() if split_col is not None and split_col < len(row) else ""
            split = normalise_split_name(cell) if cell else None
            if cell and split is None:
                raise ProjectError(f"{path}: line {k}: split {cell!r} is not train, val or test; fix the split "
                                   "column (or leave the cell empty); nothing was imported")
            found.add(iid, names, k, split)
    if found.conflicts:
        more = f" (and {len(found.conflicts) - 1} more)" if len(found.conflicts) > 1 else ""
        raise ProjectError(f"{path}: {found.conflicts[0]}{more}; nothing was imported, list each image once")
    _apply_import(project, found.wanted, found.split, report, create_classes, str(path),
                  {iid: f"line {k}" for iid, k in found.where.items()})
    return report


def _resolve_names(project: Project, wanted: dict[str, tuple[str, ...]], create_classes: bool, origin: str,
                   where: dict[str, str]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Map names onto the project's classes (case, composition and space runs aside); check new ones.

    Changes nothing."""
    known = {class_key(n): n for n in project.class_names}
    new: list[str] = []
    out: dict[str, tuple[str, ...]] = {}
    for iid, names in wanted.items():
        mapped: list[str] = []
        for n in names:
            key = class_key(n)
            if key not in known:
                if not create_classes:
                    raise ProjectError(f"{origin}: class {n!r} is not in the project; add it first")
                try:
                    clean = validate_name(n)
                except ClassNameError as exc:
                    raise ProjectError(f"{origin}: {where.get(iid, iid)}: {exc}; nothing was imported") from None
                known[key] = clean
                new.append(clean)
            if known[key] not in mapped:
                mapped.append(known[key])
        if len(mapped) > 1 and not project.multi_label:
            raise ProjectError(f"{origin}: {where.get(iid, iid)} gives '{iid}' {len(mapped)} classes but the "
                               "project is single-label; nothing was imported")
        out[iid] = tuple(mapped)
    return out, new


def _apply_import(project: Project, wanted: dict[str, tuple[str, ...]], split: dict[str, str],
                  report: ImportReport, create_classes: bool, origin: str,
                  where: dict[str, str] | None = None) -> None:
    """Check everything, create missing classes (one write), label (one undo step), save the split."""
    wanted, new = _resolve_names(project, wanted, create_classes, origin, where or {})
    changes = {}
    for iid, names in wanted.items():
        if project.labels(iid) == names:
            report.unchanged += 1
        else:
            changes[iid] = names
    project.check_targets(changes)
    if new:
        project.add_classes(new)
        report.new_classes.extend(new)
    before = project.fsync
    project.fsync = False  # one sync at the end instead of one per file
    try:
        report.labelled += len(project.apply_labels(changes, description=f"import {Path(origin).name}",
                                                     source="import"))
    except ProjectError:
        unused = [n for n in new if not project.ids_with_class(n)]
        for n in unused:  # a failed import leaves no class behind
            try:
                project.remove_class(n)
            except ProjectError:
                break
        raise
    finally:
        project.fsync = before
        if hasattr(os, "sync"):
            os.sync()
    if split:
        write_split_file(project.split_path, split)
        for s in split.values():
            report.split_counts[s] = report.split_counts.get(s, 0) + 1


def _class_folders(src: Path) -> list[tuple[Path, str, str | None]]:
    """``(image file, class, split)`` below ``src/<class>/`` or ``src/<split>/<class>/``.

    Every class folder name is checked before anything is returned.
    """
    def subfolders(folder: Path) -> list[Path]:
        return [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.is_symlink() and not d.name.startswith(".")]

    found: list[tuple[Path, str, str | None]] = []
    for top in (d for d in subfolders(src) if d.name not in SKIP_DIRS):
        split_name = normalise_split_name(top.name)
        for cdir in subfolders(top) if split_name else [top]:
            try:
                validate_name(cdir.name)
            except ClassNameError as exc:
                raise ProjectError(f"{cdir}: the folder name is not a usable class name ({exc}); rename the "
                                   "folder (nothing was imported)") from None
            found.extend((cdir / rel, cdir.name, split_name) for rel in scan_images(cdir))
    return found


def _copy_in(project: Project, files: list[Path], src: Path, rel_root: str) -> int:
    """Copy images into ``<project>/<rel_root>/`` (existing files are kept); all or nothing."""
    copied: list[Path] = []
    try:
        for f in files:
            dest = f"{rel_root}/{f.relative_to(src).as_posix()}"
            if not (project.root / dest).exists():
                project.copy_image_in(f, dest)
                copied.append(project.root / dest)
    except (OSError, ProjectError) as exc:
        for c in copied:  # all or nothing
            with contextlib.suppress(OSError):
                c.unlink()
        if isinstance(exc, ProjectError):
            raise
        raise ProjectError(f"cannot copy {f} into {project.root}: {exc.strerror or exc}; "
                           "free some space or make the folder writable (nothing was imported)") from None
    return len(copied)


def import_folders(project: Project, root: str | os.PathLike) -> ImportReport:
    """Label images from a folder-per-class layout ``root/<class>/<image>`` (ImageFolder style).

    ``root/train|val|test/<class>/<image>`` is understood too and becomes the predefined split.
    When ``root`` lies inside the project, its images are labelled in place; otherwise they are
    copied into ``<project>/<root name>/...`` (never overwriting) and labelled there. Every
    class folder name is checked before anything is copied (all or nothing).
    """
    src = Path(root).expanduser().resolve()
    if not src.is_dir():
        raise ProjectError(f"{src}: folder not found; give the folder whose subfolders are the classes")
    try:
        rel_root, inside = src.relative_to(project.root).as_posix(), True
    except ValueError:
        rel_root, inside = src.name, False
    found = _class_folders(src)
    if not found:
        raise ProjectError(f"{src}: no images in class subfolders; expected {src}/<class>/<image>")
    report = ImportReport()
    if not inside:
        report.copied = _copy_in(project, [f for f, _, _ in found], src, rel_root)
        project.rescan()
    wanted: dict[str, tuple[str, ...]] = {}
    split: dict[str, str] = {}
    for f, cls, split_name in found:
        rel = f.relative_to(src).as_posix()
        iid = f"{rel_root}/{rel}" if rel_root != "." else rel
        if iid not in project:
            report.unmatched.append(iid)
            continue
        wanted[iid] = (cls,)
        if split_name:
            split[iid] = split_name
    _apply_import(project, wanted, split, report, True, str(src), {i: f"folder of '{i}'" for i in wanted})
    return report


def export_csv(project: Project, csv_path: str | os.PathLike, *, include_unlabelled: bool = False) -> int:
    """Write ``image_id,class[,split]`` rows (multi-label classes joined by ``;``); returns rows written.

    A symlink is written through; a FIFO, device or folder, and the project's own files
    (settings, label files, images) are refused with one line.
    """
    project.check_output_path(csv_path)
    split = project.predefined_split()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "class"] + (["split"] if split else []))
    n = 0
    for iid in project.image_ids:
        labels = project.labels(iid)
        if not labels and not include_unlabelled:
            continue
        w.writerow([iid, ";".join(labels)] + ([split.get(iid, "")] if split else []))
        n += 1
    atomic_write_text(csv_path, buf.getvalue())
    return n
