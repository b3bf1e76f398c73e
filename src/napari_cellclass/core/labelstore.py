"""The label store: each image's classes, read from its sidecar at opening, written back at once, undoable.

Label files that cannot be trusted are never overwritten: a damaged one is moved aside, one
that cannot be read now (or is of a newer format, or holds names that are not allowed) is
kept and its image protected; two images whose label files would share one name both are.
"""
from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import TMP_PREFIX, atomic_write_bytes
from .classes import validate_name
from .errors import ClassNameError, ProjectError, SidecarCorruptError
from .label_index import LabelIndex
from .sidecars import LABEL_DIR, encode_sidecar, read_sidecar, sidecar_path, sidecar_source
from .undo import Before, UndoHistory, UndoStep

STALE_TEMP_SECONDS = 600


@dataclass
class Opening:
    """What reading the label files at opening needs and finds.

    ``known`` maps case-folded class names to the project's names, ``pending`` unfinished
    renames (case-folded old name to new name). ``found`` collects class names that label files
    hold but the class list lacks (in the order found), ``stale`` the images whose label file
    still holds a name a pending rename maps.
    """

    known: dict[str, str]
    pending: dict[str, str]
    multi_label: bool
    found: list[str] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)


def canonical_names(stored: Sequence[str], opening: Opening) -> tuple[tuple[str, ...], str]:
    """Class names of a sidecar checked like typed names and mapped onto the project's classes.

    Returns ``(names, "")`` or ``((), why)`` when the file must be protected instead.
    """
    out: list[str] = []
    for raw in stored:
        try:
            name = validate_name(raw)
        except ClassNameError as exc:
            return (), f"holds a class name that is not allowed ({exc})"
        name = opening.pending.get(name.casefold(), name)
        name = opening.known.get(name.casefold(), name)
        if name not in out:
            out.append(name)
    if len(out) > 1 and not opening.multi_label:
        return (), (f"holds {len(out)} classes ({', '.join(out)}) but the project is single-label "
                    "(switch it to multi-label to use them)")
    return tuple(out), ""


def _remove_stale_temp(entry: os.DirEntry) -> None:
    """Delete a temporary file left by a write that was killed (never a finished sidecar)."""
    try:
        if _dt.datetime.now().timestamp() - entry.stat().st_mtime > STALE_TEMP_SECONDS:
            os.unlink(entry.path)
    except OSError:
        pass


def _label_files(folder: Path) -> list[os.DirEntry]:
    """The ``.npz`` files of a label folder (temporary files of killed writes are cleaned up)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            _remove_stale_temp(entry)
        elif entry.name.endswith(".npz") and not entry.name.startswith("."):
            out.append(entry)
    return out


def _move_aside(path: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while os.path.lexists(aside):
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, aside)
    return aside


def _mapped(classes: tuple[str, ...], mapping: Mapping[str, str | None]) -> tuple[str, ...]:
    """``classes`` with names renamed (or, mapped to None, dropped), each once."""
    new: list[str] = []
    for c in classes:
        m = mapping.get(c, c)
        if m is not None and m not in new:
            new.append(m)
    return tuple(new)


class LabelStore:
    """The labels of a project's images and their sidecars.

    ``labels`` maps each labelled image id to its class names (read it, never change it: every
    change goes through a write here, which updates the file first). ``problems`` is the
    project's list of problems, which reading and failed roll-backs add to.
    """

    def __init__(self, root: Path, problems: list[str], *, fsync: bool = True) -> None:
        self.root = root
        self.problems = problems
        self.fsync = fsync
        self.labels: dict[str, tuple[str, ...]] = {}
        self.history = UndoHistory()
        self._clashes: dict[str, str] = {}  # image id -> the other image its label file name is shared with
        self._locked: dict[str, str] = {}  # image id -> why its existing sidecar must not be overwritten

    # ------------------------------------------------------------------ opening
    def load(self, image_ids: Sequence[str], opening: Opening, index: LabelIndex | None = None) -> None:
        """Read the sidecars of ``image_ids``; note problems, protected images and what ``opening`` finds.

        With an ``index``, a label file unchanged since it was last read is not read again, and
        every file read is added to the index.
        """
        self._find_clashes(image_ids)
        by_dir: dict[str, dict[str, str]] = {}
        for iid in image_ids:
            parent, _, name = iid.rpartition("/")
            by_dir.setdefault(parent, {})[os.path.splitext(name)[0]] = iid
        checked: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}  # a few distinct class lists
        for parent, stems in by_dir.items():
            folder = f"{parent}/{LABEL_DIR}/" if parent else f"{LABEL_DIR}/"
            for entry in _label_files(self.root / folder):
                iid = stems.get(entry.name[:-4])
                if iid is None:
                    self.problems.append(f"{entry.path}: label file has no image beside it (kept, not used)")
                elif iid not in self._clashes:
                    stored = (self._read_indexed(iid, entry, folder + entry.name, index) if index is not None
                              else self._read_stored(iid, Path(entry.path)))
                    if stored is not None:
                        if stored not in checked:
                            checked[stored] = canonical_names(stored, opening)
                        self._adopt(iid, entry.path, stored, checked[stored], opening)

    def _read_indexed(self, iid: str, entry: os.DirEntry, rel: str, index: LabelIndex) -> tuple[str, ...] | None:
        """The class names of label file ``rel`` from the index, or read (and indexed); None when unusable."""
        try:
            st = entry.stat()
        except OSError:
            return self._read_stored(iid, Path(entry.path))
        stored = index.get(rel, st)
        if stored is None:
            stored = self._read_stored(iid, Path(entry.path))
            if stored is not None:
                index.put(rel, st, stored)
        return stored

    def _find_clashes(self, image_ids: Sequence[str]) -> None:
        seen: dict[tuple[str, str], str] = {}
        for iid in image_ids:
            parent, _, name = iid.rpartition("/")
            key = (parent, os.path.splitext(name)[0])
            if key not in seen:
                seen[key] = iid
                continue
            other = seen[key]
            self._clashes[iid] = other
            self._clashes.setdefault(other, iid)
            self.problems.append(f"'{other}' and '{iid}' share the label file name '{key[1]}.npz'; "
                                 "rename one of them to label both")

    def _read_stored(self, iid: str, path: Path) -> tuple[str, ...] | None:
        """The class names in a sidecar, or None when it is damaged (moved aside) or protected."""
        try:
            return read_sidecar(path, full=False)["classes"]
        except SidecarCorruptError as exc:
            try:
                aside = _move_aside(path)
            except OSError as move_exc:
                self._locked[iid] = f"is corrupt and could not be moved aside ({move_exc.strerror})"
                self.problems.append(f"{exc}; could not move it aside, so it is left as it is")
            else:
                self.problems.append(f"{exc}; moved aside to {aside.name}")
        except ProjectError as exc:  # unreadable now or a newer format: keep it, never overwrite it
            self._locked[iid] = str(exc).split(": ", 1)[-1]
            self.problems.append(f"{exc}; kept, and '{iid}' cannot be relabelled until it can be read")
        return None

    def _adopt(self, iid: str, path: str, stored: tuple[str, ...], checked: tuple[tuple[str, ...], str],
               opening: Opening) -> None:
        """Take the names ``stored`` in ``iid``'s label file (``checked`` by :func:`canonical_names`)."""
        names, why = checked
        if why:
            self._locked[iid] = why
            self.problems.append(f"{path}: label file {why}; kept, and '{iid}' cannot be relabelled "
                                 "until the file is fixed or removed")
            return
        for name in names:
            if name.casefold() not in opening.known:
                opening.known[name.casefold()] = name
                opening.found.append(name)
                self.problems.append(f"class '{name}' found in {os.path.basename(path)} was added to the class list")
        if names:
            self.labels[iid] = names
        if any(c.strip().casefold() in opening.pending for c in stored):
            opening.stale.add(iid)

    # ------------------------------------------------------------------ checks
    def check_writable(self, iid: str) -> None:
        """Raise :class:`ProjectError` when the label file of ``iid`` must not be written."""
        if iid in self._clashes:
            raise ProjectError(f"'{iid}' and '{self._clashes[iid]}' would share one label file; rename one of them")
        if iid in self._locked:
            raise ProjectError(f"the label file of '{iid}' {self._locked[iid]}; fix or move it, "
                               "then reopen the project")

    def users(self, name: str) -> list[str]:
        """Ids of the images labelled with ``name`` (in labelling order)."""
        return [iid for iid, classes in self.labels.items() if name in classes]

    def source_of(self, iid: str) -> str:
        """Who set the stored label of ``iid`` (``"human"`` when unknown)."""
        try:
            return sidecar_source(sidecar_path(self.root / iid).read_bytes())
        except OSError:
            return "human"

    # ------------------------------------------------------------------ writes
    def apply(self, changes: Mapping[str, tuple[str, ...]], description: str, source: str,
              on_done: Callable[[tuple[str, ...]], None]) -> list[str]:
        """Write checked changes as one undo step, all or nothing; ``on_done(ids)`` gets the ids written.

        When a write fails (a full disk, a file made read-only meanwhile) the label files already
        written get their old bytes back and the error says so; what could not be put back stays
        as an undo step and the error names how many. Returns the ids whose labels changed.
        """
        before = [(iid, self.labels.get(iid, ()), self._old_bytes(iid), "human") for iid in changes]
        done: list[str] = []
        try:
            for iid, classes in changes.items():
                self.write(iid, classes, source=source)
                done.append(iid)
        except BaseException as exc:
            if not done:
                raise
            kept = self._roll_back([b for b in before if b[0] in set(done)])
            if kept:
                self.history.push(UndoStep(description, tuple(kept)))
            on_done(tuple(done))
            if not isinstance(exc, ProjectError):
                raise
            what = (f"{len(kept)} image(s) could not be put back and keep their new labels (undo them once "
                    "the problem is fixed)" if kept else "the labels already written were put back, nothing changed")
            raise ProjectError(f"{exc}; {what}") from None
        if done:
            self.history.push(UndoStep(description, tuple(before)))
            on_done(tuple(done))
        return done

    def _roll_back(self, items: list[Before]) -> list[Before]:
        """Put these label files back as they were; the items that could not be (still changed)."""
        kept: list[Before] = []
        # deletions first: removing a new label file frees the space that restoring the others may need
        for item in sorted(items, key=lambda b: b[2] is not None or bool(b[1])):
            iid, classes, raw, source = item
            try:
                self.write(iid, classes, source=source, raw=raw)
            except ProjectError:
                kept.append(item)
        return kept

    def _old_bytes(self, iid: str) -> bytes | None:
        try:
            return sidecar_path(self.root / iid).read_bytes() if iid in self.labels else None
        except OSError:
            return None

    def write(self, iid: str, classes: tuple[str, ...], source: str, raw: bytes | None = None) -> None:
        """Write (or delete, when ``classes`` is empty) the sidecar of ``iid``; then update memory."""
        path = self.root / iid
        sc = sidecar_path(path)
        self._check_inside(sc)
        if classes:
            data = raw if raw is not None else encode_sidecar(path.name, classes, source)
            atomic_write_bytes(sc, data, fsync=self.fsync)
            self.labels[iid] = classes
            return
        try:
            sc.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ProjectError(f"cannot remove {sc}: {exc.strerror}; make the folder writable") from None
        self.labels.pop(iid, None)

    def _check_inside(self, sc: Path) -> None:
        """Never write or delete a label file through a link that leads out of the project."""
        real = os.path.realpath(sc)
        if os.path.commonpath([real, str(self.root)]) != str(self.root):
            raise ProjectError(f"{sc} is a link to {real}, outside the project; replace the link with "
                               "a regular file to label this image")

    def rewrite(self, mapping: Mapping[str, str | None]) -> None:
        """Rename (or, mapped to None, drop) class names in every sidecar that holds them.

        All or nothing: when a write fails, the sidecars already rewritten are put back.
        """
        done: list[tuple[str, tuple[str, ...], bytes | None]] = []
        try:
            for iid, classes in list(self.labels.items()):
                if any(c in mapping for c in classes):
                    try:
                        raw = sidecar_path(self.root / iid).read_bytes()
                    except OSError:
                        raw = None
                    self.write(iid, _mapped(classes, mapping), source=sidecar_source(raw) if raw else "human")
                    done.append((iid, classes, raw))
        except ProjectError:
            self._put_back(done)
            raise

    def _put_back(self, done: Iterable[tuple[str, tuple[str, ...], bytes | None]]) -> None:
        for iid, classes, raw in reversed(list(done)):
            try:
                self.write(iid, classes, source="human", raw=raw)
            except ProjectError:
                self.problems.append(f"could not put back the label of '{iid}' ({', '.join(classes)})")

    def undo(self) -> tuple[str, ...]:
        """Undo the newest step exactly; the ids it changed (empty when there is nothing to undo)."""
        step = self.history.pop()
        if step is None:
            return ()
        for iid, classes, raw, source in step.before:
            self.write(iid, classes, source=source, raw=raw)
        return step.ids
