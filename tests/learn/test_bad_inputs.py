"""Bad model folders, bad settings and bad project files: one line each, and results are kept."""
from __future__ import annotations

import errno
import json
import shutil
import tempfile

import numpy as np
import pytest

from napari_cellclass.cli import main
from napari_cellclass.core.errors import CellclassError, ModelFolderError
from napari_cellclass.core.predictions import (
    PREDICTIONS_NAME,
    read_predictions,
    read_predictions_csv,
)
from napari_cellclass.learn import load_model, predict, train


@pytest.fixture(scope="module")
def model_dir(tiny_sample, tmp_path_factory):
    from napari_cellclass.learn.config import TrainConfig

    from .conftest import FAST

    out = tmp_path_factory.mktemp("bad") / "m"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 1}), out)
    return out


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- D15: config.json types
@pytest.mark.parametrize("change", [
    {"normalisation": "imagenet"},
    {"train_config": "fast"},
    {"normalisation": {"scaling": "dtype", "mean": [0.5]}},
    {"normalisation": {"scaling": "dtype", "mean": "0.5", "std": [1, 1]}},
    {"classes": "ab"},
    {"classes": []},
    {"in_chans": "2"},
    {"input_size": 0},
    {"backbone": 7},
    {"train_config": {"dropout": "high"}},
    {"multi_label": "yes"},
    {"split": []},
])
def test_wrong_types_in_config_json_are_one_line(model_dir, tmp_path, capsys, change):
    d = tmp_path / "copy"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match=r"config\.json") as info:
        load_model(d)
    assert "\n" not in str(info.value)
    code, _out, err = _run(capsys, "predict", tmp_path, "--model", d)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "config.json" in err


def test_memory_error_while_preparing_an_image_is_one_line_naming_it(model_dir, tiny_sample, monkeypatch):
    from pathlib import Path

    from napari_cellclass.learn import data
    from napari_cellclass.learn.data import cache

    victim, other = (tiny_sample.path(i) for i in tiny_sample.image_ids[:2])
    real_read = cache.ImageStore._read

    def read(self, src):
        if src.path is not None and Path(src.path) == victim:
            raise MemoryError
        return real_read(self, src)

    monkeypatch.setattr(cache.ImageStore, "_read", read)
    res = predict(model_dir, [victim, other])
    assert res.ids == [str(other)] and str(victim) in res.skipped
    reason = res.skipped[str(victim)]
    assert "memory" in reason and "\n" not in reason and "downscale" in reason
    store = data.ImageStore([victim], 32)  # the channel probe hits it too
    list(store.build())
    assert "memory" in store.problems[str(victim)]

    def no_memory(*_a, **_k):
        raise MemoryError

    monkeypatch.setattr(cache, "prepare_pixels", no_memory)
    res = predict(model_dir, [other])
    assert len(res) == 0 and "memory" in res.skipped[str(other)]


# ---------------------------------------------------------------------------- D16: evaluate
def _other_class_project(tiny_sample, tmp_path):
    from napari_cellclass.core.project import Project

    root = tmp_path / "other"
    root.mkdir()
    ids = tiny_sample.labelled_ids()[:4]
    for i, iid in enumerate(ids):
        shutil.copy(tiny_sample.path(iid), root / f"img{i}.tif")
    p = Project.open(root)
    p.add_class("mitotic")
    p.add_class("apoptotic")
    p.assign(["img0.tif", "img1.tif"], "mitotic")
    p.assign(["img2.tif", "img3.tif"], "apoptotic")
    return p


def test_evaluate_with_a_model_of_other_classes_lists_what_was_skipped(model_dir, tiny_sample, tmp_path, capsys):
    project = _other_class_project(tiny_sample, tmp_path)
    code, out, err = _run(capsys, "evaluate", project.root, "--model", model_dir, "--split", "all")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "mitotic" in err and "apoptotic" in err and "img0.tif" in err
    code, out, err = _run(capsys, "evaluate", project.root, "--model", model_dir, "--split", "all", "--json")
    res = json.loads(out)
    assert code == 2 and res["ok"] is False
    assert {s["image_id"] for s in res["skipped"]} == {"img0.tif", "img1.tif", "img2.tif", "img3.tif"}
    assert "mitotic" in res["skipped"][0]["reason"] or "apoptotic" in res["skipped"][0]["reason"]


# ---------------------------------------------------------------------------- D16: predict
def _copy_project(tiny_sample, tmp_path):
    from napari_cellclass.core.project import Project

    dst = tmp_path / "proj"
    shutil.copytree(tiny_sample.root, dst, ignore=shutil.ignore_patterns("cellclass_cache", "cellclass_models",
                                                                         PREDICTIONS_NAME))
    return Project.open(dst, create=False)


def _read_only(monkeypatch, folder):
    """Writes into ``folder`` fail as on a read-only project (tests run as root, chmod is not enough)."""
    import os

    real = os.open

    def guarded(path, flags, *a, **k):
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", guarded)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and os.path.abspath(dir) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_predict_on_a_read_only_project_keeps_the_results(model_dir, tiny_sample, tmp_path, monkeypatch, capsys):
    project = _copy_project(tiny_sample, tmp_path)
    _read_only(monkeypatch, project.root)
    res = predict(model_dir, project, csv=tmp_path / "out.csv")
    assert len(res) == len(project.unlabelled_ids()) and (tmp_path / "out.csv").exists()
    assert any("cannot write" in w for w in res.warnings)
    code, out, err = _run(capsys, "predict", project.root, "--model", model_dir, "--csv", tmp_path / "out2.csv",
                          "--json")
    res = json.loads(out)
    assert code == 0 and (tmp_path / "out2.csv").exists() and res["n"] == len(project.unlabelled_ids())
    assert res["warnings"] and "warning" in err and "stored_in" not in res
    # nothing could be saved: the results are still printed, and the exit code says so
    code, out, err = _run(capsys, "predict", project.root, "--model", model_dir, "--json")
    res = json.loads(out)
    assert code == 2 and res["ok"] is False and res["n"] == len(project.unlabelled_ids()) and res["predictions"]
    assert "cannot write" in res["error"] and len(err.strip().splitlines()) == 1


def test_a_damaged_predictions_file_never_blocks_predict(model_dir, tiny_sample, tmp_path, capsys):
    project = _copy_project(tiny_sample, tmp_path)
    path = project.root / PREDICTIONS_NAME
    other = project.labelled_ids()[0]
    text = ("image_id,predicted,confidence,p:negative control,p:positive control,model,timestamp\n"
            f"{other},negative control,0.9,0.9,0.1,old,t\n"
            "ghost.tif,negative control,abc,0.9,0.1,old,t\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a BOM (Excel) and one bad value
    problems: list[str] = []
    rows = read_predictions_csv(path, problems=problems)
    assert set(rows) == {other} and len(problems) == 1 and "ghost.tif" in problems[0]
    code, out, err = _run(capsys, "predict", project.root, "--model", model_dir, "--json")
    assert code == 0, err
    stored = read_predictions(project.root)
    assert other in stored and set(project.unlabelled_ids()) <= set(stored) and "ghost.tif" in err
    # a file that is not a predictions table at all is moved aside, never deleted, never blocking
    path.write_bytes(b"\x00\x01garbage\xff\xfe")
    code, out, err = _run(capsys, "predict", project.root, "--model", model_dir, "--json")
    assert code == 0, err
    assert set(project.unlabelled_ids()) <= set(read_predictions(project.root))
    aside = [p for p in project.root.iterdir() if p.name.startswith("cellclass_predictions") and p != path]
    assert any(p.read_bytes() == b"\x00\x01garbage\xff\xfe" for p in aside)


@pytest.mark.parametrize("bs", ["-5", "0"])
def test_predict_batch_size_must_be_positive(model_dir, tiny_sample, capsys, bs):
    code, out, err = _run(capsys, "predict", tiny_sample.root, "--model", model_dir, "--batch-size", bs, "--json")
    assert code == 2 and "batch" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CellclassError, match="batch_size"):
        predict(model_dir, tiny_sample, batch_size=int(bs), write=False)


# ---------------------------------------------------------------------------- D16: training
def test_a_class_without_images_is_left_out_with_a_warning(tmp_path, fast_config, capsys):
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "s", n=16, seed=4, size=48, labelled_fraction=1.0)
    p.add_class("apoptotic")
    result = train(p, fast_config(epochs=1), tmp_path / "m")
    assert any("apoptotic" in w and "no labelled images" in w for w in result.warnings)
    assert "apoptotic" not in load_model(result.model_dir).classes
    code, out, err = _run(capsys, "train", p.root, "--backbone", "mobilenetv3_small_050", "--input-size", "32",
                          "--epochs", "1", "--device", "cpu", "--out", tmp_path / "m2", "--json")
    assert code == 0 and "apoptotic" in err and any("apoptotic" in w for w in json.loads(out)["warnings"])


def test_batch_size_one_trains_and_predicts(tmp_path, fast_config):
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "s", n=12, seed=4, size=48, labelled_fraction=1.0)
    result = train(p, fast_config(epochs=1, batch_size=1), tmp_path / "m")
    assert result.model_dir is not None and np.isfinite(result.history[0]["train"]["loss"])
    assert len(predict(result.model_dir, p, all_images=True, batch_size=1, write=False)) == len(p.image_ids)
