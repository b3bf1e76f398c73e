"""Import (CSV, folder-per-class) and export of labels; predefined splits."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.project import Project
from napari_cellclass.core.transfer import export_csv, import_csv, import_folders


def _pngs(folder, names):
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / n)


def test_hep2_style_csv_with_numeric_ids_and_split(tmp_path):
    _pngs(tmp_path, [f"cells/{i:05d}.png" for i in range(1, 7)])
    csv = tmp_path / "gt.csv"
    csv.write_text("ID,Image class,split\n1,homogeneous,train\n2,speckled,train\n3,homogeneous,val\n"
                   "4,speckled,test\n5,nucleolar,train\n99,speckled,train\n")
    p = Project.open(tmp_path)
    rep = import_csv(p, csv)
    assert rep.labelled == 5 and rep.unmatched == ["99"]
    assert rep.new_classes == ["homogeneous", "speckled", "nucleolar"]
    assert p.labels("cells/00004.png") == ("speckled",)
    assert p.predefined_split()["cells/00003.png"] == "val"
    assert rep.split_counts == {"train": 3, "val": 1, "test": 1}
    p.undo()  # one class's import is one undo step
    assert len(p.labelled_ids()) < 5


def test_csv_without_header_and_multi_label(tmp_path):
    _pngs(tmp_path, ["a.png", "b.png"])
    (tmp_path / "l.csv").write_text("a.png,Nucleoli;Cytosol\nb.png,Mitochondria\n")
    p = Project.open(tmp_path, multi_label=True)
    import_csv(p, tmp_path / "l.csv")
    assert set(p.labels("a.png")) == {"Nucleoli", "Cytosol"}


def test_bad_csvs_are_clear(tmp_path):
    _pngs(tmp_path, ["a.png"])
    p = Project.open(tmp_path)
    with pytest.raises(ProjectError, match="not found"):
        import_csv(p, tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ProjectError, match="empty"):
        import_csv(p, tmp_path / "empty.csv")
    (tmp_path / "one.csv").write_text("image,class\na.png\n")
    with pytest.raises(ProjectError, match="line 2"):
        import_csv(p, tmp_path / "one.csv")


def test_export_import_round_trip(sample_project, tmp_path):
    out = tmp_path / "labels.csv"
    n = export_csv(sample_project, out)
    assert n == len(sample_project.labelled_ids())
    labels = {i: sample_project.labels(i) for i in sample_project.image_ids}
    sample_project.clear(sample_project.labelled_ids())
    rep = import_csv(sample_project, out)
    assert rep.labelled == n
    assert {i: sample_project.labels(i) for i in sample_project.image_ids} == labels


def test_import_folders_outside_project_copies_with_split(tmp_path):
    src = tmp_path / "kvasir"
    _pngs(src, ["train/polyp/p1.png", "train/normal/n1.png", "val/polyp/p2.png", "test/normal/n2.png"])
    proj = tmp_path / "proj"
    proj.mkdir()
    p = Project.open(proj)
    rep = import_folders(p, src)
    assert rep.copied == 4 and rep.labelled == 4
    assert p.labels("kvasir/train/polyp/p1.png") == ("polyp",)
    assert p.predefined_split()["kvasir/val/polyp/p2.png"] == "val"
    assert (src / "train/polyp/p1.png").exists()  # the source is untouched
    again = import_folders(p, src)  # nothing overwritten or duplicated
    assert again.copied == 0 and again.unchanged == 4


def test_import_folders_inside_project_labels_in_place(tmp_path):
    _pngs(tmp_path, ["homogeneous/1.png", "speckled/2.png", "speckled/3.png"])
    p = Project.open(tmp_path)
    rep = import_folders(p, tmp_path)
    assert rep.copied == 0
    assert p.counts() == {"homogeneous": 1, "speckled": 2}


def test_folder_split_detected_from_paths(tmp_path):
    _pngs(tmp_path, ["train/a.png", "validation/b.png", "test/c.png", "other/d.png"])
    p = Project.open(tmp_path)
    assert p.predefined_split() == {"train/a.png": "train", "validation/b.png": "val", "test/c.png": "test"}
