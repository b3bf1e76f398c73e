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
from .project_index import ProjectIndex
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
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            _remove_stale_temp(entry)
    return [e for e in entries if e.name.endswith(".npz") and not e.name.startswith(".")]


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
    def load(self, image_ids: Sequence[str], opening: Opening, index: ProjectIndex | None = None) -> None:
        """Read the sidecars of ``image_ids``; note problems, protected images and what ``opening`` finds.

        With an ``index``, a label file unchanged since it was last read is not read again, and
        every file read is added to the index.
        """
        checked: dict[tuple[str, ...], tuple[tuple[str, ...], str, bool]] = {}  # a few distinct class lists
        for parent, stems in self._by_folder(image_ids).items():
            folder = f"{parent}/{LABEL_DIR}" if parent else LABEL_DIR
            entries = _label_files(self.root / folder)
            if index is None:
                known: dict[tuple[str, ...], list[str]] = {}
                to_read: list[tuple[os.DirEntry, os.stat_result | None]] = [(e, None) for e in entries]
            else:
                known, to_read = index.check_folder(folder, entries)
            for stored, names in known.items():
                self._take_many(stems, names, folder, stored, checked, opening)
            for entry, st in to_read:
                iid = stems.get(entry.name[:-4])
                usable = iid is not None and iid not in self._clashes
                stored = self._read_stored(iid, Path(entry.path)) if usable else None
                if stored is not None and index is not None and st is not None:
                    index.put(folder, entry.name, st, stored)
                self._take(stems, entry.name, folder, stored, checked, opening)

    def _take_many(self, stems: Mapping[str, str], names: list[str], folder: str, stored: tuple[str, ...],
                   checked: dict[tuple[str, ...], tuple[tuple[str, ...], str, bool]], opening: Opening) -> None:
        """Adopt the class names ``stored`` in the label files ``names`` of ``folder`` (the index's fast path)."""
        done = checked.get(stored)
        if done is None:
            done = checked[stored] = self._check_names(names[0], stored, opening)
        ids = list(map(stems.get, [n[:-4] for n in names]))
        if done[1] or done[2] or None in ids or not self._clashes.keys().isdisjoint(ids):
            for name in names:  # the rare cases, one by one
                self._take(stems, name, folder, stored, checked, opening)
        elif done[0]:
            self.labels.update(dict.fromkeys(ids, done[0]))

    def _take(self, stems: Mapping[str, str], name: str, folder: str, stored: tuple[str, ...] | None,
              checked: dict[tuple[str, ...], tuple[tuple[str, ...], str, bool]], opening: Opening) -> None:
        """Adopt the class names ``stored`` in label file ``name`` of ``folder`` (None: not usable)."""
        iid = stems.get(name[:-4])
        if iid is None:
            self.problems.append(f"{self.root / folder / name}: label file has no image beside it (kept, not used)")
            return
        if stored is None or iid in self._clashes:
            return
        done = checked.get(stored)
        if done is None:
            done = checked[stored] = self._check_names(name, stored, opening)
        names, why, stale = done
        if why:
            self._locked[iid] = why
            self.problems.append(f"{self.root / folder / name}: label file {why}; kept, and '{iid}' cannot be "
                                 "relabelled until the file is fixed or removed")
            return
        if names:
            self.labels[iid] = names
        if stale:
            opening.stale.add(iid)

    def _by_folder(self, image_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """``{folder: {stem: image id}}``; images whose label files would share a name are noted as clashes."""
        by_dir: dict[str, dict[str, str]] = {}
        for iid in image_ids:
            parent, _, name = iid.rpartition("/")
            stems = by_dir.get(parent)
            if stems is None:
                stems = by_dir[parent] = {}
            stem = name[:name.rfind(".")] if "." in name.lstrip(".") else name  # os.path.splitext's stem
            other = stems.setdefault(stem, iid)
            if other != iid:
                self._clashes[iid] = other
                self._clashes.setdefault(other, iid)
                self.problems.append(f"'{other}' and '{iid}' share the label file name '{stem}.npz'; "
                                     "rename one of them to label both")
        return by_dir

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

    def _check_names(self, path: str, stored: tuple[str, ...], opening: Opening) -> tuple[tuple[str, ...], str, bool]:
        """``(names, why protected, stale)`` for a class list ``stored`` first met in label file ``path``.

        Class names the project lacks are added to ``opening.found`` (noted once); ``stale``
        says the file still holds a name a pending rename maps.
        """
        names, why = canonical_names(stored, opening)
        if why:
            return (), why, False
        for name in names:
            if name.casefold() not in opening.known:
                opening.known[name.casefold()] = name
                opening.found.append(name)
                self.problems.append(f"class '{name}' found in {os.path.basename(path)} was added to the class list")
        return names, "", any(c.strip().casefold() in opening.pending for c in stored)

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
