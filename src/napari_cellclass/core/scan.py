"""Finding image files below a project folder, without reading pixels.

Folder symlinks are never followed (a link to ``/`` or a loop back up would list the same
images many times or never end); they are reported instead. A subfolder that is a project of
its own (it holds ``cellclass.json``) is not entered either: its images, label files and
classes belong to it, so opening a parent folder never lists, reads or changes them. Only
regular files (or links to regular files) count as images, so a FIFO named ``x.png`` cannot
hang a read.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .images import IMAGE_SUFFIXES
from .model_folder import WEIGHTS_NAME
from .project_index import Listing, ProjectIndex
from .settings_file import CONFIG_NAME
from .sidecars import LABEL_DIR

#: folders of a project that hold its models, caches and model exports (never images)
PROJECT_DIRS = ("cellclass_models", "cellclass_cache", "cellclass_exports")
# folders that never hold project images
SKIP_DIRS = frozenset({LABEL_DIR, *PROJECT_DIRS, "__pycache__", "__MACOSX"})
_NUM = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10``; total order, stable across runs."""
    parts = _NUM.split(text.casefold())
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts) + ((2, 0, text),)


def _is_dir_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def scan_images(root: Path, skipped: list[str] | None = None, index: ProjectIndex | None = None) -> list[str]:
    """Relative POSIX paths of all image files below ``root``, naturally sorted.

    Hidden files and folders, label folders and model folders are skipped. Symlinked folders
    and subfolders that are projects of their own (holding ``cellclass.json``) are not entered;
    when ``skipped`` is given, one line per such folder is appended to it. With an ``index``, a
    folder unchanged since it was last listed is not listed again, and the order is reused when
    no folder changed.
    """
    found: list[str] = []
    links: list[tuple[str, str]] = []  # (id, real path) of image files that are symlinks
    notes: list[str] = []
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        listing = index.listing(prefix, st) if index is not None else None
        if listing is None:
            listing = _list_folder(folder, prefix, links, notes, skipped is not None)
            if listing is None:
                continue
            if index is not None:
                index.put_listing(prefix, st, listing[0], cacheable=not listing[1])
            listing = listing[0]
        if prefix and listing.kind:
            if listing.kind == "project":
                notes.append(f"skipped the project '{prefix[:-1]}' inside this folder; open it on its own")
            continue
        found.extend(prefix + name for name in listing.images)
        stack.extend((os.path.join(folder, name), f"{prefix}{name}/") for name in listing.subfolders)
    if links:
        found = _without_second_names(Path(root), found, links, notes)
    order = index.sorted_ids() if index is not None else None
    if order is None or len(order) != len(found):
        found.sort(key=natural_key)
        if index is not None:
            index.put_order(tuple(found))
    else:
        found = list(order)
    if skipped is not None:
        skipped.extend(sorted(notes, key=natural_key))
    return found


def _list_folder(folder: str, prefix: str, links: list[tuple[str, str]], notes: list[str],
                 note_links: bool) -> tuple[Listing, bool] | None:
    """One folder's listing and whether it holds links (then it is never cached); None when unreadable."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    names = {e.name for e in entries}
    kind = "project" if CONFIG_NAME in names else "model" if WEIGHTS_NAME in names else ""
    images: list[str] = []
    subs: list[str] = []
    has_links = False
    for e in entries:
        name = e.name
        if name.startswith("."):
            continue
        try:
            is_dir = e.is_dir(follow_symlinks=False)
            is_file = not is_dir and e.is_file(follow_symlinks=True)
            is_link = e.is_symlink()
        except OSError:
            continue
        has_links = has_links or is_link
        if is_dir:
            if name not in SKIP_DIRS:
                subs.append(name)
        elif is_file:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                images.append(name)
                if is_link:
                    links.append((prefix + name, os.path.realpath(e.path)))
        elif note_links and name not in SKIP_DIRS and _is_dir_link(e):
            notes.append(f"skipped symlinked folder '{prefix}{name}' (links to folders are not "
                         "followed; move or copy the images into the project to include them)")
    return Listing(kind, tuple(images), tuple(subs)), has_links


def enclosing_project(folder: str | os.PathLike) -> Path | None:
    """The project that lists ``folder``'s images as its own, when ``folder`` is not a project itself.

    That is the nearest parent folder holding ``cellclass.json``, unless the way down from it
    passes a hidden, label, model or cache folder (which a project never lists), or it is a
    filesystem root, the home or the temporary folder (a stray ``cellclass.json`` there must not
    capture every folder below). Opening such a folder as a project of its own would hide its
    images from the enclosing project.
    """
    real = Path(folder).expanduser().resolve()
    if os.path.lexists(real / CONFIG_NAME):
        return None
    child = real
    for parent in real.parents:
        if child.name.startswith(".") or child.name in SKIP_DIRS:
            return None
        if os.path.lexists(parent / CONFIG_NAME):
            return None if _is_too_wide(parent) else parent
        child = parent
    return None


def _without_second_names(root: Path, found: list[str], links: list[tuple[str, str]],
                          notes: list[str]) -> list[str]:
    """``found`` without links to an image already listed (one file, one label).

    A link to a file outside the project stays (a project of links to a read-only share is
    common); a link to an image of the project, or to the same file as an earlier link, is left
    out and reported.
    """
    link_ids = {iid for iid, _ in links}
    real_root = os.path.realpath(root)  # no folder on the way is a link: the other files' real paths are plain joins
    owner = {os.path.join(real_root, *iid.split("/")): iid for iid in found if iid not in link_ids}
    drop = set()
    for iid, real in sorted(links, key=lambda x: natural_key(x[0])):
        first = owner.setdefault(real, iid)
        if first != iid:
            drop.add(iid)
            notes.append(f"left out '{iid}': a link to the same file as '{first}' (one file, one label)")
    return [iid for iid in found if iid not in drop]


def _is_too_wide(root: Path) -> bool:
    """True for a folder no one means as a project: a filesystem root, the home or the temp folder."""
    try:
        real = root.resolve()
        wide = {Path(real.anchor), Path.home().resolve(), Path(tempfile.gettempdir()).resolve(),
                Path("/tmp").resolve()}
    except (OSError, RuntimeError):
        return True
    return real in wide


def looks_like_project(folder: str | os.PathLike, *, depth: int = 4, max_entries: int = 5000) -> bool:
    """True when ``folder`` holds ``cellclass.json`` or image files within ``depth`` levels.

    ``depth=4`` looks at the folder and three levels of subfolders (a screen's
    ``plate/well/field`` layout), breadth first. A cheap, bounded check for
    readers that must not claim every folder: at most ``max_entries`` directory entries are
    looked at, hidden and cellclass folders are skipped and symlinked folders are not followed.
    A filesystem root, the home folder and the temporary folder are claimed only when they
    hold ``cellclass.json``.
    """
    root = Path(folder).expanduser()
    try:
        if not root.is_dir():
            return False
        if (root / CONFIG_NAME).is_file():
            return True
    except OSError:
        return False
    if _is_too_wide(root):
        return False
    seen = 0
    level = [root]
    for _ in range(max(depth, 1)):
        below: list[Path] = []
        for d in level:
            try:
                it = os.scandir(d)
            except OSError:
                continue
            with it:
                for e in it:
                    seen += 1
                    if seen > max_entries:
                        return False
                    if e.name.startswith("."):
                        continue
                    try:
                        if e.is_dir(follow_symlinks=False):
                            if e.name not in SKIP_DIRS:
                                below.append(Path(e.path))
                        elif (os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                              and e.is_file(follow_symlinks=True)):
                            return True
                    except OSError:
                        continue
        level = below
    return False
