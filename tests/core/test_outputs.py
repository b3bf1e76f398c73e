"""Writing a file the user named never replaces a file a project depends on."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.outputs import check_output_file
from napari_cellclass.core.predictions import Prediction, export_predictions_csv
from napari_cellclass.core.project import Project


@pytest.fixture
def project(tmp_path):
    (tmp_path / "p").mkdir()
    tifffile.imwrite(tmp_path / "p" / "img0.tif", np.zeros((4, 4), np.uint16))
    p = Project.open(tmp_path / "p", fsync=False)
    p.add_class("alpha")
    p.assign("img0.tif", "alpha")
    (tmp_path / "p" / "cellclass_split.csv").write_text("image_id,split\n")
    return p


@pytest.mark.parametrize("name", ["cellclass.json", ".cellclass.lock", "cellclass_split.csv",
                                  "cellclass_predictions.csv", "img0.tif", "cellclass_labels/img0.npz",
                                  "cellclass_labels/new.csv", "cellclass_models/m/config.json"])
def test_project_files_are_refused(project, name):
    with pytest.raises(ProjectError, match="choose another file"):
        check_output_file(project.root / name)


def test_links_and_special_files_are_refused(project, tmp_path):
    link = tmp_path / "innocent.csv"
    link.symlink_to(project.root / "cellclass.json")
    with pytest.raises(ProjectError, match="settings file"):
        check_output_file(link)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(ProjectError, match="not a regular file"):
        check_output_file(fifo)
    with pytest.raises(ProjectError, match="not a regular file"):
        check_output_file(tmp_path)


def test_ordinary_files_are_fine(project, tmp_path):
    assert check_output_file(tmp_path / "out.csv") == tmp_path / "out.csv"
    (tmp_path / "old.csv").write_text("x")
    assert check_output_file(tmp_path / "old.csv") == tmp_path / "old.csv"  # replacing a CSV is asked for
    assert check_output_file(project.root / "exports" / "labels.csv")  # a new file inside the project


def test_prediction_export_refuses_the_settings_file(project):
    before = (project.root / "cellclass.json").read_bytes()
    pred = Prediction("img0.tif", ("alpha",), 0.9, {"alpha": 0.9}, "m")
    with pytest.raises(ProjectError):
        export_predictions_csv(project.root / "cellclass.json", [pred])
    assert (project.root / "cellclass.json").read_bytes() == before
