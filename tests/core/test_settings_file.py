"""cellclass.json: validated on open, written lazily, merged under a lock, never half-changed."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import CellclassError, ClassNameError, ProjectError
from napari_cellclass.core.project import Project


def _pngs(folder, n=3):
    for i in range(n):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / f"img{i}.png")


def _write_cfg(folder, **over):
    cfg = {"format": "napari-cellclass/project", "version": 1, "multi_label": False,
           "classes": [{"name": "a", "color": "#e69f00"}], "settings": {}}
    cfg.update(over)
    (folder / "cellclass.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------ D15 bad files: one line
@pytest.mark.parametrize("over, words", [
    ({"settings": [1, 2]}, "settings"),
    ({"settings": "x"}, "settings"),
    ({"version": None}, "version"),
    ({"version": 1e999}, "version"),
    ({"version": "1"}, "version"),
    ({"version": 2}, "newer"),
    ({"classes": {"a": 1}}, "classes"),
    ({"classes": ["a"]}, "classes"),
    ({"classes": [{"name": 3, "color": "#000000"}]}, "class"),
    ({"classes": [{"name": "a"}]}, "class"),
    ({"classes": [{"name": "a/b", "color": "#000000"}]}, "a/b"),
    ({"multi_label": "yes"}, "multi_label"),
    ({"pending_renames": [1]}, "pending_renames"),
])
def test_bad_settings_file_is_one_line_naming_the_file(tmp_path, over, words):
    _write_cfg(tmp_path, **over)
    with pytest.raises(ProjectError) as info:
        Project.open(tmp_path)
    msg = str(info.value)
    assert "cellclass.json" in msg and words in msg and "\n" not in msg


def test_infinite_version_written_as_literal(tmp_path):
    (tmp_path / "cellclass.json").write_text(
        '{"format": "napari-cellclass/project", "version": Infinity, "classes": []}')
    with pytest.raises(ProjectError, match="version"):
        Project.open(tmp_path)


def test_unknown_keys_are_kept_on_write(tmp_path):
    _write_cfg(tmp_path, comment="made by hand", extra={"k": [1, 2]},
               classes=[{"name": "a", "color": "#e69f00", "description": "round"}])
    p = Project.open(tmp_path)
    p.add_class("b")
    cfg = json.loads((tmp_path / "cellclass.json").read_text())
    assert cfg["comment"] == "made by hand" and cfg["extra"] == {"k": [1, 2]}
    assert cfg["classes"][0]["description"] == "round"
    p.rename_class("a", "aa")
    cfg = json.loads((tmp_path / "cellclass.json").read_text())
    assert cfg["classes"][0] == {"name": "aa", "color": "#e69f00", "description": "round"}


# ------------------------------------------------------------------ item 8: lazy writes
def test_open_writes_nothing_until_the_first_change(tmp_path):
    _pngs(tmp_path)
    p = Project.open(tmp_path, multi_label=True)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    p.update_settings(note="x")
    cfg = json.loads((tmp_path / "cellclass.json").read_text())
    assert cfg["multi_label"] is True and cfg["settings"] == {"note": "x"}


def test_classes_found_in_sidecars_are_written_with_the_first_label(tmp_path):
    from napari_cellclass.core.sidecars import sidecar_path, write_sidecar

    _pngs(tmp_path)
    write_sidecar(sidecar_path(tmp_path / "img0.png"), "img0.png", ("stray",))
    p = Project.open(tmp_path)
    assert p.class_names == ("stray",) and not (tmp_path / "cellclass.json").exists()
    p.assign("img1.png", "stray")
    assert [c["name"] for c in json.loads((tmp_path / "cellclass.json").read_text())["classes"]] == ["stray"]


# ------------------------------------------------------------------ D7 two writers
def test_two_project_objects_keep_each_others_classes(tmp_path):
    _pngs(tmp_path)
    Project.open(tmp_path).add_class("interphase")
    one, two = Project.open(tmp_path), Project.open(tmp_path)
    one.add_class("mitotic")
    two.add_class("apoptotic")
    two.update_settings(x=1)
    one.set_class_color("mitotic", "#123456")
    assert set(Project.open(tmp_path).class_names) == {"interphase", "mitotic", "apoptotic"}
    assert Project.open(tmp_path).settings == {"x": 1}
    assert Project.open(tmp_path).class_color("mitotic") == "#123456"
    one.remove_class("interphase")  # a class this writer removed is not brought back by the merge
    two.add_class("late")
    assert set(Project.open(tmp_path).class_names) == {"mitotic", "apoptotic", "late"}


WRITER = textwrap.dedent("""
    import sys
    from napari_cellclass.core.project import Project
    p = Project.open(sys.argv[1])
    for k in range(int(sys.argv[3])):
        p.add_class(f"{sys.argv[2]}{k}")
""")


def test_writer_processes_lose_no_class(tmp_path):
    _pngs(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{w}-", "8"]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    names = Project.open(tmp_path).class_names
    assert sorted(names) == sorted(f"w{w}-{k}" for w in range(4) for k in range(8))


# ------------------------------------------------------------------ D10 failed writes change nothing
def _fail_writes(monkeypatch, code=errno.ENOSPC):
    def full(*args, **kwargs):
        raise OSError(code, "No space left on device")

    monkeypatch.setattr("napari_cellclass.core.atomic._open_temp", full)


@pytest.mark.parametrize("action", [
    lambda p: p.add_class("new"),
    lambda p: p.rename_class("a", "z"),
    lambda p: p.remove_class("b"),
    lambda p: p.remove_class("a", force=True),
    lambda p: p.set_class_color("a", "#000000"),
    lambda p: p.reorder_classes(["b", "a"]),
    lambda p: p.set_multi_label(True),
    lambda p: p.update_settings(k=2),
])
def test_failed_write_leaves_memory_and_files_unchanged(tmp_path, monkeypatch, action):
    _pngs(tmp_path)
    p = Project.open(tmp_path)
    p.add_class("a")
    p.add_class("b")
    p.assign("img0.png", "a")
    files = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and f.name != ".cellclass.lock"}
    state = (p.classes, p.multi_label, dict(p.settings), {i: p.labels(i) for i in p.image_ids}, p.can_undo)
    _fail_writes(monkeypatch)
    with pytest.raises(ProjectError) as info:
        action(p)
    assert "space" in str(info.value) and "\n" not in str(info.value)
    assert (p.classes, p.multi_label, dict(p.settings), {i: p.labels(i) for i in p.image_ids}, p.can_undo) == state
    assert {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and f.name != ".cellclass.lock"} == files
    monkeypatch.undo()
    p.add_class("later")  # and the project still works
    assert Project.open(tmp_path).class_names == ("a", "b", "later")


def test_rename_failing_midway_is_rolled_back(tmp_path, monkeypatch):
    from napari_cellclass.core import atomic

    _pngs(tmp_path)
    p = Project.open(tmp_path)
    p.add_class("a")
    p.assign(["img0.png", "img1.png", "img2.png"], "a")
    files = {f: f.read_bytes() for f in tmp_path.rglob("*.npz")}
    real, calls = atomic._open_temp, []

    def flaky(folder):
        calls.append(folder)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder)

    monkeypatch.setattr(atomic, "_open_temp", flaky)
    with pytest.raises(ProjectError, match="space"):
        p.rename_class("a", "b")
    monkeypatch.undo()
    assert p.class_names == ("a",) and all(p.labels(i) == ("a",) for i in p.image_ids)
    assert {f: f.read_bytes() for f in tmp_path.rglob("*.npz")} == files
    q = Project.open(tmp_path)
    assert q.class_names == ("a",) and q.counts() == {"a": 3}


def test_update_settings_refuses_values_json_cannot_store(tmp_path):
    _pngs(tmp_path)
    p = Project.open(tmp_path)
    p.add_class("a")
    for bad in ({"when": object()}, {"s": {1, 2}}, {"nan": float("nan")}, {"d": {(1, 2): 3}}):
        with pytest.raises(ProjectError, match="cannot be stored") as info:
            p.update_settings(**bad)
        assert "\n" not in str(info.value)
    assert p.settings == {}
    p.add_class("b")  # later class operations work
    p.rename_class("b", "c")
    assert Project.open(tmp_path).class_names == ("a", "c")


def test_errors_are_cellclass_errors():
    assert issubclass(ClassNameError, CellclassError)


def test_rescan_keeps_an_unsaved_multi_label_flag(tmp_path):
    _pngs(tmp_path)
    p = Project.open(tmp_path, multi_label=True)
    p.rescan()
    p.add_class("a")
    assert p.multi_label and json.loads((tmp_path / "cellclass.json").read_text())["multi_label"] is True


def test_labelling_many_images_is_all_or_nothing_when_the_disk_fills(tmp_path, monkeypatch):
    """An import or an acceptance that fails midway puts the label files already written back."""
    from napari_cellclass.core import atomic

    _pngs(tmp_path, 5)
    p = Project.open(tmp_path)
    p.add_classes(["a", "b"])
    p.assign(["img0.png", "img1.png"], "a")
    files = {f: f.read_bytes() for f in tmp_path.rglob("*.npz")}
    labels = {i: p.labels(i) for i in p.image_ids}
    real, calls = atomic._open_temp, []

    def fills_up(folder):
        calls.append(folder)
        if len(calls) == 4:  # the fourth label file of the step finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder)

    monkeypatch.setattr(atomic, "_open_temp", fills_up)
    with pytest.raises(ProjectError, match="space.*put back, nothing changed") as info:
        p.apply_labels({"img0.png": ["b"], "img2.png": ["b"], "img3.png": ["a"], "img4.png": ["b"]},
                       description="import")
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert {i: p.labels(i) for i in p.image_ids} == labels
    assert {f: f.read_bytes() for f in tmp_path.rglob("*.npz")} == files
    assert {i: Project.open(tmp_path).labels(i) for i in p.image_ids} == labels
    assert p.undo() == ["img0.png", "img1.png"]  # the failed step left no undo step of its own


def test_a_setting_json_cannot_store_again_is_left_out_and_reported(tmp_path):
    _pngs(tmp_path)
    p = Project.open(tmp_path)
    p.add_class("a")
    cfg = tmp_path / "cellclass.json"
    cfg.write_text(cfg.read_text().replace('"settings": {}', '"settings": {"x": 1e999, "y": 2}'))
    q = Project.open(tmp_path)
    assert q.settings == {"y": 2} and any("'x' left out" in m for m in q.problems)
    q.add_class("b")
    assert json.loads(cfg.read_text(), parse_constant=lambda c: pytest.fail(f"{c} written"))["settings"] == {"y": 2}


def test_update_settings_refuses_keys_that_are_not_text(tmp_path):
    _pngs(tmp_path)
    p = Project.open(tmp_path)
    with pytest.raises(ProjectError, match="keys of objects must be text"):
        p.update_settings(k={1: "a"})
    with pytest.raises(ProjectError, match="keys of objects must be text"):
        p.update_settings(k=[{"ok": {2: 3}}])
    assert p.settings == {}
