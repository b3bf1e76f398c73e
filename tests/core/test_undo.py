"""Undo stays valid across class renames and removals; many images, one undo step."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import ClassNameError, ProjectError
from napari_cellclass.core.project import Project
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path


@pytest.fixture
def proj(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / f"img{i}.png")
    p = Project.open(tmp_path)
    p.add_class("a")
    p.add_class("b")
    return p


def test_undo_after_rename_restores_with_the_new_name(proj, tmp_path):
    proj.assign("img0.png", "a")
    proj.assign("img0.png", "b")
    proj.assign("img1.png", "b")
    proj.rename_class("a", "alpha")
    assert proj.can_undo
    assert proj.undo() == ["img1.png"]
    assert proj.undo() == ["img0.png"]
    assert proj.labels("img0.png") == ("alpha",)
    assert read_sidecar(sidecar_path(tmp_path / "img0.png"))["classes"] == ("alpha",)
    assert proj.undo() == ["img0.png"] and proj.labels("img0.png") == ()
    assert Project.open(tmp_path).counts() == {"alpha": 0, "b": 0}


def test_remove_class_keeps_history_without_the_removed_class(proj, tmp_path):
    proj.assign("img0.png", "a")
    proj.assign("img0.png", "b")
    assert proj.remove_affects_history("a") and not proj.remove_affects_history("b")
    proj.remove_class("a")
    assert proj.can_undo
    proj.undo()  # img0 was 'a' before: that class is gone, so it is unlabelled
    assert proj.labels("img0.png") == ()
    assert Project.open(tmp_path).labels("img0.png") == ()


def test_apply_labels_is_one_undo_step(proj):
    changed = proj.apply_labels({"img0.png": ["a"], "img1.png": ["b"], "img2.png": [], "img3.png": ("a",)},
                                description="accept predictions", source="prediction")
    assert changed == ["img0.png", "img1.png", "img3.png"]
    assert read_sidecar(sidecar_path(proj.root / "img1.png"))["source"] == "prediction"
    assert proj.undo() == ["img0.png", "img1.png", "img3.png"]
    assert proj.labelled_ids() == [] and not proj.can_undo


def test_apply_labels_validates_everything_before_writing(proj):
    with pytest.raises(ClassNameError):
        proj.apply_labels({"img0.png": ["a"], "img1.png": ["nope"]}, description="x")
    with pytest.raises(ProjectError, match="single-label"):
        proj.apply_labels({"img0.png": ["a"], "img1.png": ["a", "b"]}, description="x")
    with pytest.raises(ProjectError, match="not an image"):
        proj.apply_labels({"img0.png": ["a"], "missing.png": ["a"]}, description="x")
    assert proj.labelled_ids() == [] and not proj.can_undo
