"""The label index: reopening reads only changed label files; the sidecars stay the source of truth."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core import labelstore
from napari_cellclass.core.label_index import INDEX_PATH
from napari_cellclass.core.project import Project
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


@pytest.fixture
def reads(monkeypatch):
    """Count the label files actually read."""
    calls = []
    real = labelstore.read_sidecar

    def counting(path, *a, **k):
        calls.append(os.path.basename(path))
        return real(path, *a, **k)

    monkeypatch.setattr(labelstore, "read_sidecar", counting)
    return calls


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
    lambda f: f.write_text(json.dumps({"format": "napari-cellclass/label-index", "version": 1,
                                       "files": {"x": "y", "plate/cellclass_labels/im1.npz": [1, 2]}})),
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
    for entry in data["files"].values():
        entry[4] = ["interphase"]  # lies about the content...
        entry[0] += 1  # ...for a file that is not the one on disk
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
