"""Files a user names for us to write (a CSV, a settings file): never one a project depends on.

Every writer of a user-chosen file (label and prediction exports, ``predict --csv``, saved
training settings, evaluation exports) calls :func:`check_output_file` first. It refuses, with
one line naming the file, a path (or a link to one) that is a project's settings, lock, split or
predictions file, anything inside a label, model or cache folder, an existing image, label
sidecar or weights file, or anything that is not a regular file. Images this program wrote
(figures, saliency maps: their ``Software`` tag is :data:`SOFTWARE`) may be written again.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ProjectError
from .images import IMAGE_SUFFIXES

#: Files a project folder owns at its top.
PROJECT_FILES = {"cellclass.json": "the settings file", ".cellclass.lock": "the lock file",
                 "cellclass_split.csv": "the split file", "cellclass_predictions.csv": "the predictions file"}
#: Folders whose whole content belongs to the project.
PROJECT_FOLDERS = ("cellclass_labels", "cellclass_models", "cellclass_cache")
#: Suffixes of files an overwrite would destroy: images, label sidecars, weights.
PRECIOUS_SUFFIXES = IMAGE_SUFFIXES | {".npz", ".safetensors", ".pth", ".pt", ".ckpt"}
#: The ``Software`` tag (PNG text, TIFF tag) of the images this program writes.
SOFTWARE = "napari-cellclass"


def check_output_file(path: str | os.PathLike) -> Path:
    """The path to write, or a :class:`ProjectError` when writing it would damage a project.

    Links are followed to the file they name (that is what a write replaces).
    """
    given = Path(path).expanduser()
    real = Path(os.path.realpath(given))
    what = _what_it_is(real)
    if what is not None:
        raise ProjectError(f"{given}: this is {what}; choose another file to write")
    return given


def _what_it_is(real: Path) -> str | None:
    """Why ``real`` must not be written, or None."""
    try:
        st = os.stat(real)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        return "not a regular file (a folder, a pipe or a device)"
    for folder in PROJECT_FOLDERS:
        if folder in real.parts[:-1]:
            return f"inside a project's {folder} folder"
    if real.name in PROJECT_FILES and (real.parent / "cellclass.json").is_file():
        return f"{PROJECT_FILES[real.name]} of the project {real.parent}"
    if st is not None and real.suffix.lower() in PRECIOUS_SUFFIXES and not written_here(real):
        return "an existing image, label or weights file"
    if real.name == "config.json" and (real.parent / "model.safetensors").exists():
        return f"the settings of the model {real.parent}"
    return None


#: The extra file that marks a TorchScript archive exported by this program.
TORCHSCRIPT_MARK = "extra/napari-cellclass.json"


def written_here(path: Path) -> bool:
    """True for a PNG or TIFF image whose ``Software`` tag says this program wrote it, or a TorchScript
    archive it exported (a zip holding its marker; nothing in it is loaded)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt":
            import zipfile

            with zipfile.ZipFile(path) as z:
                return any(n.endswith("/" + TORCHSCRIPT_MARK) or n == TORCHSCRIPT_MARK for n in z.namelist())
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return getattr(im, "text", {}).get("Software") == SOFTWARE
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                tag = tf.pages[0].tags.get("Software")
                return tag is not None and tag.value == SOFTWARE
    except Exception:  # noqa: BLE001 - an unreadable file is not ours
        return False
    return False


def check_figure_folder(out: str | os.PathLike, project_root: str | os.PathLike | None, flag: str = "--out",
                     what: str = "the figures", suffix: str = "out") -> Path:
    """A folder (made later) for files that include images: never inside the project, where they
    would become images of it; :class:`ProjectError` naming ``flag`` and a folder beside it otherwise."""
    folder = Path(out).expanduser()
    real = Path(os.path.realpath(folder))
    if real.exists() and not real.is_dir():
        raise ProjectError(f"{flag} {folder}: is a file, not a folder; choose a folder for {what}")
    if project_root is not None:
        root = Path(os.path.realpath(project_root))
        if real == root or root in real.parents:
            raise ProjectError(f"{flag} {folder}: is inside the project {root}, so {what} would become images of "
                               f"the project; choose a folder outside it (e.g. {root.name}_{suffix} beside it)")
    check_output_file(folder / "figure.png")  # refuses a project's label, model and cache folders
    return folder
