"""The project model: listing, classes, label sidecars, undo, problems."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import ClassNameError, ProjectError
from napari_cellclass.core.project import Project
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_open_lists_images_recursively_in_natural_order(tmp_path):
    for name in ["b/img10.png", "b/img2.png", "a/x.tif.png", "top.jpg", ".hidden/h.png", "notes.txt"]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            _png(tmp_path / name)
    p = Project.open(tmp_path)
    assert p.image_ids == ("a/x.tif.png", "b/img2.png", "b/img10.png", "top.jpg")
    assert not (tmp_path / "cellclass.json").exists()  # opening writes nothing
    assert Project.open(tmp_path).image_ids == p.image_ids  # stable
    p.add_class("a")  # the first change writes the settings
    assert (tmp_path / "cellclass.json").exists()


def test_open_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ProjectError, match="does not exist"):
        Project.open(tmp_path / "nope")


def test_class_management_and_validation(tiny_folder):
    p = Project.open(tiny_folder)
    a = p.add_class("mitotic")
    b = p.add_class("interphase")
    assert a.color != b.color
    for bad, why in [("", "empty"), ("  ", "empty"), ("Mitotic", "already exists"), ("a/b", "not allowed"),
                     ("a\\b", "not allowed"), ("..", "not allowed")]:
        with pytest.raises(ClassNameError, match=why):
            p.add_class(bad)
    p.set_class_color("mitotic", "#123456")
    with pytest.raises(ClassNameError, match="not valid"):
        p.set_class_color("mitotic", "blue-ish")
    p.reorder_classes(["interphase", "mitotic"])
    again = Project.open(tiny_folder)
    assert again.class_names == ("interphase", "mitotic")
    assert again.class_color("mitotic") == "#123456"


def test_assign_writes_sidecar_with_names_version_and_time(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("x")
    iid = p.image_ids[0]
    p.assign(iid, "x")
    sc = sidecar_path(tiny_folder / iid)
    assert sc == tiny_folder / "a" / "cellclass_labels" / "img0.npz"
    with np.load(sc, allow_pickle=False) as z:
        assert list(z["classes"]) == ["x"]
        assert int(z["format_version"]) == 1
        assert str(z["image"]) == "img0.png"
        assert str(z["timestamp"]).startswith("20")
    assert Project.open(tiny_folder).labels(iid) == ("x",)


def test_rename_keeps_labels_and_rewrites_sidecars(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("old")
    p.assign(p.image_ids[:2], "old")
    p.rename_class("old", "new")
    assert read_sidecar(sidecar_path(tiny_folder / p.image_ids[0]))["classes"] == ("new",)
    q = Project.open(tiny_folder)
    assert q.counts() == {"new": 2}
    assert "old" not in q.class_names


def test_rename_interrupted_is_finished_on_open(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("old")
    p.assign(p.image_ids[0], "old")
    # simulate a crash after the settings were written but before the sidecars were rewritten
    cfg = json.loads((tiny_folder / "cellclass.json").read_text())
    cfg["classes"][0]["name"] = "new"
    cfg["pending_renames"] = {"old": "new"}
    (tiny_folder / "cellclass.json").write_text(json.dumps(cfg))
    q = Project.open(tiny_folder)
    assert q.labels(q.image_ids[0]) == ("new",)
    assert "pending_renames" not in json.loads((tiny_folder / "cellclass.json").read_text())


def test_remove_class_asks_for_force_and_unlabels(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("a")
    p.add_class("b")
    p.assign(p.image_ids[0], "a")
    with pytest.raises(ProjectError, match="labels 1 image"):
        p.remove_class("a")
    assert p.remove_class("a", force=True) == 1
    assert not sidecar_path(tiny_folder / p.image_ids[0]).exists()
    p.remove_class("b")  # unused: no force needed
    assert p.class_names == ()


def test_undo_restores_exact_previous_state(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("a")
    p.add_class("b")
    i0, i1 = p.image_ids[:2]
    p.assign(i0, "a")
    before = sidecar_path(tiny_folder / i0).read_bytes()
    p.assign([i0, i1], "b")  # one action over two images
    assert p.labels(i0) == ("b",) and p.labels(i1) == ("b",)
    assert p.undo() == [i0, i1]
    assert sidecar_path(tiny_folder / i0).read_bytes() == before  # byte for byte
    assert not sidecar_path(tiny_folder / i1).exists()  # did not exist before: deleted
    assert p.labels(i1) == ()
    assert p.undo() == [i0]
    assert not sidecar_path(tiny_folder / i0).exists()
    assert p.undo() == [] and not p.can_undo


def test_clear_and_counts(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("a")
    p.add_class("b")
    p.assign(p.image_ids[:3], "a")
    p.assign(p.image_ids[3], "b")
    assert p.counts() == {"a": 3, "b": 1}
    assert len(p.unlabelled_ids()) == 2
    p.clear(p.image_ids[:2])
    assert p.counts() == {"a": 1, "b": 1}
    assert p.assign(p.image_ids[2], "a") == []  # no change, no write, no undo step


def test_multi_label_toggle_and_single_label_refusal(tiny_folder):
    p = Project.open(tiny_folder, multi_label=True)
    for n in ("nucleoli", "cytosol", "mito"):
        p.add_class(n)
    i0, i1 = p.image_ids[:2]
    p.toggle(i0, "mito")
    p.toggle(i0, "nucleoli")
    assert p.labels(i0) == ("nucleoli", "mito")  # class order, not click order
    p.toggle([i0, i1], "mito")  # i1 lacks it: both get it
    assert p.labels(i1) == ("mito",) and p.labels(i0) == ("nucleoli", "mito")
    p.toggle([i0, i1], "mito")  # both have it: removed from both
    assert p.labels(i0) == ("nucleoli",) and p.labels(i1) == ()
    p.assign(i0, "cytosol")
    assert Project.open(tiny_folder).labels(i0) == ("nucleoli", "cytosol")
    with pytest.raises(ProjectError, match="several classes"):
        p.set_multi_label(False)
    other = tiny_folder.parent / "other"  # a project of its own, outside the first one
    shutil.copytree(tiny_folder / "b", other, ignore=shutil.ignore_patterns("cellclass_*"))
    single = Project.open(other, multi_label=False)
    single.add_class("x")
    single.add_class("y")
    with pytest.raises(ProjectError, match="single-label"):
        single.set_labels(single.image_ids[0], ["x", "y"])


def test_same_stem_in_one_folder_is_an_error_naming_both(tmp_path):
    _png(tmp_path / "cell.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cell.tif")
    _png(tmp_path / "other.png")
    p = Project.open(tmp_path)
    p.add_class("a")
    assert any("cell.png" in x and "cell.tif" in x for x in p.problems)
    with pytest.raises(ProjectError) as info:
        p.assign("cell.tif", "a")
    assert "cell.png" in str(info.value) and "cell.tif" in str(info.value)
    p.assign("other.png", "a")  # the rest works


def test_corrupt_sidecar_is_reported_and_moved_aside(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("a")
    p.assign(p.image_ids[:2], "a")
    bad = sidecar_path(tiny_folder / p.image_ids[0])
    bad.write_bytes(b"garbage, not a zip")
    q = Project.open(tiny_folder)
    assert q.labels(q.image_ids[0]) == ()
    assert q.labels(q.image_ids[1]) == ("a",)
    assert not bad.exists()
    aside = list(bad.parent.glob("img0.npz.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage, not a zip"  # kept, never deleted
    assert any("corrupt" in x for x in q.problems)


def test_unknown_class_in_sidecar_is_added_not_lost(tiny_folder):
    from napari_cellclass.core.sidecars import write_sidecar

    p = Project.open(tiny_folder)
    write_sidecar(sidecar_path(tiny_folder / p.image_ids[0]), "img0.png", ("stray",))
    q = Project.open(tiny_folder)
    assert "stray" in q.class_names and q.labels(q.image_ids[0]) == ("stray",)


def test_read_only_folder_gives_clear_error_at_first_write(tiny_folder, monkeypatch):
    p = Project.open(tiny_folder)
    p.add_class("a")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("napari_cellclass.core.atomic._open_temp", deny)
    other = tiny_folder.parent / "other"
    shutil.copytree(tiny_folder / "b", other)
    fresh = Project.open(other)  # a new project in a read-only folder still opens
    assert len(fresh.image_ids) == 3 and not (other / "cellclass.json").exists()
    with pytest.raises(ProjectError, match="writable"):
        fresh.add_class("x")
    assert fresh.class_names == ()  # a failed write changes nothing in memory
    with pytest.raises(ProjectError) as info:
        p.assign(p.image_ids[0], "a")
    msg = str(info.value)
    assert "cellclass_labels" in msg and "writable" in msg and "\n" not in msg
    assert p.labels(p.image_ids[0]) == ()  # memory matches disk


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_real_permissions(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("a")
    os.chmod(tiny_folder / "a", 0o555)
    try:
        with pytest.raises(ProjectError, match="writable"):
            p.assign(p.image_ids[0], "a")
    finally:
        os.chmod(tiny_folder / "a", 0o755)


def test_foreign_settings_file_is_refused(tmp_path):
    (tmp_path / "cellclass.json").write_text('{"something": "else"}')
    with pytest.raises(ProjectError, match="not a napari-cellclass project"):
        Project.open(tmp_path)
    (tmp_path / "cellclass.json").write_text("{broken")
    with pytest.raises(ProjectError, match="unreadable"):
        Project.open(tmp_path)


def test_check_images_reports_unreadable_and_rest_works(tiny_folder):
    (tiny_folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tiny_folder / "a" / "empty.tif").write_bytes(b"")
    p = Project.open(tiny_folder)
    bad = p.check_images()
    assert set(bad) == {"a/broken.png", "a/empty.tif"}
    assert "empty" in bad["a/empty.tif"]
    p.add_class("a")
    p.assign("a/img1.png", "a")
    assert p.read_image("a/img1.png").pixels.shape == (1, 32, 32)


def test_listener_sees_changes(tiny_folder):
    p = Project.open(tiny_folder)
    p.add_class("a")
    seen = []
    p.add_listener(seen.append)
    p.assign(p.image_ids[:2], "a")
    p.undo()
    assert seen == [tuple(p.image_ids[:2]), tuple(p.image_ids[:2])]


@pytest.mark.parametrize("arr", [np.array(["a", "bb"]), np.zeros(0, "<U1"), np.array(3, np.int32),
                                 np.array("text"), np.arange(5.0), np.zeros((2, 2))])
def test_fast_npy_reader_matches_numpy(arr):
    import io

    from napari_cellclass.core.sidecars import _read_npy

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    got = _read_npy(buf.getvalue())
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


def test_newer_format_sidecar_is_kept_and_never_overwritten(tiny_folder, monkeypatch):
    import napari_cellclass.core.sidecars as sc_mod

    p = Project.open(tiny_folder)
    p.add_class("a")
    p.add_class("b")
    p.assign(p.image_ids[:2], "a")
    newer = sidecar_path(tiny_folder / p.image_ids[0])
    monkeypatch.setattr(sc_mod, "SIDECAR_VERSION", 2)
    sc_mod.write_sidecar(newer, "img0.png", ("a",))  # written by a "newer" version
    monkeypatch.setattr(sc_mod, "SIDECAR_VERSION", 1)
    before = newer.read_bytes()
    q = Project.open(tiny_folder)
    assert newer.exists() and newer.read_bytes() == before  # not moved aside, not changed
    assert any("newer" in x and "kept" in x for x in q.problems)
    with pytest.raises(ProjectError, match="newer"):
        q.assign(q.image_ids[0], "b")
    assert newer.read_bytes() == before
    assert q.labels(q.image_ids[1]) == ("a",)  # the others work


def test_membership_is_by_id(tiny_folder):
    p = Project.open(tiny_folder)
    assert p.image_ids[0] in p and "nope.png" not in p
