"""Small text files a project reads (settings, split, predictions, import CSVs): never hang, never huge."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.project import Project
from napari_cellclass.core.settings_file import MAX_CONFIG_BYTES
from napari_cellclass.core.textfiles import read_text_bounded

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _project(tmp_path):
    for i in range(3):
        _png(tmp_path / f"img{i}.png", i)
    p = Project.open(tmp_path)
    p.add_classes(["negative control", "positive control"])
    p.assign("img1.png", "negative control")
    return p


def _run(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: a read that hangs fails the test instead of the suite."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s: {code}")


# ------------------------------------------------------------------ the helper
def test_read_text_bounded_reads_utf8_with_a_byte_order_mark(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes("\ufeffimage_id,class\nä,b\n".encode())
    assert read_text_bounded(f, 1000, "CSV file") == "image_id,class\nä,b\n"


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"x" * 101), "too large"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "UTF-8"),
    (lambda p: p.mkdir(), "not a regular file"),
])
def test_read_text_bounded_refuses_in_one_line(tmp_path, make, words):
    f = tmp_path / "f.csv"
    make(f)
    with pytest.raises(ProjectError, match=words) as info:
        read_text_bounded(f, 100, "CSV file")
    msg = str(info.value)
    assert "\n" not in msg and str(f) in msg


def test_read_text_bounded_refuses_devices_and_missing_files(tmp_path):
    with pytest.raises(ProjectError, match="not a regular file"):
        read_text_bounded("/dev/zero", 100, "CSV file")
    with pytest.raises(ProjectError, match="not found"):
        read_text_bounded(tmp_path / "nope.csv", 100, "CSV file")
    assert read_text_bounded(tmp_path / "nope.csv", 100, "CSV file", missing_ok=True) is None


@needs_fifo
def test_read_text_bounded_does_not_hang_on_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    r = _run(f"""
        from napari_cellclass.core.textfiles import read_text_bounded
        from napari_cellclass.core.errors import ProjectError
        try:
            read_text_bounded({str(tmp_path / "pipe.csv")!r}, 100, "CSV file")
        except ProjectError as exc:
            print(exc)
    """)
    assert "not a regular file" in r.stdout, r.stderr


# ------------------------------------------------------------------ the files of a project
@needs_fifo
@pytest.mark.parametrize("name, call", [
    ("cellclass_split.csv", "p.predefined_split()"),
    ("cellclass_predictions.csv", "read_predictions(p.root)"),
    ("cellclass_predictions.csv", "write_predictions(p.root, [Prediction('img0.png', ('a',), 0.9, {'a': 0.9})])"),
    ("import.csv", "import_csv(p, p.root / 'import.csv')"),
])
def test_fifos_named_like_project_files_are_refused_without_hanging(tmp_path, name, call):
    _project(tmp_path)
    os.mkfifo(tmp_path / name)
    r = _run(f"""
        from napari_cellclass.core.project import Project
        from napari_cellclass.core.errors import ProjectError
        from napari_cellclass.core.predictions import Prediction, read_predictions, write_predictions
        from napari_cellclass.core.transfer import import_csv
        p = Project.open({str(tmp_path)!r})
        try:
            {call}
        except ProjectError as exc:
            print("refused:", exc)
    """)
    assert "refused:" in r.stdout and "not a regular file" in r.stdout, (r.stdout, r.stderr)
    assert (tmp_path / name).exists() and not (tmp_path / name).is_file()  # the FIFO is left where it was


def test_import_from_a_device_is_refused(tmp_path):
    from napari_cellclass.core.transfer import import_csv

    p = _project(tmp_path)
    with pytest.raises(ProjectError, match="not a regular file"):
        import_csv(p, "/dev/zero")


def test_settings_file_with_a_byte_order_mark_opens(tmp_path):
    _project(tmp_path)
    cfg = tmp_path / "cellclass.json"
    cfg.write_bytes(b"\xef\xbb\xbf" + cfg.read_bytes())
    q = Project.open(tmp_path)
    assert q.class_names == ("negative control", "positive control")
    q.add_class("mitotic")  # and it can be written again
    assert Project.open(tmp_path).class_names[-1] == "mitotic"


def test_oversized_settings_file_is_refused_in_one_line(tmp_path):
    _project(tmp_path)
    cfg = tmp_path / "cellclass.json"
    with open(cfg, "r+b") as fh:
        fh.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ProjectError, match="too large"):
        Project.open(tmp_path)


def test_a_setting_too_large_for_the_file_is_refused_at_once(tmp_path):
    p = _project(tmp_path)
    before = (tmp_path / "cellclass.json").read_bytes()
    with pytest.raises(ProjectError, match="too large") as info:
        p.update_settings(probe="x" * MAX_CONFIG_BYTES)
    assert "\n" not in str(info.value)
    assert (tmp_path / "cellclass.json").read_bytes() == before and "probe" not in p.settings
    p.update_settings(small="y" * 1000)  # the project keeps working
    q = Project.open(tmp_path)
    assert q.settings["small"] == "y" * 1000 and "probe" not in q.settings
    assert json.loads((tmp_path / "cellclass.json").read_text())["settings"] == {"small": "y" * 1000}
