"""A project is a folder of images with a class list and one label sidecar per labelled image.

This module is GUI-free (numpy + tifffile + Pillow): the napari widgets, the trainer, the
command line and scripts all share it.

``cellclass.json`` is written lazily (opening a folder writes nothing), read-modify-written
under a lock file so that two writers keep each other's classes, and every class or settings
change is saved before it is adopted in memory: a failed write changes nothing.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import TMP_PREFIX, atomic_write_bytes, atomic_write_text, file_lock
from .classes import ClassInfo, next_color, validate_color, validate_name
from .errors import ClassNameError, ImageReadError, ProjectError, SidecarCorruptError
from .images import ImageData, read_image
from .scan import scan_images
from .sidecars import LABEL_DIR, encode_sidecar, read_sidecar, sidecar_path, sidecar_source

CONFIG_NAME = "cellclass.json"
CONFIG_FORMAT = "napari-cellclass/project"
CONFIG_VERSION = 1
LOCK_NAME = ".cellclass.lock"
MAX_CONFIG_BYTES = 64 * 2 ** 20
MAX_UNDO = 1000
STALE_TEMP_SECONDS = 600
_KNOWN_KEYS = ("format", "version", "multi_label", "classes", "settings", "pending_renames")
_FIX = "fix the file by hand or rename it to start afresh"


def _remove_stale_temp(entry: os.DirEntry) -> None:
    """Delete a temporary file left by a write that was killed (never a finished sidecar)."""
    try:
        if _dt.datetime.now().timestamp() - entry.stat().st_mtime > STALE_TEMP_SECONDS:
            os.unlink(entry.path)
    except OSError:
        pass


@dataclass(frozen=True)
class _UndoEntry:
    """Everything needed to put some images' labels back as they were.

    Each item is ``(image id, classes, sidecar bytes or None, source)``: the exact old bytes
    are restored when present; ``None`` with classes means "write a fresh sidecar" (after a
    class rename the old bytes hold the old name), ``None`` without classes "delete it".
    """

    description: str
    before: tuple[tuple[str, tuple[str, ...], bytes | None, str], ...]


@dataclass
class _Config:
    """A checked ``cellclass.json`` (``raw`` keeps unknown keys for the next write)."""

    raw: dict[str, Any]
    classes: list[ClassInfo]
    multi_label: bool
    settings: dict[str, Any]
    pending: dict[str, str]
    problems: list[str] = field(default_factory=list)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _parse_config(cfg: object, path: Path) -> _Config:
    """Check a decoded ``cellclass.json``; one-line :class:`ProjectError` naming the file and the fix."""
    if not isinstance(cfg, dict) or cfg.get("format") != CONFIG_FORMAT:
        raise ProjectError(f"{path}: not a napari-cellclass project file; rename it or pick another folder")
    version = cfg.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, (int, float)) or not math.isfinite(version) \
            or version != int(version) or version < 1:
        raise ProjectError(f"{path}: 'version' must be a whole number such as {CONFIG_VERSION} "
                           f"(found {version!r}); {_FIX}")
    if int(version) > CONFIG_VERSION:
        raise ProjectError(f"{path}: written by a newer napari-cellclass; upgrade to open it")
    multi = cfg.get("multi_label", False)
    if not isinstance(multi, bool):
        raise ProjectError(f"{path}: 'multi_label' must be true or false (found {_type_name(multi)}); {_FIX}")
    settings = cfg.get("settings", {})
    if not isinstance(settings, dict):
        raise ProjectError(f"{path}: 'settings' must be an object {{...}} (found {_type_name(settings)}); {_FIX}")
    entries = cfg.get("classes", [])
    if not isinstance(entries, list):
        raise ProjectError(f"{path}: 'classes' must be a list of {{\"name\", \"color\"}} objects "
                           f"(found {_type_name(entries)}); {_FIX}")
    out = _Config(cfg, [], multi, dict(settings), {})
    seen: dict[str, str] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or "color" not in entry:
            raise ProjectError(f"{path}: entry {k + 1} of 'classes' must be an object with \"name\" and "
                               f"\"color\"; {_FIX}")
        try:
            name, color = validate_name(entry["name"]), validate_color(entry["color"])
        except ClassNameError as exc:
            raise ProjectError(f"{path}: invalid class list ({exc}); {_FIX}") from None
        if name.casefold() in seen:
            out.problems.append(f"{path.name}: duplicate class {entry['name']!r} merged into "
                                f"{seen[name.casefold()]!r}")
            continue
        seen[name.casefold()] = name
        out.classes.append(ClassInfo(name, color))
    pending = cfg.get("pending_renames") or {}
    if not isinstance(pending, dict):
        raise ProjectError(f"{path}: 'pending_renames' must be an object {{old: new}} "
                           f"(found {_type_name(pending)}); {_FIX}")
    for old, new in pending.items():
        try:
            out.pending[validate_name(old)] = validate_name(new)
        except ClassNameError as exc:
            out.problems.append(f"{path.name}: pending rename {old!r} -> {new!r} ignored ({exc})")
    return out


def _read_config(path: Path) -> _Config | None:
    """The checked settings file at ``path`` (None when there is none)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProjectError(f"{path}: project settings are unreadable ({exc.strerror}); {_FIX}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ProjectError(f"{path}: project settings are not a regular file; rename it to start afresh")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ProjectError(f"{path}: project settings are too large ({st.st_size} bytes); {_FIX}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = " ".join(str(exc).split())
        raise ProjectError(
            f"{path}: project settings are unreadable ({reason}); fix or rename the file to start afresh"
        ) from None
    return _parse_config(cfg, path)


class Project:
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
        self._baseline: _Config | None = None  # cellclass.json as last read or written here
        self._dirty = False  # memory holds classes or flags that cellclass.json does not have yet
        self._pending: dict[str, str] = {}  # renames an earlier run did not finish
        self._pending_clear: set[str] = set()  # keys of pending_renames to drop at the next write
        self._stale_sidecars: set[str] = set()  # ids whose sidecar holds a name a pending rename maps

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
        self = cls(root.resolve(), fsync=fsync)
        cfg = _read_config(self.config_path)
        if cfg is not None:
            self._adopt(cfg)
            self.problems.extend(cfg.problems)
            self._pending = dict(cfg.pending)
            self._pending_clear = set(cfg.raw.get("pending_renames") or {})
        else:
            self.multi_label = bool(multi_label)
            self._dirty = True
        skipped: list[str] = []
        self.image_ids = tuple(scan_images(self.root, skipped))
        self.problems.extend(skipped)
        self._index = {iid: i for i, iid in enumerate(self.image_ids)}
        self._find_clashes()
        self._load_labels()
        if self._pending:
            self._finish_renames()
        return self

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def _adopt(self, cfg: _Config) -> None:
        """Take the class list, flag and settings of a checked settings file into memory."""
        private = {k: v for k, v in self.settings.items() if k.startswith("_")}
        self._classes = list(cfg.classes)
        self.multi_label = cfg.multi_label
        self.settings = {**cfg.settings, **private}
        self._baseline = cfg

    def _finish_renames(self) -> None:
        """Finish class renames a crash interrupted: rewrite the sidecars, then clear the note."""
        try:
            for iid in sorted(self._stale_sidecars):
                self._write(iid, self._labels[iid], source=self._source_of(iid))
            self._commit()
        except ProjectError as exc:
            self.problems.append(f"could not finish renaming {', '.join(map(repr, self._pending))}: {exc}")
            self._pending_clear -= set(self._pending)  # keep the note until the sidecars are rewritten
        else:
            self._stale_sidecars.clear()
            self._pending.clear()

    # ------------------------------------------------------------------ cellclass.json
    def _commit(self, *, classes: Sequence[ClassInfo] | None = None, multi_label: bool | None = None,
                settings: Mapping[str, Any] | None = None, pending_add: Mapping[str, str] | None = None,
                pending_done: Iterable[str] = (), renamed: Mapping[str, str] | None = None) -> None:
        """Save a new state to ``cellclass.json``, then adopt it in memory (never the other way round).

        Under the project's lock file the file on disk is read again and merged: classes and
        settings that another writer saved since this project last read or wrote it are kept.
        ``renamed`` maps new names to old ones (to carry extra keys of a renamed class).
        """
        new_classes = list(self._classes if classes is None else classes)
        new_multi = self.multi_label if multi_label is None else bool(multi_label)
        new_settings = dict(self.settings if settings is None else settings)
        done = set(pending_done) | self._pending_clear
        with file_lock(self.root / LOCK_NAME):
            disk = _read_config(self.config_path)
            raw = self._merge(disk, new_classes, new_multi, new_settings, dict(pending_add or {}), done,
                              dict(renamed or {}))
            try:
                text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
            except (TypeError, ValueError) as exc:
                raise ProjectError(f"cannot write {self.config_path}: a setting cannot be stored ({exc}); "
                                   "remove it with update_settings") from None
            atomic_write_text(self.config_path, text, fsync=self.fsync)
        merged = _parse_config(raw, self.config_path)
        private = {k: v for k, v in new_settings.items() if k.startswith("_")}
        self._classes = list(merged.classes)
        self.multi_label = merged.multi_label
        self.settings = {**merged.settings, **private}
        self._baseline = merged
        self._pending_clear = set()
        self._dirty = False

    def _merge(self, disk: _Config | None, classes: list[ClassInfo], multi: bool, settings: dict[str, Any],
               pending_add: dict[str, str], pending_done: set[str], renamed: dict[str, str]) -> dict[str, Any]:
        """The JSON object to write: this project's state merged with what is on disk now."""
        base = self._baseline
        base_classes = {c.name.casefold(): c for c in base.classes} if base else {}
        ours = {c.name.casefold() for c in classes}
        removed_by_us = set(base_classes) - ours
        merged = list(classes)
        if disk is not None:
            on_disk = {c.name.casefold(): c for c in disk.classes}
            for k, c in enumerate(merged):  # a colour the other writer changed and we did not
                d, b = on_disk.get(c.name.casefold()), base_classes.get(c.name.casefold())
                if d is not None and b is not None and b.color == c.color and d.color != c.color:
                    merged[k] = ClassInfo(c.name, d.color)
            # a class the other writer removed (known to both, gone from the file) stays removed
            merged = [c for c in merged if c.name.casefold() in on_disk
                      or c.name.casefold() not in base_classes]
            merged += [d for cf, d in on_disk.items() if cf not in ours and cf not in removed_by_us]
        public = {k: v for k, v in settings.items() if not k.startswith("_")}
        if disk is None:
            out_settings, out_multi = public, multi
        else:
            base_settings = base.settings if base else {}
            gone = set(base_settings) - set(public)
            out_settings = {k: v for k, v in disk.settings.items() if k not in gone}
            out_settings.update({k: v for k, v in public.items()
                                 if k not in base_settings or base_settings[k] != v})
            out_multi = multi if base is None or multi != base.multi_label else disk.multi_label
        source = disk.raw if disk is not None else (base.raw if base is not None else {})
        extras = {}
        for entry in source.get("classes", []) if isinstance(source.get("classes"), list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                extras.setdefault(entry["name"].strip().casefold(),
                                  {k: v for k, v in entry.items() if k not in ("name", "color")})
        raw: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "multi_label": out_multi,
            "classes": [{"name": c.name, "color": c.color,
                         **extras.get(renamed.get(c.name, c.name).casefold(), {})} for c in merged],
            "settings": out_settings,
        }
        raw.update({k: v for k, v in source.items() if k not in _KNOWN_KEYS})
        old_pending = source.get("pending_renames") if isinstance(source.get("pending_renames"), dict) else {}
        pending = {k: v for k, v in old_pending.items() if k not in pending_done}
        pending.update(pending_add)
        if pending:
            raw["pending_renames"] = pending
        return raw

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
        known = {c.name.casefold(): c.name for c in self._classes}
        pending = {k.casefold(): v for k, v in self._pending.items()}
        for parent, stems in by_dir.items():
            label_dir = self.root / parent / LABEL_DIR
            try:
                entries = list(os.scandir(label_dir))
            except OSError:
                continue
            for entry in entries:
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
                    stored = read_sidecar(path, full=False)["classes"]
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
                names, why = self._canonical(stored, known, pending)
                if why:
                    self._locked[iid] = why
                    self.problems.append(f"{path}: label file {why}; kept, and '{iid}' cannot be relabelled "
                                         "until the file is fixed or removed")
                    continue
                for name in names:
                    if name.casefold() not in known:
                        self._classes.append(ClassInfo(name, next_color([c.color for c in self._classes])))
                        known[name.casefold()] = name
                        self._dirty = True
                        self.problems.append(f"class '{name}' found in {path.name} was added to the class list")
                if names:
                    self._labels[iid] = names
                if any(c.strip().casefold() in pending for c in stored):
                    self._stale_sidecars.add(iid)

    def _canonical(self, stored: Sequence[str], known: Mapping[str, str],
                   pending: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
        """Class names of a sidecar checked like typed names and mapped onto the project's classes.

        Returns ``(names, "")`` or ``((), why)`` when the file must be protected instead.
        """
        out: list[str] = []
        for raw in stored:
            try:
                name = validate_name(raw)
            except ClassNameError as exc:
                return (), f"holds a class name that is not allowed ({exc})"
            name = pending.get(name.casefold(), name)
            name = known.get(name.casefold(), name)
            if name not in out:
                out.append(name)
        if len(out) > 1 and not self.multi_label:
            return (), (f"holds {len(out)} classes ({', '.join(out)}) but the project is single-label "
                        "(switch it to multi-label to use them)")
        return tuple(out), ""

    @staticmethod
    def _move_aside(path: Path) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while os.path.lexists(aside):
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
        return self.add_classes([name], [color])[0]

    def add_classes(self, names: Sequence[str], colors: Sequence[str | None] | None = None) -> list[ClassInfo]:
        """Add several classes with one write (all or none: every name is checked first)."""
        colors = list(colors) if colors is not None else [None] * len(names)
        if len(colors) != len(names):
            raise ProjectError(f"{len(names)} class name(s) but {len(colors)} colour(s)")
        new = list(self._classes)
        added: list[ClassInfo] = []
        for name, color in zip(names, colors):
            clean = validate_name(name, [c.name for c in new])
            info = ClassInfo(clean, validate_color(color) if color is not None
                             else next_color([c.color for c in new]))
            new.append(info)
            added.append(info)
        if not added:
            return []
        self._commit(classes=new)
        self._notify(())
        return added

    def set_class_color(self, name: str, color: str) -> None:
        """Change a class's display colour."""
        i = self._class_index(name)
        new = list(self._classes)
        new[i] = ClassInfo(name, validate_color(color))
        self._commit(classes=new)
        self._notify(())

    def reorder_classes(self, names: Sequence[str]) -> None:
        """Put the classes in the given order (must name each class once)."""
        if sorted(names) != sorted(self.class_names):
            raise ClassNameError(f"new order {list(names)} must list each class once: {list(self.class_names)}")
        self._commit(classes=[self._classes[self._class_index(n)] for n in names])
        self._notify(())

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; every sidecar holding it is rewritten (crash-safe, all or nothing).

        Undo steps stay valid: they restore the new name.
        """
        i = self._class_index(old)
        clean = validate_name(new, [n for n in self.class_names if n != old])
        if clean == old:
            return
        classes = list(self._classes)
        classes[i] = ClassInfo(clean, classes[i].color)
        self._commit(classes=classes, pending_add={old: clean}, renamed={clean: old})  # finished on open
        try:
            self._rewrite_sidecars({old: clean})
        except ProjectError as exc:
            back = [ClassInfo(old, c.color) if c.name == clean else c for c in self._classes]
            try:
                self._commit(classes=back, pending_done={old}, renamed={old: clean})
            except ProjectError:
                raise ProjectError(f"{exc} (the rename is finished when the project is next opened)") from None
            raise
        self._commit(pending_done={old})
        self._remap_undo({old: clean})
        self._notify(())

    def remove_class(self, name: str, *, force: bool = False) -> int:
        """Remove a class. Images labelled with it lose that label (needs ``force=True``).

        The undo history is kept: a step that would restore ``name`` restores the image
        without it (see :meth:`remove_affects_history`). Returns the number of images whose
        labels changed.
        """
        i = self._class_index(name)
        users = [iid for iid, cl in self._labels.items() if name in cl]
        if users and not force:
            raise ProjectError(
                f"class '{name}' labels {len(users)} image(s); pass force=True (or confirm) "
                "to remove it and unlabel them"
            )
        before = list(self._classes)
        self._commit(classes=before[:i] + before[i + 1:])
        try:
            self._rewrite_sidecars({name: None})
        except ProjectError:
            try:
                self._commit(classes=before)
            except ProjectError:
                pass  # the class is found again in its sidecars on the next open
            raise
        self._remap_undo({name: None})
        self._notify(tuple(users))
        return len(users)

    def remove_affects_history(self, name: str) -> bool:
        """True when some undo step would restore ``name``: after :meth:`remove_class` those steps
        restore the images without it (the history itself is kept)."""
        return any(name in classes for e in self._undo for _, classes, _, _ in e.before)

    def _source_of(self, iid: str) -> str:
        try:
            return sidecar_source(sidecar_path(self.root / iid).read_bytes())
        except OSError:
            return "human"

    def _rewrite_sidecars(self, mapping: Mapping[str, str | None]) -> None:
        """Rename (or, mapped to None, drop) class names in every sidecar that holds them.

        All or nothing: when a write fails, the sidecars already rewritten are put back.
        """
        done: list[tuple[str, tuple[str, ...], bytes | None]] = []
        try:
            for iid, classes in list(self._labels.items()):
                if not any(c in mapping for c in classes):
                    continue
                new: list[str] = []
                for c in classes:
                    m = mapping.get(c, c)
                    if m is not None and m not in new:
                        new.append(m)
                try:
                    raw = sidecar_path(self.root / iid).read_bytes()
                except OSError:
                    raw = None
                self._write(iid, tuple(new), source=sidecar_source(raw) if raw else "human")
                done.append((iid, classes, raw))
        except ProjectError:
            for iid, classes, raw in reversed(done):
                try:
                    self._write(iid, classes, source="human", raw=raw)
                except ProjectError:
                    self.problems.append(f"could not put back the label of '{iid}' ({', '.join(classes)})")
            raise

    def _remap_undo(self, mapping: Mapping[str, str | None]) -> None:
        """Rename (or drop) classes inside the undo history so every step stays valid."""
        for k, entry in enumerate(self._undo):
            if not any(c in mapping for _, classes, _, _ in entry.before for c in classes):
                continue
            items = []
            for iid, classes, raw, source in entry.before:
                if any(c in mapping for c in classes):
                    new = tuple(dict.fromkeys(m for c in classes if (m := mapping.get(c, c)) is not None))
                    items.append((iid, new, None, sidecar_source(raw) if raw else source))
                else:
                    items.append((iid, classes, raw, source))
            self._undo[k] = _UndoEntry(entry.description, tuple(items))

    def set_multi_label(self, flag: bool) -> None:
        """Switch between single- and multi-label (to single only when no image has 2+ labels)."""
        if not flag and any(len(c) > 1 for c in self._labels.values()):
            raise ProjectError("some images carry several classes; clear the extra labels before "
                               "switching the project to single-label")
        self._commit(multi_label=bool(flag))

    def update_settings(self, **values: Any) -> None:
        """Store settings in ``cellclass.json`` (text, numbers, true/false, lists, objects).

        A value JSON cannot store is refused at once and nothing changes.
        """
        for key, value in values.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError, RecursionError) as exc:
                raise ProjectError(f"setting {key!r} cannot be stored in {self.config_path} "
                                   f"({' '.join(str(exc).split())}); use text, numbers, true/false, "
                                   "lists or objects") from None
        self._commit(settings={**self.settings, **values})

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
        return self.apply_labels({i: classes for i in ids}, description=description, source=source)

    def apply_labels(self, changes: Mapping[str, Sequence[str]], *, description: str,
                     source: str = "human") -> list[str]:
        """Give each image its own exact class list, all as ONE undo step.

        ``changes`` maps image ids to class names (an empty list unlabels). Everything is
        checked (ids, class names, single-label, protected label files) before anything is
        written. ``source`` is recorded in the sidecars (``human``, ``import``, ``prediction``).
        Returns the ids whose labels actually changed, in the order given.
        """
        clean: dict[str, tuple[str, ...]] = {}
        for iid, classes in changes.items():
            cl = tuple(dict.fromkeys((classes,) if isinstance(classes, str) else classes))
            for c in cl:
                self._class_index(c)
            if len(cl) > 1 and not self.multi_label:
                raise ProjectError(f"this is a single-label project; cannot give one image {len(cl)} classes "
                                   "(switch the project to multi-label first)")
            clean[iid] = cl
        return self._apply(clean, description, source)

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

    def check_targets(self, image_ids: Iterable[str]) -> None:
        """Raise :class:`ProjectError` unless every image exists and its label file may be written."""
        for iid in image_ids:
            self._check_id(iid)
            if iid in self._clashes:
                raise ProjectError(
                    f"'{iid}' and '{self._clashes[iid]}' would share one label file; rename one of them"
                )
            if iid in self._locked:
                raise ProjectError(
                    f"the label file of '{iid}' {self._locked[iid]}; fix or move it, then reopen the project"
                )

    def _apply(self, changes: dict[str, tuple[str, ...]], description: str, source: str) -> list[str]:
        self.check_targets(changes)
        real = {i: c for i, c in changes.items() if self._labels.get(i, ()) != c}
        if not real:
            return []
        if self._dirty:  # classes found in sidecars (or a new project's flag) are saved with the first label
            self._commit()
        before = []
        for iid in real:
            sc = sidecar_path(self.root / iid)
            try:
                old_bytes = sc.read_bytes() if iid in self._labels else None
            except OSError:
                old_bytes = None
            before.append((iid, self._labels.get(iid, ()), old_bytes, "human"))
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
        self._check_inside(sc)
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

    def _check_inside(self, sc: Path) -> None:
        """Never write or delete a label file through a link that leads out of the project."""
        real = os.path.realpath(sc)
        if os.path.commonpath([real, str(self.root)]) != str(self.root):
            raise ProjectError(f"{sc} is a link to {real}, outside the project; replace the link with "
                               "a regular file to label this image")

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
        for iid, classes, raw, source in entry.before:
            self._write(iid, classes, source=source, raw=raw)
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

    def check_output_path(self, path: str | os.PathLike) -> None:
        """Refuse (one line) an output file that would replace a file of this project.

        The settings file, the lock file, the split and predictions files, an image and
        anything inside a label folder (``cellclass_labels``), a model or cache folder are
        refused, also when ``path`` is a link to them.
        """
        given = Path(path).expanduser()
        real = Path(os.path.realpath(given))
        what = None
        own = {self.config_path: "the settings file", self.root / LOCK_NAME: "the lock file",
               self.split_path: "the split file", self.root / "cellclass_predictions.csv": "the predictions file"}
        if real in own:
            what = own[real]
        elif LABEL_DIR in real.parts:
            what = "inside a label folder"
        else:
            try:
                rel = real.relative_to(self.root)
            except ValueError:
                rel = None
            if rel is not None and rel.parts and rel.parts[0] in ("cellclass_models", "cellclass_cache"):
                what = f"inside {rel.parts[0]}"
            elif rel is not None and rel.as_posix() in self._index:
                what = "an image"
        if what is not None:
            raise ProjectError(f"{given}: this is {what} of the project {self.root}; "
                               "choose another file to write")

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
        fresh = Project.open(self.root, fsync=self.fsync, multi_label=self.multi_label)
        undo, listeners = self._undo, self._listeners
        self.__dict__.update(fresh.__dict__)
        self._undo, self._listeners = undo, listeners
        self._notify(())
