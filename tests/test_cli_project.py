"""The project subcommands: sample, info, import-labels, export-labels (JSON, exit codes, errors)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_info_export_import_round_trip(tmp_path, capsys):
    d = tmp_path / "s"
    code, out, _ = run(capsys, "sample", str(d), "--n", "12", "--seed", "2", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["images"] == 12 and res["labelled"] == 8
    (d / "images" / "u2os_0003.tif").write_bytes(b"broken")
    code, out, _ = run(capsys, "info", str(d), "--json")
    info = json.loads(out)
    assert code == 0 and info["images"] == 12 and info["unlabelled"] == 4
    assert info["counts"] == {"negative control": 4, "positive control": 4}
    assert [u["image_id"] for u in info["unreadable"]] == ["images/u2os_0003.tif"]
    assert info["unreadable"][0]["reason"]
    csv = tmp_path / "labels.csv"
    code, out, _ = run(capsys, "export-labels", str(d), "--csv", str(csv), "--json")
    assert code == 0 and json.loads(out)["rows"] == 8
    fresh = tmp_path / "copy"
    fresh.mkdir()
    for f in (d / "images").glob("*.tif"):
        (fresh / f.name).write_bytes(f.read_bytes())
    code, out, _ = run(capsys, "import-labels", str(fresh), "--csv", str(csv), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["labelled"] == 8 and rep["counts"] == info["counts"]


def test_human_output(tmp_path, capsys):
    code, out, _ = run(capsys, "sample", str(tmp_path / "h"), "--n", "6")
    assert code == 0 and "6 image(s): 4 labelled, 2 unlabelled" in out


@pytest.mark.parametrize("args, words", [
    (["info", "/definitely/not/here"], "does not exist"),
    (["sample", "{tmp}", "--n", "2"], "between 4"),
    (["import-labels", "{tmp}", "--csv", "{tmp}/none.csv"], "not found"),
    (["import-labels", "{tmp}", "--from-folders", "{tmp}/none"], "not found"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, words):
    args = [a.format(tmp=tmp_path) for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("napari-cellclass: error:")
    assert "Traceback" not in err


def test_json_error_object(tmp_path, capsys):
    code, out, err = run(capsys, "info", str(tmp_path / "missing"), "--json")
    assert code == 2 and json.loads(out) == {"ok": False, "error": err.strip().split("error: ", 1)[1]}


def test_console_script_help_and_folders_import(tmp_path):
    exe = [sys.executable, "-m", "napari_cellclass.cli"]
    for sub in ("sample", "info", "import-labels", "export-labels"):
        out = subprocess.run(exe + [sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--json" in out.stdout
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "src" / cls / f"{cls}1.png")
    (tmp_path / "proj").mkdir()
    out = subprocess.run(exe + ["import-labels", str(tmp_path / "proj"), "--from-folders", str(tmp_path / "src"),
                                "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["counts"] == {"a": 1, "b": 1}


@pytest.mark.parametrize("body, words", [
    ('{"format": "napari-cellclass/project", "version": 1, "settings": [1, 2]}', "settings"),
    ('{"format": "napari-cellclass/project", "version": null}', "version"),
    ('{"format": "napari-cellclass/project", "version": 1e999}', "version"),
    ('{"format": "napari-cellclass/project", "version": 1, "classes": 7}', "classes"),
])
def test_info_on_a_bad_settings_file_is_one_line(tmp_path, capsys, body, words):
    (tmp_path / "cellclass.json").write_text(body)
    code, _, err = run(capsys, "info", str(tmp_path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and "cellclass.json" in lines[0]
    assert "Traceback" not in err


def test_info_does_not_write_into_the_folder(tmp_path, capsys):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    code, _, _ = run(capsys, "info", str(tmp_path), "--json")
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_export_writes_through_a_symlink_and_refuses_special_files(tmp_path, capsys):
    import os

    d = tmp_path / "s"
    run(capsys, "sample", str(d), "--n", "6", "--json")
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    code, _, err = run(capsys, "export-labels", str(d), "--csv", str(link))
    assert code == 0 and link.is_symlink() and real.read_text().startswith("image_id,class")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    cfg = (d / "cellclass.json").read_bytes()
    for target, words in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                          (d / "cellclass.json", "project"),
                          (d / "images" / "cellclass_labels" / "x.csv", "project")):
        code, _, err = run(capsys, "export-labels", str(d), "--csv", str(target))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert (d / "cellclass.json").read_bytes() == cfg and os.path.exists(fifo)


def test_import_with_empty_cells_reports_them(tmp_path, capsys):
    d = tmp_path / "s"
    run(capsys, "sample", str(d), "--n", "6", "--json")
    run(capsys, "export-labels", str(d), "--csv", str(tmp_path / "all.csv"))
    labelled = [line.split(",")[0] for line in (tmp_path / "all.csv").read_text().splitlines()[1:3]]
    csv = tmp_path / "l.csv"
    csv.write_text("image_id,class\n" + "".join(f"{i},\n" for i in labelled))
    _, before, _ = run(capsys, "info", str(d), "--json", "--quick")
    code, out, _ = run(capsys, "import-labels", str(d), "--csv", str(csv))
    assert code == 0 and "2 row(s) had an empty class" in out and "labelled 0 image(s)" in out
    _, after, _ = run(capsys, "info", str(d), "--json", "--quick")
    assert json.loads(after)["counts"] == json.loads(before)["counts"]
