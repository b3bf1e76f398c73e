"""Odd, hostile or foreign files in a project never poison it, crash or hang an open."""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import ProjectError, SidecarCorruptError
from napari_cellclass.core.project import Project
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path, write_sidecar


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _project(tmp_path, n=3):
    for i in range(n):
        _png(tmp_path / f"img{i}.png", i)
    p = Project.open(tmp_path)
    p.add_class("negative control")
    p.add_class("positive control")
    p.assign("img1.png", "negative control")
    return p


# ------------------------------------------------------------------ D1 odd class names
@pytest.mark.parametrize("bad", ["a/b", "..", "", "   ", "x" * 500, "two\nlines", "nul\x00byte", "back\\slash"])
def test_sidecar_with_odd_class_name_is_reported_and_locked(tmp_path, bad):
    p = _project(tmp_path)
    sc = sidecar_path(tmp_path / "img0.png")
    write_sidecar(sc, "img0.png", (bad,))
    before = sc.read_bytes()
    q = Project.open(tmp_path)
    assert q.class_names == ("negative control", "positive control")
    assert q.labels("img0.png") == () and q.labels("img1.png") == ("negative control",)
    assert any("img0" in x and ("not allowed" in x or "empty" in x or "longer" in x) for x in q.problems)
    with pytest.raises(ProjectError, match="img0.png"):
        q.assign("img0.png", "positive control")
    assert sc.read_bytes() == before  # protected, never overwritten
    q.add_class("mitotic")  # the project keeps working and cellclass.json stays valid
    r = Project.open(tmp_path)
    assert r.class_names == ("negative control", "positive control", "mitotic")
    assert p.root == r.root


def test_bad_pending_rename_does_not_poison_the_project(tmp_path):
    _project(tmp_path)
    cfg_path = tmp_path / "cellclass.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pending_renames"] = {"negative control": "a/b", "x": 5}
    cfg_path.write_text(json.dumps(cfg))
    q = Project.open(tmp_path)
    assert q.class_names == ("negative control", "positive control")
    assert q.labels("img1.png") == ("negative control",)
    assert any("pending" in x for x in q.problems)
    q.add_class("m")
    assert Project.open(tmp_path).class_names == ("negative control", "positive control", "m")


def test_pending_rename_leaves_no_ghost_class(tmp_path):
    p = _project(tmp_path)
    p.assign("img0.png", "positive control")
    cfg_path = tmp_path / "cellclass.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["classes"][0]["name"] = "negative"  # crash after the settings, before the sidecars
    cfg["pending_renames"] = {"negative control": "negative"}
    cfg_path.write_text(json.dumps(cfg))
    q = Project.open(tmp_path)
    assert q.class_names == ("negative", "positive control")
    assert q.labels("img1.png") == ("negative",)
    assert read_sidecar(sidecar_path(tmp_path / "img1.png"))["classes"] == ("negative",)
    assert Project.open(tmp_path).class_names == ("negative", "positive control")


# ------------------------------------------------------------------ D9 names normalised
def test_sidecar_name_with_spaces_or_case_maps_to_the_existing_class(tmp_path):
    _project(tmp_path)
    write_sidecar(sidecar_path(tmp_path / "img0.png"), "img0.png", ("  negative control  ",))
    write_sidecar(sidecar_path(tmp_path / "img2.png"), "img2.png", ("Positive Control",))
    for _ in range(4):
        q = Project.open(tmp_path)
        q.update_settings(seen=True)
    assert q.class_names == ("negative control", "positive control")
    assert q.labels("img0.png") == ("negative control",) and q.labels("img2.png") == ("positive control",)
    assert q.counts() == {"negative control": 2, "positive control": 1}


def test_duplicate_names_in_cellclass_json_are_merged(tmp_path):
    _project(tmp_path)
    cfg_path = tmp_path / "cellclass.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["classes"].append({"name": " Negative Control ", "color": "#123456"})
    cfg_path.write_text(json.dumps(cfg))
    q = Project.open(tmp_path)
    assert q.class_names == ("negative control", "positive control")
    assert any("duplicate" in x for x in q.problems)
    q.add_class("m")
    assert [c["name"] for c in json.loads(cfg_path.read_text())["classes"]] == [
        "negative control", "positive control", "m"]


def test_single_label_project_locks_a_sidecar_with_two_classes(tmp_path):
    _project(tmp_path)
    sc = sidecar_path(tmp_path / "img0.png")
    write_sidecar(sc, "img0.png", ("negative control", "positive control"))
    q = Project.open(tmp_path)
    assert not q.multi_label and q.labels("img0.png") == ()
    assert any("img0" in x and "2 classes" in x for x in q.problems)
    with pytest.raises(ProjectError, match="img0.png"):
        q.assign("img0.png", "negative control")
    assert read_sidecar(sc)["classes"] == ("negative control", "positive control")
    assert not json.loads((tmp_path / "cellclass.json").read_text())["multi_label"]


# ------------------------------------------------------------------ D5 hostile sidecars
def _npz(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _huge_header(descr="<U16", shape=(65536, 65536)) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@pytest.mark.parametrize("classes_npy", [_huge_header(), _huge_header("<U16", (2 ** 40,)),
                                         _huge_header("<f8", (2 ** 20, 2 ** 20)),
                                         _huge_header("|O", (3,))])
def test_tiny_sidecar_claiming_a_huge_array_is_refused(tmp_path, classes_npy):
    sc = tmp_path / "x.npz"
    sc.write_bytes(_npz({"format_version.npy": _npy(np.array(1, np.int32)), "classes.npy": classes_npy}))
    assert sc.stat().st_size < 2000
    with pytest.raises(SidecarCorruptError):
        read_sidecar(sc)


def test_zip_bomb_sidecar_is_refused_without_inflating_it(tmp_path):
    sc = tmp_path / "bomb.npz"
    bomb = _huge_header("<U1", (500_000_000,)) + b"\x00" * (200 * 2 ** 20)
    sc.write_bytes(_npz({"format_version.npy": _npy(np.array(1, np.int32)), "classes.npy": bomb},
                        zipfile.ZIP_DEFLATED))
    assert sc.stat().st_size < 2 ** 20
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(SidecarCorruptError):
        read_sidecar(sc)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2 ** 20


def test_oversized_sidecar_file_is_refused(tmp_path):
    sc = tmp_path / "big.npz"
    sc.write_bytes(b"PK" + b"\x00" * (20 * 2 ** 20))
    with pytest.raises(SidecarCorruptError, match="too large"):
        read_sidecar(sc)


def test_hostile_sidecars_are_moved_aside_and_the_open_goes_on(tmp_path):
    _project(tmp_path, n=4)
    label_dir = tmp_path / "cellclass_labels"
    (label_dir / "img0.npz").write_bytes(_npz({"format_version.npy": _npy(np.array(1, np.int32)),
                                               "classes.npy": _huge_header()}))
    os.mkfifo(label_dir / "img2.npz")
    (label_dir / "img3.npz").mkdir()
    q = Project.open(tmp_path)  # must neither hang nor crash
    assert q.labels("img1.png") == ("negative control",)
    assert q.labels("img0.png") == () and q.labels("img2.png") == ()
    assert sum("moved aside" in x for x in q.problems) == 3
    assert not (label_dir / "img0.npz").exists() and not (label_dir / "img2.npz").exists()
    assert list(label_dir.glob("img0.npz.corrupt-*")) and list(label_dir.glob("img2.npz.corrupt-*"))
    q.assign("img0.png", "positive control")  # the image can be labelled afresh
    assert Project.open(tmp_path).labels("img0.png") == ("positive control",)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_sidecar_of_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "x.npz")
    with pytest.raises(SidecarCorruptError, match="not a regular file"):
        read_sidecar(tmp_path / "x.npz")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_like_an_image_is_not_listed(tmp_path):
    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    assert Project.open(tmp_path).image_ids == ("a.png",)


# ------------------------------------------------------------------ D6 symlinked folders
def test_symlink_to_root_is_not_followed(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "everything").symlink_to("/")
    p = Project.open(tmp_path)
    assert p.image_ids == ("a.png",)
    assert any("everything" in x and "symlink" in x for x in p.problems)


def test_symlink_loop_does_not_multiply_ids(tmp_path):
    _png(tmp_path / "loop" / "a.png")
    (tmp_path / "loop" / "back").symlink_to("..")
    (tmp_path / "self").symlink_to(tmp_path)
    p = Project.open(tmp_path)
    assert p.image_ids == ("loop/a.png",)
    assert sum("symlink" in x for x in p.problems) == 2


def test_links_to_the_same_image_file_are_one_image(tmp_path):
    _png(tmp_path / "a.png")
    outside = tmp_path.parent / f"{tmp_path.name}-share"
    _png(outside / "raw.png")
    (tmp_path / "dup.png").symlink_to("a.png")
    (tmp_path / "linked_a.png").symlink_to(outside / "raw.png")  # a project of links to a share: kept
    (tmp_path / "linked_b.png").symlink_to(outside / "raw.png")
    p = Project.open(tmp_path)
    assert p.image_ids == ("a.png", "linked_a.png")
    assert any("'dup.png'" in x and "'a.png'" in x for x in p.problems)
    assert any("'linked_b.png'" in x and "'linked_a.png'" in x for x in p.problems)


def test_looks_like_project(tmp_path):
    from napari_cellclass.core import looks_like_project

    assert not looks_like_project(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert not looks_like_project(tmp_path)
    (tmp_path / "deep" / "er" / "still" / "more").mkdir(parents=True)
    _png(tmp_path / "deep" / "er" / "still" / "more" / "far.png")
    assert not looks_like_project(tmp_path)  # bounded depth
    _png(tmp_path / "sub" / "x.png")
    assert looks_like_project(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "link").symlink_to(tmp_path / "sub")
    assert not looks_like_project(other)  # links are not followed
    (other / "cellclass.json").write_text("{}")
    assert looks_like_project(other)
    assert not looks_like_project(tmp_path / "notes.txt") and not looks_like_project(tmp_path / "nope")


def test_label_link_out_of_the_project_is_not_written_through(tmp_path):
    proj = tmp_path / "proj"
    _project(proj)
    outside = tmp_path / "outside.npz"
    write_sidecar(outside, "img2.png", ("negative control",))
    precious = outside.read_bytes()
    (proj / "cellclass_labels" / "img2.npz").symlink_to(outside)
    q = Project.open(proj)
    assert q.labels("img2.png") == ("negative control",)
    with pytest.raises(ProjectError, match="outside the project"):
        q.assign("img2.png", "positive control")
    assert outside.read_bytes() == precious and q.labels("img2.png") == ("negative control",)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_settings_file_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "cellclass.json")
    with pytest.raises(ProjectError, match="not a regular file"):
        Project.open(tmp_path)
