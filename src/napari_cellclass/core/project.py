"""A project is a folder of images with a class list and one label sidecar per labelled image.

This module is GUI-free (numpy + tifffile + Pillow): the napari widgets, the trainer, the
command line and scripts all share it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import TMP_PREFIX, atomic_write_bytes, atomic_write_text
from .classes import ClassInfo, next_color, validate_color, validate_name
from .errors import ClassNameError, ImageReadError, ProjectError, SidecarCorruptError
from .images import ImageData, read_image
from .scan import scan_images
from .sidecars import LABEL_DIR, encode_sidecar, read_sidecar, sidecar_path

CONFIG_NAME = "cellclass.json"
CONFIG_FORMAT = "napari-cellclass/project"
CONFIG_VERSION = 1
MAX_UNDO = 1000
STALE_TEMP_SECONDS = 600


def _remove_stale_temp(entry: os.DirEntry) -> None:
    """Delete a temporary file left by a write that was killed (never a finished sidecar)."""
    try:
        if _dt.datetime.now().timestamp() - entry.stat().st_mtime > STALE_TEMP_SECONDS:
            os.unlink(entry.path)
    except OSError:
        pass


@dataclass(frozen=True)
class _UndoEntry:
    """Everything needed to put some images' labels back exactly as they were."""

    description: str
    before: tuple[tuple[str, tuple[str, ...], bytes | None], ...]  # (id, labels, sidecar bytes)


class Project:
    """A folder of images being sorted into classes.

    Open with :meth:`Project.open`. Image ids are POSIX paths relative to the folder,
    naturally sorted. Every label change is written to the image's ``.npz`` sidecar at once
    (atomically) and can be undone with :meth:`undo`.

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
        self.root = root
        self.fsync = fsync
        self._classes: list[ClassInfo] = []
        self.multi_label = False
        self.settings: dict[str, Any] = {}
        self.image_ids: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._labels: dict[str, tuple[str, ...]] = {}
        self._clashes: dict[str, str] = {}
        self._locked: dict[str, str] = {}  # image id -> why its existing sidecar must not be overwritten
        self.problems: list[str] = []
        self._undo: list[_UndoEntry] = []
        self._listeners: list[Callable[[tuple[str, ...]], None]] = []

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str | os.PathLike, *, create: bool = True, multi_label: bool | None = None,
             fsync: bool = True) -> Project:
        """Open the project in ``folder`` (listing images without reading pixels).

        Parameters
        ----------
        folder
            The folder holding the images (searched recursively).
        create
            Write ``cellclass.json`` if the folder has none yet.
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
        self = cls(root.resolve(), fsync=fsync)
        cfg_path = self.config_path
        if cfg_path.exists():
            self._load_config(cfg_path)
        else:
            self.multi_label = bool(multi_label)
            if create:
                try:
                    self._save_config()
                except ProjectError as exc:  # read-only folder: browsing works, writing will say why
                    self.problems.append(str(exc))
        self.image_ids = tuple(scan_images(self.root))
        self._index = {iid: i for i, iid in enumerate(self.image_ids)}
        self._find_clashes()
        self._load_labels()
        pending = self.settings.pop("_pending_renames", None)
        if pending:
            self._rewrite_sidecars(dict(pending))
            self._save_config()
        return self

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def _load_config(self, path: Path) -> None:
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProjectError(
                f"{path}: project settings are unreadable ({exc}); fix or rename the file to start afresh"
            ) from None
        if not isinstance(cfg, dict) or cfg.get("format") != CONFIG_FORMAT:
            raise ProjectError(f"{path}: not a napari-cellclass project file; rename it or pick another folder")
        if int(cfg.get("version", 0)) > CONFIG_VERSION:
            raise ProjectError(f"{path}: written by a newer napari-cellclass; upgrade to open it")
        try:
            self._classes = [ClassInfo(validate_name(c["name"]), validate_color(c["color"]))
                             for c in cfg.get("classes", [])]
        except (KeyError, TypeError, ClassNameError) as exc:
            raise ProjectError(f"{path}: invalid class list ({exc}); fix the file by hand") from None
        self.multi_label = bool(cfg.get("multi_label", False))
        self.settings = dict(cfg.get("settings", {}))
        if cfg.get("pending_renames"):
            self.settings["_pending_renames"] = cfg["pending_renames"]

    def _save_config(self, pending_renames: dict[str, str] | None = None) -> None:
        cfg = {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "multi_label": self.multi_label,
            "classes": [c.to_json() for c in self._classes],
            "settings": {k: v for k, v in self.settings.items() if not k.startswith("_")},
        }
        if pending_renames:
            cfg["pending_renames"] = pending_renames
        atomic_write_text(self.config_path, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                          fsync=self.fsync)

    def _find_clashes(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        for iid in self.image_ids:
            parent, _, name = iid.rpartition("/")
            key = (parent, os.path.splitext(name)[0])
            if key in seen:
                other = seen[key]
                self._clashes[iid] = other
                self._clashes.setdefault(other, iid)
                self.problems.append(
                    f"'{other}' and '{iid}' share the label file name '{key[1]}.npz'; "
                    "rename one of them to label both"
                )
            else:
                seen[key] = iid

    def _load_labels(self) -> None:
        by_dir: dict[str, dict[str, str]] = {}
        for iid in self.image_ids:
            parent, _, name = iid.rpartition("/")
            by_dir.setdefault(parent, {})[os.path.splitext(name)[0]] = iid
        known = set(self.class_names)
        added = False
        for parent, stems in by_dir.items():
            label_dir = self.root / parent / LABEL_DIR
            if not label_dir.is_dir():
                continue
            for entry in os.scandir(label_dir):
                if entry.name.startswith(TMP_PREFIX):
                    _remove_stale_temp(entry)
                    continue
                if not entry.name.endswith(".npz") or entry.name.startswith("."):
                    continue
                stem = entry.name[:-4]
                iid = stems.get(stem)
                path = Path(entry.path)
                if iid is None:
                    self.problems.append(f"{path}: label file has no image beside it (kept, not used)")
                    continue
                if iid in self._clashes:
                    continue
                try:
                    classes = read_sidecar(path, full=False)["classes"]
                except SidecarCorruptError as exc:
                    try:
                        aside = self._move_aside(path)
                    except OSError as move_exc:
                        self._locked[iid] = f"is corrupt and could not be moved aside ({move_exc.strerror})"
                        self.problems.append(f"{exc}; could not move it aside, so it is left as it is")
                    else:
                        self.problems.append(f"{exc}; moved aside to {aside.name}")
                    continue
                except ProjectError as exc:  # unreadable now or a newer format: keep it, never overwrite it
                    self._locked[iid] = str(exc).split(": ", 1)[-1]
                    self.problems.append(f"{exc}; kept, and '{iid}' cannot be relabelled until it can be read")
                    continue
                for name in classes:
                    if name not in known:
                        self._classes.append(ClassInfo(name, next_color([c.color for c in self._classes])))
                        known.add(name)
                        self.problems.append(f"class '{name}' found in {path.name} was added to the class list")
                        added = True
                if classes:
                    self._labels[iid] = tuple(classes)
        if added:
            self._save_config()

    @staticmethod
    def _move_aside(path: Path) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(path, aside)
        return aside

    # ------------------------------------------------------------------ images
    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        """``image_id in project``: O(1) membership test for image ids."""
        return image_id in self._index

    def __repr__(self) -> str:
        return (f"Project({str(self.root)!r}, images={len(self.image_ids)}, "
                f"classes={list(self.class_names)}, labelled={len(self._labels)})")

    def path(self, image_id: str) -> Path:
        """Absolute path of an image."""
        self._check_id(image_id)
        return self.root / image_id

    def read_image(self, image_id: str) -> ImageData:
        """Read an image's pixels as ``(C, Y, X)``; raises :class:`ImageReadError`."""
        return read_image(self.path(image_id))

    def check_images(self, progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
        """Decode every image; return ``{image_id: reason}`` for those that cannot be read."""
        bad: dict[str, str] = {}
        n = len(self.image_ids)
        for i, iid in enumerate(self.image_ids):
            try:
                self.read_image(iid)
            except ImageReadError as exc:
                bad[iid] = str(exc).split(": ", 1)[-1]
            if progress is not None:
                progress(i + 1, n)
        return bad

    def _check_id(self, image_id: str) -> None:
        if image_id not in self._index:
            raise ProjectError(f"'{image_id}' is not an image of the project {self.root}")

    # ------------------------------------------------------------------ classes
    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        return tuple(self._classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._classes)

    def class_color(self, name: str) -> str:
        """The ``#rrggbb`` colour of a class."""
        return self._classes[self._class_index(name)].color

    def _class_index(self, name: str) -> int:
        for i, c in enumerate(self._classes):
            if c.name == name:
                return i
        raise ClassNameError(f"no class named {name!r}; classes are {list(self.class_names)}")

    def add_class(self, name: str, color: str | None = None) -> ClassInfo:
        """Add a class at the end of the list (a distinct palette colour by default)."""
        clean = validate_name(name, self.class_names)
        info = ClassInfo(clean, validate_color(color) if color is not None
                         else next_color([c.color for c in self._classes]))
        self._classes.append(info)
        self._save_config()
        self._notify(())
        return info

    def set_class_color(self, name: str, color: str) -> None:
        """Change a class's display colour."""
        i = self._class_index(name)
        self._classes[i] = ClassInfo(name, validate_color(color))
        self._save_config()
        self._notify(())

    def reorder_classes(self, names: Sequence[str]) -> None:
        """Put the classes in the given order (must name each class once)."""
        if sorted(names) != sorted(self.class_names):
            raise ClassNameError(f"new order {list(names)} must list each class once: {list(self.class_names)}")
        self._classes = [self._classes[self._class_index(n)] for n in names]
        self._save_config()
        self._notify(())

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; every sidecar holding it is rewritten (crash-safe)."""
        i = self._class_index(old)
        clean = validate_name(new, [n for n in self.class_names if n != old])
        if clean == old:
            return
        self._classes[i] = ClassInfo(clean, self._classes[i].color)
        self._save_config(pending_renames={old: clean})  # finished on next open if we crash
        self._rewrite_sidecars({old: clean})
        self._save_config()
        self._undo.clear()  # undo steps hold the old name
        self._notify(())

    def remove_class(self, name: str, *, force: bool = False) -> int:
        """Remove a class. Images labelled with it lose that label (needs ``force=True``).

        Returns the number of images whose labels changed.
        """
        i = self._class_index(name)
        users = [iid for iid, cl in self._labels.items() if name in cl]
        if users and not force:
            raise ProjectError(
                f"class '{name}' labels {len(users)} image(s); pass force=True (or confirm) "
                "to remove it and unlabel them"
            )
        self._rewrite_sidecars({name: None})
        del self._classes[i]
        self._save_config()
        self._undo.clear()  # undo steps may hold the removed class
        self._notify(tuple(users))
        return len(users)

    def _rewrite_sidecars(self, mapping: dict[str, str | None]) -> None:
        """Rename (or, mapped to None, drop) class names in every sidecar that holds them."""
        for iid, classes in list(self._labels.items()):
            if not any(c in mapping for c in classes):
                continue
            new: list[str] = []
            for c in classes:
                m = mapping.get(c, c)
                if m is not None and m not in new:
                    new.append(m)
            self._write(iid, tuple(new), source="human")

    def set_multi_label(self, flag: bool) -> None:
        """Switch between single- and multi-label (to single only when no image has 2+ labels)."""
        if not flag and any(len(c) > 1 for c in self._labels.values()):
            raise ProjectError("some images carry several classes; clear the extra labels before "
                               "switching the project to single-label")
        self.multi_label = bool(flag)
        self._save_config()

    def update_settings(self, **values: Any) -> None:
        """Store settings (JSON-serialisable) in ``cellclass.json``."""
        self.settings.update(values)
        self._save_config()

    # ------------------------------------------------------------------ labels (read)
    def labels(self, image_id: str) -> tuple[str, ...]:
        """Class names of an image (empty when unlabelled)."""
        self._check_id(image_id)
        return self._labels.get(image_id, ())

    def label(self, image_id: str) -> str | None:
        """The single class of an image, or None when unlabelled."""
        cl = self.labels(image_id)
        return cl[0] if cl else None

    def labelled_ids(self) -> list[str]:
        """Ids of labelled images, in project order."""
        return [i for i in self.image_ids if i in self._labels]

    def unlabelled_ids(self) -> list[str]:
        """Ids of images without a label, in project order."""
        return [i for i in self.image_ids if i not in self._labels]

    def ids_with_class(self, name: str) -> list[str]:
        """Ids of images labelled with ``name``."""
        self._class_index(name)
        return [i for i in self.image_ids if name in self._labels.get(i, ())]

    def counts(self) -> dict[str, int]:
        """Number of labelled images per class, in class order."""
        out = {n: 0 for n in self.class_names}
        for classes in self._labels.values():
            for c in classes:
                if c in out:
                    out[c] += 1
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for people and scripts (images, labelled, unlabelled, per class)."""
        return {
            "folder": str(self.root),
            "images": len(self.image_ids),
            "labelled": len(self._labels),
            "unlabelled": len(self.image_ids) - len(self._labels),
            "multi_label": self.multi_label,
            "classes": [{"name": c.name, "color": c.color} for c in self._classes],
            "counts": self.counts(),
            "problems": list(self.problems),
        }

    # ------------------------------------------------------------------ labels (write)
    def add_listener(self, callback: Callable[[tuple[str, ...]], None]) -> None:
        """Call ``callback(changed_ids)`` after every change (empty tuple: classes changed)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[tuple[str, ...]], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self, ids: tuple[str, ...]) -> None:
        for cb in list(self._listeners):
            cb(ids)

    def set_labels(self, image_ids: str | Iterable[str], classes: Sequence[str], *,
                   description: str = "label", source: str = "human") -> list[str]:
        """Set the exact class list of one or many images (one undo step).

        Returns the ids whose labels actually changed.
        """
        ids = [image_ids] if isinstance(image_ids, str) else list(image_ids)
        classes = tuple(dict.fromkeys(classes))
        for c in classes:
            self._class_index(c)
        if len(classes) > 1 and not self.multi_label:
            raise ProjectError(f"this is a single-label project; cannot give one image {len(classes)} classes "
                               "(switch the project to multi-label first)")
        return self._apply({i: classes for i in ids}, description, source)

    def assign(self, image_ids: str | Iterable[str], name: str, **kw: Any) -> list[str]:
        """Give images class ``name`` (single-label: replaces; multi-label: adds)."""
        ids = [image_ids] if isinstance(image_ids, str) else list(image_ids)
        self._class_index(name)
        if not self.multi_label:
            return self._apply({i: (name,) for i in ids}, kw.get("description", f"assign {name}"),
                               kw.get("source", "human"))
        changes = {}
        for i in ids:
            self._check_id(i)
            cur = self._labels.get(i, ())
            changes[i] = cur if name in cur else self._ordered(cur + (name,))
        return self._apply(changes, f"assign {name}", kw.get("source", "human"))

    def toggle(self, image_ids: str | Iterable[str], name: str) -> list[str]:
        """Multi-label: add or remove ``name``. Single-label: ``name`` or unlabelled.

        With several images the result is uniform: if any lacks the class, all get it.
        """
        ids = [image_ids] if isinstance(image_ids, str) else list(image_ids)
        self._class_index(name)
        for i in ids:
            self._check_id(i)
        add = any(name not in self._labels.get(i, ()) for i in ids)
        changes = {}
        for i in ids:
            cur = self._labels.get(i, ())
            if not self.multi_label:
                changes[i] = (name,) if add else ()
            elif add:
                changes[i] = cur if name in cur else self._ordered(cur + (name,))
            else:
                changes[i] = tuple(c for c in cur if c != name)
        return self._apply(changes, f"toggle {name}", "human")

    def clear(self, image_ids: str | Iterable[str]) -> list[str]:
        """Remove all labels of the given images (their sidecars are deleted)."""
        ids = [image_ids] if isinstance(image_ids, str) else list(image_ids)
        return self._apply({i: () for i in ids}, "clear", "human")

    def _ordered(self, classes: tuple[str, ...]) -> tuple[str, ...]:
        order = {n: k for k, n in enumerate(self.class_names)}
        return tuple(sorted(set(classes), key=lambda c: order.get(c, len(order))))

    def _apply(self, changes: dict[str, tuple[str, ...]], description: str, source: str) -> list[str]:
        for iid in changes:
            self._check_id(iid)
            if iid in self._clashes:
                raise ProjectError(
                    f"'{iid}' and '{self._clashes[iid]}' would share one label file; rename one of them"
                )
            if iid in self._locked:
                raise ProjectError(
                    f"the label file of '{iid}' {self._locked[iid]}; fix or move it, then reopen the project"
                )
        real = {i: c for i, c in changes.items() if self._labels.get(i, ()) != c}
        if not real:
            return []
        before = []
        for iid in real:
            sc = sidecar_path(self.root / iid)
            try:
                old_bytes = sc.read_bytes() if iid in self._labels else None
            except OSError:
                old_bytes = None
            before.append((iid, self._labels.get(iid, ()), old_bytes))
        done: list[str] = []
        try:
            for iid, classes in real.items():
                self._write(iid, classes, source=source)
                done.append(iid)
        finally:
            if done:
                done_set = set(done)
                kept = tuple(b for b in before if b[0] in done_set)
                self._undo.append(_UndoEntry(description, kept))
                del self._undo[:-MAX_UNDO]
                self._notify(tuple(done))
        return done

    def _write(self, iid: str, classes: tuple[str, ...], source: str, raw: bytes | None = None) -> None:
        """Write (or delete, when ``classes`` is empty) the sidecar of ``iid``; update memory."""
        path = self.root / iid
        sc = sidecar_path(path)
        if classes:
            data = raw if raw is not None else encode_sidecar(path.name, classes, source)
            atomic_write_bytes(sc, data, fsync=self.fsync)
            self._labels[iid] = classes
        else:
            try:
                sc.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ProjectError(f"cannot remove {sc}: {exc.strerror}; make the folder writable") from None
            self._labels.pop(iid, None)

    def clear_history(self) -> None:
        """Forget all undo steps (e.g. after a scripted bulk import)."""
        self._undo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo(self) -> list[str]:
        """Undo the last labelling action exactly (sidecar bytes restored, new ones deleted).

        Returns the ids that changed (empty when there is nothing to undo).
        """
        if not self._undo:
            return []
        entry = self._undo.pop()
        for iid, classes, raw in entry.before:
            self._write(iid, classes, source="human", raw=raw)
        ids = tuple(b[0] for b in entry.before)
        self._notify(ids)
        return list(ids)

    # ------------------------------------------------------------------ predefined splits
    @property
    def split_path(self) -> Path:
        return self.root / "cellclass_split.csv"

    def predefined_split(self) -> dict[str, str]:
        """``{image_id: 'train'|'val'|'test'}`` from ``cellclass_split.csv`` or train/val/test folders."""
        from .splits import read_split_file, split_from_folders

        if self.split_path.exists():
            return {k: v for k, v in read_split_file(self.split_path).items() if k in self._index}
        return split_from_folders(self.image_ids)

    def copy_image_in(self, src: Path, dest_id: str) -> str:
        """Copy an external image into the project (never overwriting) and register it."""
        dest = self.root / dest_id
        if dest.exists():
            raise ProjectError(f"{dest} already exists; not overwriting it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return dest_id

    def rescan(self) -> None:
        """List the folder again (after files were added or removed); labels are reloaded."""
        fresh = Project.open(self.root, fsync=self.fsync)
        undo, listeners = self._undo, self._listeners
        self.__dict__.update(fresh.__dict__)
        self._undo, self._listeners = undo, listeners
        self._notify(())
