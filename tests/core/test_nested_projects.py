"""A folder that holds other projects: they are skipped (never listed, read or changed), reported once."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

from napari_cellclass.core import looks_like_project
from napari_cellclass.core.project import Project
from napari_cellclass.core.scan import scan_images
from napari_cellclass.core.sidecars import sidecar_path


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[p.relative_to(folder).as_posix()] = (p.read_bytes() if p.is_file() else b"", st.st_mtime_ns)
    return out


def _inner_project(folder: Path) -> None:
    for i in range(3):
        _png(folder / f"cell{i}.png", i)
    p = Project.open(folder)
    p.add_classes(["mitotic", "interphase"])
    p.assign("cell0.png", "mitotic")
    sidecar_path(folder / "cell1.png").write_bytes(b"not a zip")  # a corrupt sidecar of the inner project


def test_opening_a_parent_folder_skips_the_projects_inside_it(tmp_path):
    parent = tmp_path / "parent"
    _png(parent / "own.png")
    _png(parent / "plain" / "also_own.png")
    _inner_project(parent / "sub")
    _inner_project(parent / "deeper" / "inner")
    before = _snapshot(parent / "sub"), _snapshot(parent / "deeper")
    p = Project.open(parent)
    assert p.image_ids == ("own.png", "plain/also_own.png")
    assert p.class_names == ()
    skipped = [x for x in p.problems if "skipped the project" in x]
    assert skipped == ["skipped the project 'deeper/inner' inside this folder; open it on its own",
                       "skipped the project 'sub' inside this folder; open it on its own"]
    assert (_snapshot(parent / "sub"), _snapshot(parent / "deeper")) == before  # nothing moved, read or written
    p.add_class("x")
    p.assign("own.png", "x")
    assert (_snapshot(parent / "sub"), _snapshot(parent / "deeper")) == before
    inner = Project.open(parent / "sub")  # the inner project on its own is unchanged
    assert inner.class_names == ("mitotic", "interphase") and inner.labels("cell0.png") == ("mitotic",)


def test_scan_reports_each_nested_project_once(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.png")
    (tmp_path / "sub" / "cellclass.json").write_text("{}")
    skipped: list[str] = []
    assert scan_images(tmp_path, skipped) == ["a.png"]
    assert skipped == ["skipped the project 'sub' inside this folder; open it on its own"]
    assert scan_images(tmp_path / "sub") == ["b.png"]  # the project itself is listed when opened on its own


def test_opening_writes_nothing_into_the_folder(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "x" / "b.png")
    before = _snapshot(tmp_path)
    p = Project.open(tmp_path)
    p.summary()
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------ the napari reader's check
def test_looks_like_project_refuses_home_root_and_temp(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _png(home / "Pictures" / "x.tif")
    _png(home / "y.png")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    assert not looks_like_project(home)
    assert not looks_like_project(str(home) + "/")
    (home / "cellclass.json").write_text("{}")
    assert looks_like_project(home)  # a home folder that is a project is one

    tmp = tmp_path / "tmp"
    _png(tmp / "z.png")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert not looks_like_project(tmp)
    assert looks_like_project(tmp_path / "home" / "Pictures")  # folders below them still count
    assert not looks_like_project("/")
    assert not looks_like_project(tempfile.gettempdir())


def test_looks_like_project_depth(tmp_path):
    _png(tmp_path / "one" / "a.png")
    assert looks_like_project(tmp_path)
    _png(tmp_path / "two" / "levels" / "b.png")
    assert looks_like_project(tmp_path / "two")
    screen = tmp_path / "screen"
    _png(screen / "plate1" / "A01" / "field1.png")
    assert looks_like_project(screen)  # plate / well / field
    deep = tmp_path / "deep"
    _png(deep / "l1" / "l2" / "l3" / "l4" / "c.png")
    assert not looks_like_project(deep)  # images four levels down are not claimed


def test_a_subfolder_of_a_project_is_not_opened_as_a_project_of_its_own(tmp_path):
    """Labelling there would write cellclass.json and hide the folder's images from the project."""
    import pytest

    from napari_cellclass.core.errors import ProjectError
    from napari_cellclass.core.scan import enclosing_project

    outer = tmp_path / "screen"
    for i in range(2):
        _png(outer / "plate1" / f"a{i}.png", i)
    _inner_project(outer / "own")  # a project of its own, made before the folder around it
    p = Project.open(outer)
    p.add_class("mitotic")
    p.assign("plate1/a0.png", "mitotic")
    assert enclosing_project(outer / "plate1") == outer.resolve()
    assert enclosing_project(outer) is None and enclosing_project(tmp_path) is None
    assert enclosing_project(outer / "plate1" / "cellclass_labels") is None  # never listed by the project
    stray = Path(tempfile.gettempdir()).resolve() / "cellclass.json"
    real_lexists = os.path.lexists
    with mock.patch("os.path.lexists", lambda p: str(p) == str(stray) or real_lexists(p)):
        assert enclosing_project(outer / "plate1") == outer.resolve()
        assert enclosing_project(tmp_path / "elsewhere") is None  # a stray file in the temp folder captures nothing
    with pytest.raises(ProjectError, match="part of the project") as info:
        Project.open(outer / "plate1")
    assert str(outer.resolve()) in str(info.value) and "\n" not in str(info.value)
    assert not (outer / "plate1" / "cellclass.json").exists()
    assert Project.open(outer).image_ids == ("plate1/a0.png", "plate1/a1.png")
    assert Project.open(outer / "own").labels("cell0.png") == ("mitotic",)
