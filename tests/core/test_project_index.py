"""The project index: reopening lists only changed folders and reads only changed label files."""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core import labelstore
from napari_cellclass.core.project import Project
from napari_cellclass.core.project_index import INDEX_PATH
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path, write_sidecar


@pytest.fixture
def root(tmp_path):
    for i in range(6):
        (tmp_path / "plate" if i % 2 else tmp_path).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8)).save((tmp_path / "plate" if i % 2 else tmp_path) / f"im{i}.png")
    p = Project.open(tmp_path)
    p.add_classes(["mitotic", "interphase"])
    p.apply_labels({iid: ["mitotic"] for iid in p.image_ids[:4]}, description="t")
    return tmp_path


def _count_calls(monkeypatch, module, name: str) -> list[str]:
    """Record the first argument (a path: its base name) of every call of ``module.name``."""
    calls: list[str] = []
    real = getattr(module, name)

    def counting(path, *a, **k):
        calls.append(os.path.basename(path))
        return real(path, *a, **k)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.fixture
def reads(monkeypatch):
    """The label files actually read."""
    return _count_calls(monkeypatch, labelstore, "read_sidecar")


def _labels(p):
    return {i: p.labels(i) for i in p.image_ids}


def test_reopening_reads_only_label_files_that_changed(root, reads):
    first = _labels(Project.open(root))  # builds the index
    assert len(reads) == 4 and root.joinpath(*INDEX_PATH).is_file()
    reads.clear()
    assert _labels(Project.open(root)) == first and reads == []
    p = Project.open(root)
    p.assign(p.image_ids[0], "interphase")
    reads.clear()
    assert Project.open(root).labels(p.image_ids[0]) == ("interphase",) and len(reads) == 1


def test_a_label_file_rewritten_in_place_by_another_program_is_seen(root, reads):
    p = Project.open(root)
    iid = p.image_ids[1]
    sc = sidecar_path(root / iid)
    st = sc.stat()
    other = root / "other.npz"
    write_sidecar(other, iid, ("interphase",))
    with open(sc, "r+b") as fh:  # same file, same inode, new bytes (size may even match)
        fh.write(other.read_bytes())
        fh.truncate()
    os.utime(sc, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its old modification time
    other.unlink()
    assert read_sidecar(sc)["classes"] == ("interphase",)
    assert Project.open(root).labels(iid) == ("interphase",)


def test_label_files_removed_or_added_by_others_are_seen(root):
    p = Project.open(root)
    gone, new = p.image_ids[0], p.image_ids[5]
    sidecar_path(root / gone).unlink()
    write_sidecar(sidecar_path(root / new), new, ("interphase",))
    q = Project.open(root)
    assert q.labels(gone) == () and q.labels(new) == ("interphase",)


@pytest.mark.parametrize("damage", [
    lambda f: f.unlink(),
    lambda f: f.write_text("{not json"),
    lambda f: f.write_text(json.dumps({"format": "other", "files": {}})),
    lambda f: f.write_text(json.dumps({"format": "napari-cellclass/project-index", "version": 3,
                                       "labels": {"x": "y", "plate/cellclass_labels": {"names": [1, 2]}},
                                       "class_lists": [["mitotic"], 3], "folders": {"": [1, 2]},
                                       "order": ["im0.png"]})),
    lambda f: f.write_text(json.dumps({"format": "napari-cellclass/project-index", "version": 3,
                                       "labels": {"plate/cellclass_labels": {"names": "im1.npz", "stamps": "AAAA!!",
                                                                             "lists": "AQAAAAAAAAA="}},
                                       "class_lists": [], "folders": [], "order": 5})),
])
def test_a_missing_damaged_or_foreign_index_loses_nothing(root, damage):
    expected = _labels(Project.open(root))
    damage(root.joinpath(*INDEX_PATH))
    assert _labels(Project.open(root)) == expected
    assert _labels(Project.open(root)) == expected  # and the rewritten index is right


def test_an_index_entry_for_another_stamp_is_not_believed(root, reads):
    Project.open(root)
    index = root.joinpath(*INDEX_PATH)
    data = json.loads(index.read_text())
    data["class_lists"] = [["interphase"] for _ in data["class_lists"]]  # lies about the content...
    for rows in data["labels"].values():
        stamps = np.frombuffer(base64.b64decode(rows["stamps"]), "<i8") + 1  # ...for files that are not on disk
        rows["stamps"] = base64.b64encode(stamps.astype("<i8").tobytes()).decode()
    index.write_text(json.dumps(data))
    p = Project.open(root)
    assert all(p.labels(i) in ((), ("mitotic",)) for i in p.image_ids) and len(reads) >= 4


def test_opening_a_folder_that_is_not_a_project_writes_nothing(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    write_sidecar(sidecar_path(tmp_path / "a.png"), "a.png", ("x",))  # labels from another copy
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert Project.open(tmp_path).labels("a.png") == ("x",)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_index_that_cannot_be_written_only_costs_speed(root, monkeypatch):
    from napari_cellclass.core import atomic

    expected = _labels(Project.open(root))
    root.joinpath(*INDEX_PATH).unlink()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "_open_temp", full)
    assert _labels(Project.open(root)) == expected


def _age(root, seconds=3600):
    """Date every folder below ``root`` back (a folder changed a moment ago is always listed again).

    The project is opened first: that makes its cache folder (a change of the project folder).
    """
    Project.open(root)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        st = d.stat()
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


@pytest.fixture
def listings(monkeypatch):
    """The folders actually listed."""
    from napari_cellclass.core import scan

    return _count_calls(monkeypatch, scan, "_list_folder")


def test_reopening_lists_no_folder_when_none_changed(root, listings):
    _age(root)
    first = Project.open(root).image_ids
    listings.clear()
    assert Project.open(root).image_ids == first and listings == []


def test_images_added_removed_or_renamed_by_others_are_seen(root, listings):
    _age(root)
    Project.open(root)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "plate" / "im10.png")
    (root / "im0.png").rename(root / "im00.png")
    (root / "im2.png").unlink()
    listings.clear()
    ids = Project.open(root).image_ids
    assert ids == ("im00.png", "im4.png", "plate/im1.png", "plate/im3.png", "plate/im5.png", "plate/im10.png")
    assert len(listings) == 2  # the two folders that changed, not every folder


def test_a_subfolder_made_a_project_or_a_model_folder_later_is_left_out(root):
    _age(root)
    assert "plate/im1.png" in Project.open(root).image_ids
    (root / "plate" / "cellclass.json").write_text("{}")
    p = Project.open(root)
    assert not any(i.startswith("plate/") for i in p.image_ids)
    assert any("skipped the project 'plate'" in m for m in p.problems)


def test_a_folder_changed_a_moment_ago_is_not_trusted_next_time(root):
    Project.open(root)  # the folders were just written: not stored
    data = json.loads(root.joinpath(*INDEX_PATH).read_text())
    assert "plate/" not in data["folders"]
    _age(root)
    Project.open(root)
    data = json.loads(root.joinpath(*INDEX_PATH).read_text())
    assert set(data["folders"]) == {"", "plate/"}
