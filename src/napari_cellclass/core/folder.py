"""A folder of images: their ids, paths and pixels, and which files of the folder are the project's own."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import ImageReadError, ProjectError
from .images import ImageData, read_image
from .outputs import check_output_file
from .predictions import PREDICTIONS_NAME
from .project_index import ProjectIndex
from .scan import PROJECT_DIRS, scan_images
from .settings_file import CONFIG_NAME, LOCK_NAME
from .sidecars import LABEL_DIR
from .splits import SPLIT_NAME, read_split_file, split_from_folders


class ImageFolder:
    """The images below a folder (searched recursively; folder links not followed).

    Image ids are POSIX paths relative to the folder, naturally sorted; pixels are read only
    when asked for.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.image_ids: tuple[str, ...] = ()
        self._index: dict[str, int] = {}

    def _list_images(self, problems: list[str], index: ProjectIndex | None = None) -> None:
        """List the image files (a folder link that is skipped is noted in ``problems``)."""
        self.image_ids = tuple(scan_images(self.root, problems, index))
        self._index = {iid: i for i, iid in enumerate(self.image_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        """``image_id in project``: O(1) membership test for image ids."""
        return image_id in self._index

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

    @property
    def split_path(self) -> Path:
        return self.root / SPLIT_NAME

    def predefined_split(self) -> dict[str, str]:
        """``{image_id: 'train'|'val'|'test'}`` from ``cellclass_split.csv`` or train/val/test folders."""
        if self.split_path.exists():
            return {k: v for k, v in read_split_file(self.split_path).items() if k in self._index}
        return split_from_folders(self.image_ids)

    def check_output_path(self, path: str | os.PathLike) -> None:
        """Refuse (one line) an output file that would replace a file of this project.

        The settings file, the lock file, the split and predictions files, an image and
        anything inside a label folder (``cellclass_labels``), a model or cache folder are
        refused, also when ``path`` is a link to them.
        """
        given = check_output_file(path)  # any project's files, images, non-regular files
        what = self._own_file_kind(Path(os.path.realpath(given)))
        if what is not None:
            raise ProjectError(f"{given}: this is {what} of the project {self.root}; "
                               "choose another file to write")

    def _own_file_kind(self, real: Path) -> str | None:
        """What ``real`` (a resolved path) is to this project, or None when it is none of its files."""
        own = {self.root / CONFIG_NAME: "the settings file", self.root / LOCK_NAME: "the lock file",
               self.split_path: "the split file", self.root / PREDICTIONS_NAME: "the predictions file"}
        if real in own:
            return own[real]
        if LABEL_DIR in real.parts:
            return "inside a label folder"
        try:
            rel = real.relative_to(self.root)
        except ValueError:
            return None
        if rel.parts and rel.parts[0] in PROJECT_DIRS:
            return f"inside {rel.parts[0]}"
        return "an image" if rel.as_posix() in self._index else None

    def copy_image_in(self, src: Path, dest_id: str) -> str:
        """Copy an external image into the project (never overwriting) and register it."""
        dest = self.root / dest_id
        if dest.exists():
            raise ProjectError(f"{dest} already exists; not overwriting it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return dest_id
