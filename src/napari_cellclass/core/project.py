"""A project: a folder of images, its class list and settings file and its label store, behind one front.

GUI-free (numpy + tifffile + Pillow): the napari widgets, the trainer, the command line and
scripts all share it. The work is done by :class:`~.classes.ClassList` (class edits),
:class:`~.settings_file.SettingsFile` (``cellclass.json``, written lazily and merged under a
lock; a class or settings change is saved before it is adopted in memory, so a failed write
changes nothing) and :class:`~.labelstore.LabelStore` (label sidecars and undo).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .classes import ClassInfo
from .errors import ProjectError
from .folder import ImageFolder
from .labelstore import LabelStore, Opening
from .listeners import ChangeCallback, Listeners
from .project_index import ProjectIndex
from .scan import enclosing_project
from .settings_file import CONFIG_NAME, SettingsFile

__all__ = ["CONFIG_NAME", "Project"]


def _as_ids(image_ids: str | Iterable[str]) -> list[str]:
    return [image_ids] if isinstance(image_ids, str) else list(image_ids)


class Project(ImageFolder):
    """A folder of images being sorted into classes.

    Open with :meth:`Project.open`. Image ids are POSIX paths relative to the folder,
    naturally sorted. Every label change is written to the image's ``.npz`` sidecar at once
    (atomically) and can be undone with :meth:`undo`. Undo steps stay valid when a class is
    renamed (they restore the new name) or removed (they restore the images without it).

    Examples
    --------
    >>> p = Project.open("my_images")                 # doctest: +SKIP
    >>> p.add_class("mitotic"); p.add_class("interphase")   # doctest: +SKIP
    >>> p.assign(p.image_ids[0], "mitotic")           # doctest: +SKIP
    >>> p.counts()                                    # doctest: +SKIP
    {'mitotic': 1, 'interphase': 0}
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        """Use :meth:`Project.open`."""
        super().__init__(root)
        self.problems: list[str] = []
        self._file = SettingsFile(root, fsync=fsync)
        self._store = LabelStore(root, self.problems, fsync=fsync)
        self._listeners = Listeners()

    @property
    def fsync(self) -> bool:
        """Flush every file to disk before replacing it (safe against power loss)."""
        return self._store.fsync

    @fsync.setter
    def fsync(self, flag: bool) -> None:
        self._store.fsync = self._file.fsync = flag

    @property
    def multi_label(self) -> bool:
        """Whether an image may belong to several classes."""
        return self._file.multi_label

    @property
    def settings(self) -> dict[str, Any]:
        """The settings stored in ``cellclass.json`` (change them with :meth:`update_settings`)."""
        return self._file.settings

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str | os.PathLike, *, create: bool = True, multi_label: bool | None = None,
             fsync: bool = True) -> Project:
        """Open the project in ``folder`` (listing images without reading pixels).

        Opening writes nothing: ``cellclass.json`` is created at the first change (first
        class, label or setting). Only an interrupted class rename is finished on open.

        Parameters
        ----------
        folder
            The folder holding the images (searched recursively; folder links not followed).
        create
            Kept for compatibility; the settings file is always written lazily.
        multi_label
            For a new project: whether an image may belong to several classes.
        fsync
            Flush every sidecar to disk before replacing it (safe against power loss).
        """
        root = Path(folder).expanduser()
        if not root.exists():
            raise ProjectError(f"{root}: folder does not exist; check the path")
        if not root.is_dir():
            raise ProjectError(f"{root}: not a folder; give the folder that holds the images")
        outer = enclosing_project(root)
        if outer is not None:
            raise ProjectError(f"{root}: this folder is part of the project {outer}; open {outer} instead "
                               "(a project inside it would hide these images from it)")
        self = cls(root.resolve(), fsync=fsync)
        cfg = self._file.read(multi_label)
        if cfg is not None:
            self.problems.extend(cfg.problems)
        index = ProjectIndex.load(self.root)
        self._list_images(self.problems, index)
        pending = cfg.pending if cfg is not None else {}
        opening = Opening({c.name.casefold(): c.name for c in self._file.classes},
                          {k.casefold(): v for k, v in pending.items()}, self.multi_label)
        self._store.load(self.image_ids, opening, index)
        if self._file.path.is_file():  # a cache for a project, never written into a folder only opened
            index.save()
        if opening.found:
            self._file.add_found(opening.found)
        if pending:
            self._finish_renames(pending, opening.stale)
        return self

    @property
    def config_path(self) -> Path:
        return self._file.path

    def _finish_renames(self, pending: Mapping[str, str], stale: Iterable[str]) -> None:
        """Finish class renames a crash interrupted: rewrite the sidecars, then clear the note."""
        try:
            for iid in sorted(stale):
                self._store.write(iid, self._store.labels[iid], source=self._store.source_of(iid))
            self._file.commit()
        except ProjectError as exc:
            self.problems.append(f"could not finish renaming {', '.join(map(repr, pending))}: {exc}")
            self._file.keep_pending(pending)  # kept until the sidecars are rewritten

    def __repr__(self) -> str:
        return (f"Project({str(self.root)!r}, images={len(self.image_ids)}, "
                f"classes={list(self.class_names)}, labelled={len(self._store.labels)})")

    # ------------------------------------------------------------------ classes and settings
    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        return self._file.classes.items

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._file.classes.names

    def class_color(self, name: str) -> str:
        """The ``#rrggbb`` colour of a class."""
        return self._file.classes.color(name)

    def add_class(self, name: str, color: str | None = None) -> ClassInfo:
        """Add a class at the end of the list (a distinct palette colour by default)."""
        return self.add_classes([name], [color])[0]

    def add_classes(self, names: Sequence[str], colors: Sequence[str | None] | None = None) -> list[ClassInfo]:
        """Add several classes with one write (all or none: every name is checked first)."""
        colors = list(colors) if colors is not None else [None] * len(names)
        if len(colors) != len(names):
            raise ProjectError(f"{len(names)} class name(s) but {len(colors)} colour(s)")
        new, added = self._file.classes.added(names, colors)
        if added:
            self._file.commit(classes=new)
            self._notify(())
        return added

    def set_class_color(self, name: str, color: str) -> None:
        """Change a class's display colour."""
        self._file.commit(classes=self._file.classes.recolored(name, color))
        self._notify(())

    def reorder_classes(self, names: Sequence[str]) -> None:
        """Put the classes in the given order (must name each class once)."""
        self._file.commit(classes=self._file.classes.reordered(names))
        self._notify(())

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; every sidecar holding it is rewritten (crash-safe, all or nothing).

        Undo steps stay valid: they restore the new name.
        """
        old = self._file.classes.canonical(old)
        classes = self._file.classes.renamed(old, new)
        clean = classes.names[self._file.classes.index(old)]
        if clean == old:
            return
        self._file.commit(classes=classes, pending_add={old: clean}, renamed={clean: old})  # finished on open
        try:
            self._store.rewrite({old: clean})
        except ProjectError as exc:
            back = [ClassInfo(old, c.color) if c.name == clean else c for c in self._file.classes]
            try:
                self._file.commit(classes=back, pending_done={old}, renamed={old: clean})
            except ProjectError:
                raise ProjectError(f"{exc} (the rename is finished when the project is next opened)") from None
            raise
        self._file.commit(pending_done={old})
        self._store.history.remap({old: clean})
        self._notify(())

    def remove_class(self, name: str, *, force: bool = False) -> int:
        """Remove a class. Images labelled with it lose that label (needs ``force=True``).

        The undo history is kept: a step that would restore ``name`` restores the image
        without it (see :meth:`remove_affects_history`). Returns the number of images whose
        labels changed.
        """
        name = self._file.classes.canonical(name)
        remaining = self._file.classes.without(name)
        users = self._store.users(name)
        if users and not force:
            raise ProjectError(
                f"class '{name}' labels {len(users)} image(s); pass force=True (or confirm) "
                "to remove it and unlabel them"
            )
        before = self._file.classes
        self._file.commit(classes=remaining)
        try:
            self._store.rewrite({name: None})
        except ProjectError:
            with contextlib.suppress(ProjectError):  # if not, the class is found again in its sidecars on the next open
                self._file.commit(classes=before)
            raise
        self._store.history.remap({name: None})
        self._notify(tuple(users))
        return len(users)

    def remove_affects_history(self, name: str) -> bool:
        """True when some undo step would restore ``name``: after :meth:`remove_class` those steps
        restore the images without it (the history itself is kept)."""
        return self._store.history.mentions(name)

    def set_multi_label(self, flag: bool) -> None:
        """Switch between single- and multi-label (to single only when no image has 2+ labels)."""
        if not flag and any(len(c) > 1 for c in self._store.labels.values()):
            raise ProjectError("some images carry several classes; clear the extra labels before "
                               "switching the project to single-label")
        self._file.commit(multi_label=bool(flag))

    def update_settings(self, **values: Any) -> None:
        """Store settings in ``cellclass.json`` (text, numbers, true/false, lists, objects).

        A value JSON cannot store is refused at once and nothing changes.
        """
        self._file.update_settings(values)

    # ------------------------------------------------------------------ labels (read)
    def labels(self, image_id: str) -> tuple[str, ...]:
        """Class names of an image (empty when unlabelled)."""
        self._check_id(image_id)
        return self._store.labels.get(image_id, ())

    def label(self, image_id: str) -> str | None:
        """The single class of an image, or None when unlabelled."""
        cl = self.labels(image_id)
        return cl[0] if cl else None

    def labelled_ids(self) -> list[str]:
        """Ids of labelled images, in project order."""
        labels = self._store.labels
        return [i for i in self.image_ids if i in labels]

    @property
    def n_labelled(self) -> int:
        """How many images have a label (O(1))."""
        return len(self._store.labels)

    def unlabelled_ids(self) -> list[str]:
        """Ids of images without a label, in project order."""
        labels = self._store.labels
        return [i for i in self.image_ids if i not in labels]

    def ids_with_class(self, name: str) -> list[str]:
        """Ids of images labelled with ``name``."""
        self._file.classes.index(name)
        labels = self._store.labels
        return [i for i in self.image_ids if name in labels.get(i, ())]

    def counts(self) -> dict[str, int]:
        """Number of labelled images per class, in class order."""
        out = {n: 0 for n in self.class_names}
        for classes in self._store.labels.values():
            for c in classes:
                if c in out:
                    out[c] += 1
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for people and scripts (images, labelled, unlabelled, per class)."""
        labelled = len(self._store.labels)
        return {
            "folder": str(self.root),
            "images": len(self.image_ids),
            "labelled": labelled,
            "unlabelled": len(self.image_ids) - labelled,
            "multi_label": self.multi_label,
            "classes": [c.to_json() for c in self._file.classes],
            "counts": self.counts(),
            "problems": list(self.problems),
        }

    # ------------------------------------------------------------------ change listeners
    def add_listener(self, callback: ChangeCallback) -> None:
        """Call ``callback(changed_ids)`` after every change (empty tuple: classes changed)."""
        self._listeners.add(callback)

    def remove_listener(self, callback: ChangeCallback) -> None:
        self._listeners.remove(callback)

    def _notify(self, ids: tuple[str, ...]) -> None:
        self._listeners.notify(ids)

    # ------------------------------------------------------------------ labels (write)
    def set_labels(self, image_ids: str | Iterable[str], classes: Sequence[str], *,
                   description: str = "label", source: str = "human") -> list[str]:
        """Set the exact class list of one or many images (one undo step).

        Returns the ids whose labels actually changed.
        """
        return self.apply_labels({i: classes for i in _as_ids(image_ids)}, description=description, source=source)

    def apply_labels(self, changes: Mapping[str, Sequence[str]], *, description: str,
                     source: str = "human") -> list[str]:
        """Give each image its own exact class list, all as ONE undo step.

        ``changes`` maps image ids to class names (an empty list unlabels). Everything is
        checked (ids, class names, single-label, protected label files) before anything is
        written. ``source`` is recorded in the sidecars (``human``, ``import``, ``prediction``).
        Returns the ids whose labels actually changed, in the order given.
        """
        self._follow_other_writers()
        check = self._file.classes.check_labels
        return self._apply({iid: check(classes, self.multi_label) for iid, classes in changes.items()},
                           description, source)

    def assign(self, image_ids: str | Iterable[str], name: str, **kw: Any) -> list[str]:
        """Give images class ``name`` (single-label: replaces; multi-label: adds)."""
        ids = _as_ids(image_ids)
        self._follow_other_writers()
        name = self._file.classes.canonical(name)
        if not self.multi_label:
            return self._apply({i: (name,) for i in ids}, kw.get("description", f"assign {name}"),
                               kw.get("source", "human"))
        for i in ids:
            self._check_id(i)
        labels, classes = self._store.labels, self._file.classes
        return self._apply({i: classes.with_class(labels.get(i, ()), name) for i in ids}, f"assign {name}",
                           kw.get("source", "human"))

    def toggle(self, image_ids: str | Iterable[str], name: str) -> list[str]:
        """Multi-label: add or remove ``name``. Single-label: ``name`` or unlabelled.

        With several images the result is uniform: if any lacks the class, all get it.
        """
        ids = _as_ids(image_ids)
        self._follow_other_writers()
        name = self._file.classes.canonical(name)
        for i in ids:
            self._check_id(i)
        labels = self._store.labels
        add = any(name not in labels.get(i, ()) for i in ids)
        if not self.multi_label:
            changes = {i: (name,) if add else () for i in ids}
        elif add:
            changes = {i: self._file.classes.with_class(labels.get(i, ()), name) for i in ids}
        else:
            changes = {i: tuple(c for c in labels.get(i, ()) if c != name) for i in ids}
        return self._apply(changes, f"toggle {name}", "human")

    def clear(self, image_ids: str | Iterable[str]) -> list[str]:
        """Remove all labels of the given images (their sidecars are deleted)."""
        return self._apply({i: () for i in _as_ids(image_ids)}, "clear", "human")

    def check_targets(self, image_ids: Iterable[str]) -> None:
        """Raise :class:`ProjectError` unless every image exists and its label file may be written."""
        for iid in image_ids:
            self._check_id(iid)
            self._store.check_writable(iid)

    def _follow_other_writers(self) -> None:
        """Before labelling: when another window or process changed ``cellclass.json`` since we
        last read or wrote it, open the project again (its classes and the labels it rewrote), so a
        class renamed or removed there is never written back here."""
        if self._file.changed_on_disk():
            self.rescan()

    def _apply(self, changes: dict[str, tuple[str, ...]], description: str, source: str) -> list[str]:
        self.check_targets(changes)
        labels = self._store.labels
        real = {i: c for i, c in changes.items() if labels.get(i, ()) != c}
        if not real:
            return []
        if self._file.needs_write:  # classes found in sidecars (or a new project's flag) are saved now
            self._file.commit()
        return self._store.apply(real, description, source, self._notify)

    def clear_history(self) -> None:
        """Forget all undo steps (e.g. after a scripted bulk import)."""
        self._store.history.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._store.history)

    def undo(self) -> list[str]:
        """Undo the last labelling action exactly (sidecar bytes restored, new ones deleted).

        Returns the ids that changed (empty when there is nothing to undo).
        """
        ids = self._store.undo()
        if ids:
            self._notify(ids)
        return list(ids)

    # ------------------------------------------------------------------ listing again
    def rescan(self) -> None:
        """List the folder again (after files were added or removed); labels are reloaded."""
        fresh = Project.open(self.root, fsync=self.fsync, multi_label=self.multi_label)
        fresh._store.history = self._store.history
        fresh._listeners = self._listeners
        self.__dict__.update(fresh.__dict__)
        self._notify(())
