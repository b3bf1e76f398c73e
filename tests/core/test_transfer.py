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


# ------------------------------------------------------------------ bad input never loses labels
def _labelled(tmp_path):
    _pngs(tmp_path, ["a.png", "b.png", "c.png"])
    p = Project.open(tmp_path)
    p.add_class("x")
    p.add_class("y")
    p.assign(["a.png", "b.png"], "x")
    return p


def test_empty_class_cell_keeps_the_label_and_is_reported(tmp_path):
    p = _labelled(tmp_path)
    (tmp_path / "l.csv").write_text("image,class\na.png,\nb.png,  \nc.png,y\n")
    rep = import_csv(p, tmp_path / "l.csv")
    assert p.labels("a.png") == ("x",) and p.labels("b.png") == ("x",) and p.labels("c.png") == ("y",)
    assert rep.labelled == 1 and rep.empty == ["a.png", "b.png"]
    assert rep.as_dict()["empty_class"] == 2


def test_duplicate_ids_with_conflicting_classes_refuse_the_import(tmp_path):
    p = _labelled(tmp_path)
    (tmp_path / "l.csv").write_text("image,class\nc.png,x\na.png,new\nc.png,y\nb.png,x\n")
    with pytest.raises(ProjectError, match=r"c\.png.*lines 2 and 4") as info:
        import_csv(p, tmp_path / "l.csv")
    assert "\n" not in str(info.value)
    assert p.class_names == ("x", "y") and p.labels("c.png") == ()
    (tmp_path / "same.csv").write_text("image,class\nc.png,y\nc.png,y\n")  # agreeing repeats are fine
    assert import_csv(p, tmp_path / "same.csv").labelled == 1


def test_rejected_import_creates_no_class(tmp_path):
    p = _labelled(tmp_path)
    (tmp_path / "l.csv").write_text("image,class\nc.png,fresh\na.png,bad/name\n")
    with pytest.raises(ProjectError, match="bad/name"):
        import_csv(p, tmp_path / "l.csv")
    assert p.class_names == ("x", "y") and Project.open(tmp_path).class_names == ("x", "y")
    assert p.labels("a.png") == ("x",)


def test_import_maps_names_case_insensitively(tmp_path):
    p = _labelled(tmp_path)
    (tmp_path / "l.csv").write_text("image,class\nc.png, X \n")
    rep = import_csv(p, tmp_path / "l.csv")
    assert rep.new_classes == [] and p.labels("c.png") == ("x",) and p.class_names == ("x", "y")


def test_import_is_one_undo_step(tmp_path):
    _pngs(tmp_path, ["a.png", "b.png", "c.png"])
    p = Project.open(tmp_path)
    (tmp_path / "l.csv").write_text("image,class\na.png,x\nb.png,y\nc.png,z\n")
    import_csv(p, tmp_path / "l.csv")
    p.undo()
    assert p.labelled_ids() == [] and not p.can_undo


def test_backslash_in_an_image_name_round_trips(tmp_path):
    _pngs(tmp_path, ["we\\ird.png", "plain.png"])
    p = Project.open(tmp_path)
    p.add_class("x")
    p.assign(["we\\ird.png", "plain.png"], "x")
    export_csv(p, tmp_path / "out.csv")
    p.clear(p.image_ids)
    rep = import_csv(p, tmp_path / "out.csv")
    assert rep.labelled == 2 and p.labels("we\\ird.png") == ("x",)


def test_windows_style_paths_still_match(tmp_path):
    _pngs(tmp_path, ["sub/a.png"])
    p = Project.open(tmp_path)
    (tmp_path / "l.csv").write_text("image,class\nsub\\a.png,x\n")
    assert import_csv(p, tmp_path / "l.csv").labelled == 1


def test_from_folders_with_a_bad_class_folder_copies_nothing(tmp_path):
    src = tmp_path / "src"
    _pngs(src, ["good/1.png", "bad\x01name/2.png"])
    proj = tmp_path / "proj"
    proj.mkdir()
    p = Project.open(proj)
    with pytest.raises(ProjectError, match="class"):
        import_folders(p, src)
    assert list(proj.iterdir()) == [] and p.class_names == ()


def test_export_refuses_project_files(tmp_path):
    p = _labelled(tmp_path)
    cfg = (tmp_path / "cellclass.json").read_bytes()
    sc = tmp_path / "cellclass_labels" / "a.npz"
    for target in (tmp_path / "cellclass.json", sc, tmp_path / "cellclass_labels" / "new.csv",
                   tmp_path / "a.png"):
        before = target.read_bytes() if target.exists() else None
        with pytest.raises(ProjectError, match="project"):
            export_csv(p, target)
        assert (target.read_bytes() if target.exists() else None) == before
    link = tmp_path / "out.csv"
    link.symlink_to(tmp_path / "cellclass.json")
    with pytest.raises(ProjectError, match="project"):
        export_csv(p, link)
    assert (tmp_path / "cellclass.json").read_bytes() == cfg


def test_an_unknown_split_value_refuses_the_import(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / n)
    p = Project.open(root)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image_id,class,split\na.png,mitotic,training\nb.png,mitotic,bogus\n")
    with pytest.raises(ProjectError, match=r"line 3: split 'bogus' is not train, val or test") as info:
        import_csv(p, csv_path)
    assert "\n" not in str(info.value) and str(csv_path) in str(info.value)
    assert p.labelled_ids() == [] and not p.split_path.exists()
    csv_path.write_text("image_id,class,split\na.png,mitotic,training\nb.png,mitotic,\n")  # empty: no split
    assert import_csv(p, csv_path).split_counts == {"train": 1}


def test_a_split_file_with_an_unknown_value_is_one_line(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a.png")
    (root / "cellclass_split.csv").write_text("image_id,split\na.png,trian\n")
    with pytest.raises(ProjectError, match=r"line 2: split 'trian' is not train, val or test"):
        Project.open(root).predefined_split()


def test_export_and_import_keep_commas_quotes_and_semicolons(tmp_path):
    names = ["a,b.png", 'say "hi".png', "semi;colon.png", "plain.png"]
    projects = []
    for sub in ("src", "dst"):
        (tmp_path / sub).mkdir()
        for n in names:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / sub / n)
        projects.append(Project.open(tmp_path / sub))
    src, dst = projects
    src.add_classes(["x, y", "y;z", "plain"])
    src.apply_labels({"a,b.png": ["x, y"], 'say "hi".png': ["y;z"], "semi;colon.png": ["plain"],
                      "plain.png": ["x, y"]}, description="t")
    export_csv(src, tmp_path / "out.csv")
    import_csv(dst, tmp_path / "out.csv")
    assert {i: dst.labels(i) for i in names} == {i: src.labels(i) for i in names}


def test_quoted_ids_with_doubled_quotes_beside_other_quoted_rows(tmp_path):
    names = ["we\\ird.png", 'a,b "q".png']
    _pngs(tmp_path, names)
    (tmp_path / "l.csv").write_text('image_id,class\n"we\\ird.png",alpha\n"a,b ""q"".png",beta\n')
    p = Project.open(tmp_path)
    rep = import_csv(p, tmp_path / "l.csv")
    assert rep.unmatched == [] and p.labels('a,b "q".png') == ("beta",) and p.labels("we\\ird.png") == ("alpha",)


def test_imported_names_match_classes_whatever_their_composition_or_spaces(tmp_path):
    import unicodedata

    _pngs(tmp_path, ["a.png", "b.png", "c.png"])
    p = Project.open(tmp_path)
    p.add_classes(["café", "negative control"])
    nfd = unicodedata.normalize("NFD", "Café")
    (tmp_path / "l.csv").write_text(f"a.png,{nfd}\nb.png,negative   control\nc.png,new  one\n", encoding="utf-8")
    rep = import_csv(p, tmp_path / "l.csv")
    assert rep.new_classes == ["new one"] and p.class_names == ("café", "negative control", "new one")
    assert [p.labels(i) for i in ("a.png", "b.png", "c.png")] == [("café",), ("negative control",), ("new one",)]
