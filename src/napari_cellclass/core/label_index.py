"""The label index: what each label file held when last read, so reopening reads only changed files.

``<project>/cellclass_cache/label_index.json`` maps each sidecar (path relative to the project)
to the stamp it had when read (``mtime_ns``, ``ctime_ns``, size, inode) and the class names it
held. At the next opening a sidecar whose stamp is unchanged is not read again; any change,
also a sidecar rewritten in place by another program, changes the stamp and the file is read.
The sidecars stay the source of truth: a missing, damaged or foreign index is ignored, and
deleting it loses nothing. The index is written only for a project that has ``cellclass.json``
(opening a folder writes nothing into it) and never when nothing changed.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ProjectError
from .textfiles import MAX_CSV_BYTES, FileStamp, read_bytes_bounded, stamp_of

INDEX_FORMAT = "napari-cellclass/label-index"
INDEX_VERSION = 1
INDEX_PATH = ("cellclass_cache", "label_index.json")

def _entry(value: object) -> tuple[FileStamp, tuple[str, ...]] | None:
    """A checked ``[mtime_ns, ctime_ns, size, inode, [names]]`` entry, or None."""
    if not (isinstance(value, list) and len(value) == 5 and isinstance(value[4], list)):
        return None
    nums, names = value[:4], value[4]
    if not all(type(n) is int for n in nums) or not all(isinstance(n, str) for n in names):
        return None
    return (nums[0], nums[1], nums[2], nums[3]), tuple(names)


class LabelIndex:
    """The stored index of one project (read once at opening) and the one built while opening."""

    def __init__(self, root: Path, entries: dict[str, tuple[FileStamp, tuple[str, ...]]] | None = None) -> None:
        self.path = root.joinpath(*INDEX_PATH)
        self._old = entries or {}
        self._new: dict[str, tuple[FileStamp, tuple[str, ...]]] = {}
        self.hits = 0

    @classmethod
    def load(cls, root: Path) -> LabelIndex:
        """The index stored in ``root`` (empty when there is none or it cannot be used)."""
        index = cls(root)
        try:
            raw, _ = read_bytes_bounded(index.path, MAX_CSV_BYTES, "label index")
            data = json.loads(raw)
        except (FileNotFoundError, ProjectError, ValueError, RecursionError):
            return index
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or data.get("version") != INDEX_VERSION:
            return index
        files = data.get("files")
        if isinstance(files, dict):
            for rel, value in files.items():
                entry = _entry(value)
                if entry is not None:
                    index._old[rel] = entry
        return index

    def get(self, rel: str, st: os.stat_result) -> tuple[str, ...] | None:
        """The class names the label file ``rel`` held, when its stamp is still ``st``'s; else None."""
        entry = self._old.get(rel)
        if entry is None or entry[0] != stamp_of(st):
            return None
        self.hits += 1
        self._new[rel] = entry
        return entry[1]

    def put(self, rel: str, st: os.stat_result, names: tuple[str, ...]) -> None:
        """Remember what the label file ``rel`` (with stat ``st`` before it was read) holds."""
        self._new[rel] = (stamp_of(st), tuple(names))

    def save(self) -> None:
        """Write the index built while opening, when it differs from the stored one (best effort)."""
        if self._new == self._old:
            return
        files = {rel: [*st, list(names)] for rel, (st, names) in self._new.items()}
        text = json.dumps({"format": INDEX_FORMAT, "version": INDEX_VERSION, "files": files},
                          ensure_ascii=False, separators=(",", ":"))
        with contextlib.suppress(ProjectError, OSError):  # a cache: a read-only or full disk only costs speed
            atomic_write_text(self.path, text, fsync=False)
        self._old = dict(self._new)
