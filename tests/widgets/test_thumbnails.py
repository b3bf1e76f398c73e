"""Thumbnails (Qt-free): the canvas's colours, cached in the project, remade when the image changes."""
from __future__ import annotations

import os

import numpy as np
import tifffile

from napari_cellclass._widgets.layers import short_names
from napari_cellclass._widgets.thumbnails import ThumbnailStore, thumbnail_rgb
from napari_cellclass.core.images import read_image
from napari_cellclass.core.project import Project


def _two_channel(path, blue: int, green: int) -> None:
    data = np.zeros((2, 64, 96), np.uint16)
    data[0, :, :48] = blue
    data[1, :, 48:] = green
    data[:, 0, 0] = 1  # a range for the percentile contrast
    tifffile.imwrite(path, data, metadata={"axes": "CYX"})


def test_a_thumbnail_is_the_composite_shrunk_keeping_the_aspect(tmp_path):
    _two_channel(tmp_path / "a.tif", 3000, 3000)
    rgb = thumbnail_rgb(read_image(tmp_path / "a.tif"), 48)
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    left, right = rgb[16, 5], rgb[16, 42]
    assert left[2] > 200 and left[1] < 50  # the first channel is blue
    assert right[1] > 200 and right[2] < 50  # the second is green, as on the canvas


def test_thumbnails_are_cached_in_a_project_and_remade_when_the_image_changes(tmp_path):
    _two_channel(tmp_path / "a.tif", 3000, 3000)
    project = Project.open(tmp_path)
    project.add_class("x")
    store = ThumbnailStore(project, 48)
    first = store.get("a.tif")
    cached = list((tmp_path / "cellclass_cache" / "thumbnails").rglob("*.png"))
    assert len(cached) == 1
    assert np.array_equal(ThumbnailStore(project, 48).get("a.tif"), first)  # read back from disk
    _two_channel(tmp_path / "a.tif", 0, 3000)  # the blue half goes dark
    st = os.stat(tmp_path / "a.tif")
    os.utime(tmp_path / "a.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = store.get("a.tif")
    assert second[16, 5, 2] < 50 and not np.array_equal(first, second)


def test_a_folder_only_opened_gets_no_thumbnail_files_and_unreadable_images_none(tmp_path):
    _two_channel(tmp_path / "a.tif", 3000, 3000)
    (tmp_path / "b.tif").write_bytes(b"not a tiff")
    store = ThumbnailStore(Project.open(tmp_path), 48)
    assert store.get("a.tif") is not None and store.get("b.tif") is None
    assert not (tmp_path / "cellclass_cache").exists()


def test_layer_names_show_what_tells_images_apart():
    assert short_names(["images/u2os_0002.tif", "images/u2os_0003.tif"]) == {
        "images/u2os_0002.tif": "u2os_0002", "images/u2os_0003.tif": "u2os_0003"}
    names = short_names(["plate1/A01/f1.tif", "plate1/A02/f1.tif"])
    assert names == {"plate1/A01/f1.tif": "A01/f1", "plate1/A02/f1.tif": "A02/f1"}
    assert short_names(["a.b.png"]) == {"a.b.png": "a.b"}
