"""The project index: each folder's listing and each label file's classes, so reopening reads only what changed.

``<project>/cellclass_cache/project_index.json`` holds, for every folder below the project,
its stamp (modification time and inode) and the image files and subfolders it held when last
listed, the natural order of all image ids, and for every label file its stamp (``mtime_ns``,
``ctime_ns``, size, inode) and the class names it held. At the next opening a folder whose
stamp is unchanged is not listed again (adding, removing or renaming a file changes its
folder's stamp), the ids are not sorted again when no folder changed, and a label file whose
stamp is unchanged is not read again (any rewrite, also in place by another program, changes
its ``ctime``). Folders holding links, and folders changed in the last seconds before a listing
(a file added in the same clock tick would not change the stamp), are always listed again.

The folders and sidecars stay the source of truth: a missing, damaged or foreign index is
ignored, and deleting it loses nothing. The index is written only for a project that has
``cellclass.json`` (opening a folder writes nothing into it) and never when nothing changed.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .errors import ProjectError
from .textfiles import MAX_CSV_BYTES, read_bytes_bounded, stamp_of

INDEX_FORMAT = "napari-cellclass/project-index"
INDEX_VERSION = 3
INDEX_PATH = ("cellclass_cache", "project_index.json")
#: A folder changed this recently may still change within the same clock tick (FAT: 2 s): list it again next time.
RACY_SECONDS = 2.0

FolderStamp = tuple[int, int]
_Rows = tuple[list[str], np.ndarray, np.ndarray]


def folder_stamp(st: os.stat_result) -> FolderStamp:
    """What changes when a file is added to, removed from or renamed in a folder."""
    return (st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class Listing:
    """One folder's part of the project: its kind, image files and subfolders to enter.

    ``kind`` is ``""`` for an ordinary folder, ``"model"`` for a model folder and ``"project"``
    for a folder holding a project of its own (neither is entered).
    """

    kind: str
    images: tuple[str, ...]
    subfolders: tuple[str, ...]


def _join(names: Sequence[str]) -> str | None:
    """Names as one string (one JSON token parses far faster than 100,000); None when a name holds a newline."""
    text = "\n".join(names)
    return None if text.count("\n") != max(0, len(names) - 1) else text


def _split(text: str) -> list[str]:
    return text.split("\n") if text else []


def _listing(value: object) -> tuple[FolderStamp, Listing] | None:
    """A checked ``[mtime_ns, inode, kind, "images", "subfolders"]`` entry (names joined by newlines), or None."""
    if not (isinstance(value, list) and len(value) == 5):
        return None
    m, ino, kind, images, subs = value
    if type(m) is not int or type(ino) is not int or kind not in ("", "model", "project"):
        return None
    if not (isinstance(images, str) and isinstance(subs, str)):
        return None
    return (m, ino), Listing(kind, tuple(_split(images)), tuple(_split(subs)))


class ProjectIndex:
    """The stored index of one project (read once at opening) and the one built while opening."""

    def __init__(self, root: Path) -> None:
        self.path = root.joinpath(*INDEX_PATH)
        self._old_folders: dict[str, tuple[FolderStamp, Listing]] = {}
        self._new_folders: dict[str, tuple[FolderStamp, Listing]] = {}
        self._old_order: tuple[str, ...] | None = None
        self._new_order: tuple[str, ...] | None = None
        self._old_rows: dict[str, _Rows] = {}  # label folder -> its files' names, stamps and class lists
        self._lists: list[tuple[str, ...]] = []  # the distinct class lists rows refer to
        self._new_files: dict[str, list[tuple[str, Sequence[int], tuple[str, ...]]]] = {}
        self._changed_files = False
        self._folders_changed = False
        self._now = time.time()

    @classmethod
    def load(cls, root: Path) -> ProjectIndex:
        """The index stored in ``root`` (empty when there is none or it cannot be used)."""
        index = cls(root)
        try:
            raw, _ = read_bytes_bounded(index.path, MAX_CSV_BYTES, "project index")
            data = json.loads(raw)
        except (FileNotFoundError, ProjectError, ValueError, RecursionError):
            return index
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or data.get("version") != INDEX_VERSION:
            return index
        with contextlib.suppress(TypeError, ValueError, IndexError, AttributeError):
            index._old_folders = _read_folders(data.get("folders"))
            index._lists, index._old_rows = _read_labels(data.get("labels"), data.get("class_lists"))
            order = data.get("order")
            if isinstance(order, str):
                index._old_order = tuple(_split(order))
        return index

    # ------------------------------------------------------------------ folders
    def listing(self, rel: str, st: os.stat_result) -> Listing | None:
        """The listing of folder ``rel`` (``""`` or ``"a/b/"``) when its stamp is still ``st``'s."""
        entry = self._old_folders.get(rel)
        if entry is None or entry[0] != folder_stamp(st):
            self._folders_changed = True
            return None
        self._new_folders[rel] = entry
        return entry[1]

    def put_listing(self, rel: str, st: os.stat_result, listing: Listing, cacheable: bool) -> None:
        """Remember the listing of folder ``rel`` (stat ``st`` taken before listing it)."""
        self._folders_changed = True
        if cacheable and self._now - st.st_mtime > RACY_SECONDS:
            self._new_folders[rel] = (folder_stamp(st), listing)

    def sorted_ids(self) -> tuple[str, ...] | None:
        """The stored order of all image ids, when no folder changed since it was stored."""
        if self._folders_changed or self._new_folders.keys() != self._old_folders.keys():
            return None
        return self._old_order

    def put_order(self, ids: tuple[str, ...]) -> None:
        self._new_order = ids

    # ------------------------------------------------------------------ label files
    def check_folder(self, folder: str, entries: Sequence[os.DirEntry]
                     ) -> tuple[dict[tuple[str, ...], list[str]], list[tuple[os.DirEntry, os.stat_result | None]]]:
        """Split the label files ``entries`` of ``folder`` into unchanged ones and ones to read.

        Returns ``({class names: [file names holding them]}, [(entry, stat or None when it failed),
        ...])``. Every file is stat-ed (one call each, the same check ``git status`` makes);
        unchanged files keep their entry in the index.
        """
        stats: list[os.stat_result | None]
        try:
            stats = [e.stat() for e in entries]
        except OSError:  # a file went away meanwhile: one by one
            stats = [_stat_or_none(e) for e in entries]
        stored = self._old_rows.get(folder)
        known: dict[tuple[str, ...], list[str]] = {}
        if stored is None or any(st is None for st in stats):
            return known, list(zip(entries, stats, strict=True))
        names, stamps, kinds = stored
        now = np.fromiter(chain.from_iterable((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
                                              for st in stats if st is not None),
                          dtype=np.int64, count=4 * len(stats)).reshape(-1, 4)
        got = [e.name for e in entries]
        if got == names:
            same = np.flatnonzero((now == stamps).all(axis=1))
        else:  # the folder's files came in another order (or changed): match by name
            pos = {n: k for k, n in enumerate(names)}
            at = np.array([pos.get(n, -1) for n in got], dtype=np.int64)
            ok = at >= 0
            same = np.flatnonzero(ok & (now == stamps[np.where(ok, at, 0)]).all(axis=1))
            kinds = kinds[np.where(ok, at, 0)]
        keep = np.zeros(len(got), dtype=bool)
        keep[same] = True
        lists = self._lists
        same_kinds = kinds[same]
        for kind in np.unique(same_kinds).tolist():
            known[lists[kind]] = [got[k] for k in same[same_kinds == kind].tolist()]
        self._new_files.setdefault(folder, []).extend(
            (got[k], now[k], lists[kind]) for k, kind in zip(same.tolist(), same_kinds.tolist(), strict=True))
        if len(same) != len(names):
            self._changed_files = True
        return known, [(entries[k], stats[k]) for k in np.flatnonzero(~keep).tolist()]

    def put(self, folder: str, name: str, st: os.stat_result, names: tuple[str, ...]) -> None:
        """Remember what label file ``name`` in ``folder`` (with stat ``st`` before it was read) holds."""
        self._changed_files = True
        self._new_files.setdefault(folder, []).append((name, stamp_of(st), tuple(names)))

    # ------------------------------------------------------------------ saving
    def save(self) -> None:
        """Write the index built while opening, when it differs from the stored one (best effort)."""
        order = self._new_order if self._new_order is not None else self._old_order
        if (not self._changed_files and self._new_files.keys() == self._old_rows.keys()
                and self._new_folders == self._old_folders and order == self._old_order):
            return
        lists: dict[tuple[str, ...], int] = {}
        labels = {}
        for folder, rows in self._new_files.items():
            names = _join([r[0] for r in rows])
            if names is not None:
                stamps = np.array([r[1] for r in rows], dtype=np.int64).reshape(-1, 4)
                kinds = np.array([lists.setdefault(r[2], len(lists)) for r in rows], dtype=np.int64)
                labels[folder] = {"names": names, "stamps": _pack(stamps), "lists": _pack(kinds)}
        folders = {}
        for rel, (st, lst) in self._new_folders.items():
            images, subs = _join(lst.images), _join(lst.subfolders)
            if images is not None and subs is not None:
                folders[rel] = [*st, lst.kind, images, subs]
        data = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "folders": folders,
                "order": _join(order or ()) or "", "class_lists": [list(k) for k in lists], "labels": labels}
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        with contextlib.suppress(ProjectError, OSError):  # a cache: a read-only or full disk only costs speed
            atomic_write_text(self.path, text, fsync=False)
            self.path.with_name("label_index.json").unlink(missing_ok=True)  # the index of version 0.2


def _stat_or_none(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat()
    except OSError:
        return None


def _read_folders(value: object) -> dict[str, tuple[FolderStamp, Listing]]:
    out: dict[str, tuple[FolderStamp, Listing]] = {}
    if isinstance(value, dict):
        for rel, item in value.items():
            entry = _listing(item)
            if entry is not None:
                out[rel] = entry
    return out


def _read_labels(value: object, class_lists: object) -> tuple[list[tuple[str, ...]], dict[str, _Rows]]:
    """The class lists and, per label folder, its file names, stamps ``(n, 4)`` and class-list indices."""
    if not isinstance(value, dict) or not isinstance(class_lists, list):
        return [], {}
    lists = [tuple(k) for k in class_lists if isinstance(k, list) and all(isinstance(n, str) for n in k)]
    if len(lists) != len(class_lists):
        return [], {}
    out: dict[str, _Rows] = {}
    for folder, rows in value.items():
        if not isinstance(rows, dict):
            continue
        names, stamps, kinds = rows.get("names"), rows.get("stamps"), rows.get("lists")
        if not (isinstance(names, str) and isinstance(stamps, str) and isinstance(kinds, str)):
            continue
        name_list = _split(names)
        stamp_arr, kind_arr = _unpack(stamps), _unpack(kinds)
        n = len(name_list)
        if stamp_arr is None or kind_arr is None or stamp_arr.size != 4 * n or kind_arr.size != n:
            continue
        if n and (kind_arr.min() < 0 or kind_arr.max() >= len(lists)):
            continue
        out[folder] = (name_list, stamp_arr.reshape(n, 4), kind_arr)
    return lists, out


def _pack(values: np.ndarray) -> str:
    """Little-endian int64 values as base64 text."""
    return base64.b64encode(values.astype("<i8").tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(raw) % 8:
        return None
    return np.frombuffer(raw, dtype="<i8").astype(np.int64)
