"""Files a user names for writing (predict --csv, saved settings, evaluation exports) never replace project files."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from napari_cellclass.cli import main
from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.predictions import PREDICTIONS_NAME
from napari_cellclass.learn import predict, train
from napari_cellclass.learn.config import TrainConfig
from napari_cellclass.learn.evaluate import Evaluation


@pytest.fixture(scope="module")
def model_dir(tiny_sample, tmp_path_factory):
    from .conftest import FAST

    out = tmp_path_factory.mktemp("outputs") / "m"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 1}), out)
    return out


@pytest.fixture
def project(tiny_sample, tmp_path):
    from napari_cellclass.core.project import Project

    dst = tmp_path / "proj"
    shutil.copytree(tiny_sample.root, dst, ignore=shutil.ignore_patterns("cellclass_cache", "cellclass_models",
                                                                         PREDICTIONS_NAME))
    return Project.open(dst, create=False)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _targets(project):
    """(name, path) of project files a user might name by mistake."""
    labelled = project.labelled_ids()[0]
    sidecar = next(project.root.rglob("cellclass_labels/*.npz"))
    link = project.root.parent / "settings-link.csv"
    link.symlink_to(project.root / "cellclass.json")
    return {"settings": project.root / "cellclass.json", "image": project.path(labelled), "sidecar": sidecar,
            "link": link}


def _no_prediction(monkeypatch):
    """Fail the test when an image is predicted (a refused --csv must be refused before that)."""
    def boom(*a, **k):
        raise AssertionError("predicted before the --csv path was checked")

    monkeypatch.setattr(sys.modules["napari_cellclass.learn.predict"], "infer", boom)


@pytest.mark.parametrize("which", ["settings", "image", "sidecar", "link"])
def test_predict_csv_never_replaces_a_project_file(model_dir, project, capsys, monkeypatch, which):
    path = _targets(project)[which]
    real = path.resolve()
    before = real.read_bytes()
    _no_prediction(monkeypatch)
    code, out, err = _run(capsys, "predict", project.root, "--model", model_dir, "--csv", path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err
    assert real.read_bytes() == before
    assert not (project.root / PREDICTIONS_NAME).exists()  # refused before anything was predicted or stored
    with pytest.raises(ProjectError, match="choose another file"):
        predict(model_dir, project, csv=path)
    assert real.read_bytes() == before


@pytest.mark.parametrize("which", ["settings", "image", "sidecar", "link"])
def test_saved_training_settings_never_replace_a_project_file(project, which):
    path = _targets(project)[which]
    real = path.resolve()
    before = real.read_bytes()
    with pytest.raises(ProjectError, match="choose another file") as info:
        TrainConfig(epochs=3).save(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert real.read_bytes() == before


def test_saved_training_settings_still_go_to_an_ordinary_file(tmp_path):
    TrainConfig(epochs=3).save(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["epochs"] == 3


def test_evaluate_out_into_a_label_folder_is_refused(model_dir, project, capsys):
    labels = next(project.root.rglob("cellclass_labels"))
    before = sorted(os.listdir(labels))
    for folder in (labels, labels / "new", project.root / "cellclass_cache" / "eval"):
        code, out, err = _run(capsys, "evaluate", project.root, "--model", model_dir, "--split", "all",
                              "--out", folder)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "choose a folder outside it" in err
        assert sorted(os.listdir(labels)) == before and not (labels / "new").exists()
        assert not (project.root / "cellclass_cache" / "eval").exists()


def test_evaluation_exports_refuse_project_files(project, tmp_path):
    import numpy as np

    from napari_cellclass.learn.metrics import compute_metrics

    true = np.array([0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    ev = Evaluation("m", "val", ("a", "b"), ["x", "y", "z"], true, probs.argmax(1), probs.max(1),
                    dict(compute_metrics(true, probs, multi_label=False, class_names=("a", "b"))))
    targets = _targets(project)
    for path in targets.values():
        real = path.resolve()
        before = real.read_bytes()
        for write in (ev.export_metrics, ev.export_predictions, ev.export_confusion):
            with pytest.raises(ProjectError, match="choose another file"):
                write(path)
        assert real.read_bytes() == before
    labels = targets["sidecar"].parent
    with pytest.raises(ProjectError, match="choose another file"):
        ev.export(labels / "sub")
    assert not (labels / "sub").exists()
    assert [p.name for p in ev.export(tmp_path / "ok")] == ["m_val_metrics.csv", "m_val_predictions.csv",
                                                           "m_val_confusion_matrix.csv"]
