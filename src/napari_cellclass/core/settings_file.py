"""``cellclass.json``: the class list, flag and settings, checked on reading, merged and written under a lock.

The file is written lazily (opening a folder writes nothing) and read-modify-written under a
lock file, so that two writers keep each other's classes and settings. A change is saved
before it is adopted in memory: a write that fails changes nothing.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, file_lock
from .classes import ClassInfo, ClassList, validate_color, validate_name
from .errors import ClassNameError, ProjectError
from .textfiles import FileStamp, file_stamp, read_bytes_bounded

CONFIG_NAME = "cellclass.json"
CONFIG_FORMAT = "napari-cellclass/project"
CONFIG_VERSION = 1
LOCK_NAME = ".cellclass.lock"
MAX_CONFIG_BYTES = 64 * 2 ** 20
_KNOWN_KEYS = ("format", "version", "multi_label", "classes", "settings", "pending_renames")
_FIX = "fix the file by hand or rename it to start afresh"


@dataclass
class ProjectConfig:
    """A checked ``cellclass.json`` (``raw`` keeps unknown keys for the next write)."""

    raw: dict[str, Any]
    classes: list[ClassInfo]
    multi_label: bool
    settings: dict[str, Any]
    pending: dict[str, str]
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ reading and checking
def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_version(cfg: dict[str, Any], path: Path) -> None:
    version = cfg.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, (int, float)) or not math.isfinite(version) \
            or version != int(version) or version < 1:
        raise ProjectError(f"{path}: 'version' must be a whole number such as {CONFIG_VERSION} "
                           f"(found {version!r}); {_FIX}")
    if int(version) > CONFIG_VERSION:
        raise ProjectError(f"{path}: written by a newer napari-cellclass; upgrade to open it")


#: key -> (its default, the type it must have, what to call that type in the message)
_TYPED_KEYS: dict[str, tuple[Any, type, str]] = {
    "multi_label": (False, bool, "true or false"),
    "settings": ({}, dict, "an object {...}"),
    "classes": ([], list, 'a list of {"name", "color"} objects'),
}


def _typed(cfg: dict[str, Any], key: str, path: Path) -> Any:
    default, kind, wanted = _TYPED_KEYS[key]
    value = cfg.get(key, default)
    if not isinstance(value, kind):
        raise ProjectError(f"{path}: '{key}' must be {wanted} (found {_type_name(value)}); {_FIX}")
    return value


def _parse_classes(entries: list[Any], path: Path, problems: list[str]) -> list[ClassInfo]:
    """The classes of the file; a duplicate name (ignoring case) is merged into the first one."""
    out: list[ClassInfo] = []
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
            problems.append(f"{path.name}: duplicate class {entry['name']!r} merged into {seen[name.casefold()]!r}")
            continue
        seen[name.casefold()] = name
        out.append(ClassInfo(name, color))
    return out


def _parse_pending(cfg: dict[str, Any], path: Path, problems: list[str]) -> dict[str, str]:
    """The class renames an earlier run did not finish (``{old: new}``); bad ones are ignored."""
    pending = cfg.get("pending_renames") or {}
    if not isinstance(pending, dict):
        raise ProjectError(f"{path}: 'pending_renames' must be an object {{old: new}} "
                           f"(found {_type_name(pending)}); {_FIX}")
    out: dict[str, str] = {}
    for old, new in pending.items():
        try:
            out[validate_name(old)] = validate_name(new)
        except ClassNameError as exc:
            problems.append(f"{path.name}: pending rename {old!r} -> {new!r} ignored ({exc})")
    return out


def unstorable(value: Any) -> str | None:
    """Why JSON cannot store ``value`` exactly (NaN, infinity, a non-text key, an object), or None."""
    def keys_are_text(v: Any) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and keys_are_text(x) for k, x in v.items())
        return all(keys_are_text(x) for x in v) if isinstance(v, (list, tuple)) else True

    try:
        json.dumps(value, allow_nan=False)
        if not keys_are_text(value):
            return "keys of objects must be text"
    except (TypeError, ValueError, RecursionError) as exc:
        return " ".join(str(exc).split())
    return None


def _storable_settings(settings: Mapping[str, Any], path: Path, problems: list[str]) -> dict[str, Any]:
    """The settings JSON can store again; each other one is left out and described in ``problems``."""
    out = {}
    for key, value in settings.items():
        why = unstorable(value)
        if why is None:
            out[key] = value
        else:
            problems.append(f"{path.name}: setting {key!r} left out ({why})")
    return out


def parse_config(cfg: object, path: Path) -> ProjectConfig:
    """Check a decoded ``cellclass.json``; one-line :class:`ProjectError` naming the file and the fix."""
    if not isinstance(cfg, dict) or cfg.get("format") != CONFIG_FORMAT:
        raise ProjectError(f"{path}: not a napari-cellclass project file; rename it or pick another folder")
    _check_version(cfg, path)
    multi, settings, entries = (_typed(cfg, key, path) for key in ("multi_label", "settings", "classes"))
    problems: list[str] = []
    classes = _parse_classes(entries, path, problems)
    pending = _parse_pending(cfg, path, problems)
    return ProjectConfig(cfg, classes, multi, _storable_settings(settings, path, problems), pending, problems)


def read_config(path: Path) -> ProjectConfig | None:
    """The checked settings file at ``path`` (None when there is none)."""
    try:
        raw, _ = read_bytes_bounded(path, MAX_CONFIG_BYTES, "project settings", fix=_FIX)
    except FileNotFoundError:
        return None
    try:
        cfg = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = " ".join(str(exc).split())
        raise ProjectError(
            f"{path}: project settings are unreadable ({reason}); fix or rename the file to start afresh"
        ) from None
    return parse_config(cfg, path)


# ------------------------------------------------------------------ merging with the file on disk
def _merge_classes(base: ProjectConfig | None, disk: ProjectConfig | None,
                   classes: Sequence[ClassInfo]) -> list[ClassInfo]:
    """Our classes, plus what another writer changed since ``base`` (the file as we last saw it)."""
    merged = list(classes)
    if disk is None:
        return merged
    base_classes = {c.name.casefold(): c for c in base.classes} if base else {}
    ours = {c.name.casefold() for c in classes}
    removed_by_us = set(base_classes) - ours
    on_disk = {c.name.casefold(): c for c in disk.classes}
    for k, c in enumerate(merged):  # a colour the other writer changed and we did not
        d, b = on_disk.get(c.name.casefold()), base_classes.get(c.name.casefold())
        if d is not None and b is not None and b.color == c.color and d.color != c.color:
            merged[k] = ClassInfo(c.name, d.color)
    # a class the other writer removed (known to both, gone from the file) stays removed
    merged = [c for c in merged if c.name.casefold() in on_disk or c.name.casefold() not in base_classes]
    return merged + [d for cf, d in on_disk.items() if cf not in ours and cf not in removed_by_us]


def _merge_settings(base: ProjectConfig | None, disk: ProjectConfig | None, settings: Mapping[str, Any],
                    multi: bool) -> tuple[dict[str, Any], bool]:
    """The settings and multi-label flag to write: ours where we changed them, the file's otherwise."""
    public = {k: v for k, v in settings.items() if not k.startswith("_")}
    if disk is None:
        return public, multi
    base_settings = base.settings if base else {}
    gone = set(base_settings) - set(public)
    out = {k: v for k, v in disk.settings.items() if k not in gone}
    out.update({k: v for k, v in public.items() if k not in base_settings or base_settings[k] != v})
    return out, (multi if base is None or multi != base.multi_label else disk.multi_label)


def _class_extras(source: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Keys other than name and colour of each class entry (by case-folded name), kept on writing."""
    entries = source.get("classes")
    extras: dict[str, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            extras.setdefault(entry["name"].strip().casefold(),
                              {k: v for k, v in entry.items() if k not in ("name", "color")})
    return extras


def _merge_pending(source: Mapping[str, Any], add: Mapping[str, str], done: set[str]) -> dict[str, str]:
    old = source.get("pending_renames")
    pending = {k: v for k, v in old.items() if k not in done} if isinstance(old, dict) else {}
    pending.update(add)
    return pending


@dataclass(frozen=True)
class ConfigEdit:
    """A new state to save: classes, flag and settings (``_`` keys stay in memory) and rename notes.

    ``renamed`` maps new class names to old ones (to carry the extra keys of a renamed class).
    """

    classes: tuple[ClassInfo, ...]
    multi_label: bool
    settings: Mapping[str, Any]
    pending_add: Mapping[str, str] = field(default_factory=dict)
    pending_done: frozenset[str] = frozenset()
    renamed: Mapping[str, str] = field(default_factory=dict)


def merge_config(base: ProjectConfig | None, disk: ProjectConfig | None, edit: ConfigEdit) -> dict[str, Any]:
    """The JSON object to write: ``edit`` merged with what is on disk now (``base``: as last seen)."""
    merged = _merge_classes(base, disk, edit.classes)
    settings, multi = _merge_settings(base, disk, edit.settings, edit.multi_label)
    source = disk.raw if disk is not None else (base.raw if base is not None else {})
    extras = _class_extras(source)
    raw: dict[str, Any] = {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "multi_label": multi,
        "classes": [{**c.to_json(), **extras.get(edit.renamed.get(c.name, c.name).casefold(), {})}
                    for c in merged],
        "settings": settings,
    }
    raw.update({k: v for k, v in source.items() if k not in _KNOWN_KEYS})
    pending = _merge_pending(source, edit.pending_add, set(edit.pending_done))
    if pending:
        raw["pending_renames"] = pending
    return raw


# ------------------------------------------------------------------ the file of one project
class SettingsFile:
    """The ``cellclass.json`` of one project folder and the class list, flag and settings it holds.

    Every change is saved to the file first (merged with what another writer saved since this
    project last read or wrote it) and only then adopted in memory: a failed write changes
    nothing. Settings whose key starts with ``_`` live in memory only.

    Attributes
    ----------
    classes, multi_label, settings
        The state as saved (plus the ``_`` settings and classes found in label files).
    baseline : ProjectConfig or None
        The file as last read or written here (what another writer's changes are measured against).
    needs_write : bool
        Memory holds classes or a flag that the file does not have yet (a new project, classes
        found in label files); they are saved with the next change.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.path = root / CONFIG_NAME
        self.lock_path = root / LOCK_NAME
        self.fsync = fsync
        self.classes = ClassList()
        self.multi_label = False
        self.settings: dict[str, Any] = {}
        self.baseline: ProjectConfig | None = None
        self.needs_write = False
        self._pending_clear: set[str] = set()  # keys of pending_renames to drop at the next write
        self.stamp: FileStamp | None = None  # the file as last read or written here

    def changed_on_disk(self) -> bool:
        """Whether another writer replaced or edited the file since this one last read or wrote it."""
        return file_stamp(self.path) != self.stamp

    def read(self, multi_label: bool | None = None) -> ProjectConfig | None:
        """Read, check and adopt the file; without one, start a new project (written at the first change)."""
        self.stamp = file_stamp(self.path)
        cfg = read_config(self.path)
        if cfg is None:
            self.multi_label = bool(multi_label)
            self.needs_write = True
            return None
        self._adopt(cfg, {})
        self._pending_clear = set(cfg.raw.get("pending_renames") or {})
        return cfg

    def add_found(self, names: Sequence[str]) -> None:
        """Append classes found in label files (saved with the next change)."""
        self.classes = self.classes.found(names)
        self.needs_write = True

    def keep_pending(self, names: Iterable[str]) -> None:
        """Keep these rename notes at the next write (their label files are not rewritten yet)."""
        self._pending_clear -= set(names)

    def commit(self, *, classes: Iterable[ClassInfo] | None = None, multi_label: bool | None = None,
               settings: Mapping[str, Any] | None = None, pending_add: Mapping[str, str] | None = None,
               pending_done: Iterable[str] = (), renamed: Mapping[str, str] | None = None) -> None:
        """Save a new state (unchanged parts as they are), then adopt it in memory.

        ``pending_add`` and ``pending_done`` add and drop rename notes (``{old: new}``, finished
        on the next open when the label files were not all rewritten); ``renamed`` maps new class
        names to old ones (to carry the extra keys of a renamed class).
        """
        new_settings = dict(self.settings if settings is None else settings)
        edit = ConfigEdit(tuple(self.classes if classes is None else classes),
                          self.multi_label if multi_label is None else bool(multi_label), new_settings,
                          dict(pending_add or {}), frozenset(pending_done) | self._pending_clear, dict(renamed or {}))
        with file_lock(self.lock_path):
            raw = merge_config(self.baseline, read_config(self.path), edit)
            try:
                text = json.dumps(raw, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
            except (TypeError, ValueError) as exc:
                raise ProjectError(f"cannot write {self.path}: a setting cannot be stored ({exc}); "
                                   "remove it with update_settings") from None
            if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:  # the next open would refuse the file
                raise ProjectError(f"cannot write {self.path}: the settings are too large (over {MAX_CONFIG_BYTES} "
                                   "bytes); store large data in a file of its own")
            atomic_write_text(self.path, text, fsync=self.fsync)
            self.stamp = file_stamp(self.path)
        self._adopt(parse_config(raw, self.path), new_settings)
        self._pending_clear = set()
        self.needs_write = False

    def update_settings(self, values: Mapping[str, Any]) -> None:
        """Save settings (a value JSON cannot store is refused at once and nothing changes)."""
        for key, value in values.items():
            why = unstorable(value)
            if why is not None:
                raise ProjectError(f"setting {key!r} cannot be stored in {self.path} ({why}); use text, numbers, "
                                   "true/false, lists or objects with text keys")
        self.commit(settings={**self.settings, **values})

    def _adopt(self, cfg: ProjectConfig, kept: Mapping[str, Any]) -> None:
        """Take a checked file's classes, flag and settings into memory (with the ``_`` settings of ``kept``)."""
        private = {k: v for k, v in kept.items() if k.startswith("_")}
        self.classes = ClassList(tuple(cfg.classes))
        self.multi_label = cfg.multi_label
        self.settings = {**cfg.settings, **private}
        self.baseline = cfg
