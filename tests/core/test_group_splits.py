"""Group splits: every group in one subset (regex, folder and CSV-column specs), stratified, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass.core.errors import ConfigError, ProjectError
from napari_cellclass.core.groups import GROUPS_NAME, assign_groups, crossing_note, parse_group_spec
from napari_cellclass.core.project import Project
from napari_cellclass.core.splits import stratified_group_split

CLASSES = ("a", "b", "c")
REGEX = r"(?P<plate>plate[0-9])/(?P<well>[A-P][0-9]{2})"


def well_ids():
    """``plate1/B03_f1.tif``-style ids: 2 plates x 8 wells x 2-5 fields; a well's class cycles a, b, c."""
    rng = np.random.default_rng(0)
    ids, labels, truth = [], [], {}
    for p in (1, 2):
        for w in range(8):
            well = f"{'BCDEFGHI'[w]}{w + 2:02d}"
            for f in range(int(rng.integers(2, 6))):
                iid = f"plate{p}/{well}_f{f + 1}.tif"
                ids.append(iid)
                labels.append((CLASSES[(w + p) % 3],))
                truth[iid] = f"plate{p}/{well}"
    return ids, labels, truth


@pytest.fixture
def well_project(tmp_path):
    """The ids of :func:`well_ids` as 8 x 8 images of a project, labelled, with a ``cellclass_groups.csv``."""
    import tifffile

    ids, labels, truth = well_ids()
    rng = np.random.default_rng(1)
    for iid in ids:
        (tmp_path / iid).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / iid, rng.integers(0, 255, (8, 8), dtype=np.uint8))
    rows = ["image_id,plate,specimen"] + [f"{i},{truth[i].split('/')[0]},{truth[i].replace('/', '-')}" for i in ids]
    (tmp_path / GROUPS_NAME).write_text("\n".join(rows) + "\n")
    p = Project.open(tmp_path)
    p.add_classes(list(CLASSES))
    p.apply_labels(dict(zip(ids, labels, strict=True)), description="test labels")
    return p, ids, labels, truth


def _check_split(sp, ids, labels, truth, val_fraction):
    parts = {"train": sp.train, "val": sp.val, "test": sp.test}
    assert sorted(sp.train + sp.val + sp.test) == sorted(ids)
    home = {}
    for name, part in parts.items():
        for i in part:
            assert home.setdefault(truth[i], name) == name, f"group {truth[i]} in {home[truth[i]]} and {name}"
    lab = dict(zip(ids, labels, strict=True))
    for c in CLASSES:  # stratified: every class (4+ groups each) is trained and validated
        assert any(lab[i] == (c,) for i in sp.train) and any(lab[i] == (c,) for i in sp.val)
    assert abs(len(sp.val) / len(ids) - val_fraction) < 0.12


@pytest.mark.parametrize("spec", [REGEX, "column:specimen", "specimen"])
def test_each_group_stays_in_one_split(well_project, spec):
    project, ids, labels, truth = well_project
    groups = assign_groups(parse_group_spec(spec), ids, project)
    assert {groups.of[i] for i in ids} == {truth[i] if spec == REGEX else truth[i].replace("/", "-") for i in ids}
    assert not groups.uncovered and groups.note() is None
    sp = stratified_group_split(ids, labels, groups.of, val_fraction=0.25, seed=3)
    assert sp.source == "group"
    _check_split(sp, ids, labels, truth, 0.25)
    assert sp == stratified_group_split(ids, labels, groups.of, val_fraction=0.25, seed=3)  # deterministic
    assert any(stratified_group_split(ids, labels, groups.of, val_fraction=0.25, seed=s).val != sp.val
               for s in (4, 5, 6))


@pytest.mark.parametrize("spec, level", [("folder", -1), ("folder:1", 1), ("folder:-2", -2), ("FOLDER:0", 0)])
def test_folder_specs_pick_a_path_component(spec, level):
    ids = [f"study/donor{d}/{'x' if d % 2 else 'y'}/cell_{j}.png" for d in range(15) for j in range(3)]
    labels = [(CLASSES[int(i.split("/")[1][5:]) % 3],) for i in ids]
    groups = assign_groups(parse_group_spec(spec), ids, None)
    assert all(groups.of[i] == i.split("/")[:-1][level] for i in ids)
    if spec == "folder:1":  # one donor per group: 15 groups, 5 per class
        truth = {i: i.split("/")[1] for i in ids}
        sp = stratified_group_split(ids, labels, groups.of, val_fraction=0.2, test_fraction=0.2, seed=0)
        _check_split(sp, ids, labels, truth, 0.2)
        assert sp.test and {truth[i] for i in sp.test}.isdisjoint({truth[i] for i in sp.train + sp.val})


def test_test_fraction_and_multi_label_rarest_class():
    ids, labels, truth = well_ids()
    labels = [ls + ("rare",) if truth[i].endswith(("C03", "F06", "I09")) else ls for i, ls in zip(ids, labels,
                                                                                                  strict=True)]
    sp = stratified_group_split(ids, labels, truth, val_fraction=0.2, test_fraction=0.2, seed=1)
    lab = dict(zip(ids, labels, strict=True))
    # the rare class sits in 6 groups: each subset gets one of them
    for part in (sp.train, sp.val, sp.test):
        assert any("rare" in lab[i] for i in part)
    assert not {truth[i] for i in sp.test} & {truth[i] for i in sp.train + sp.val}


def test_uncovered_images_are_groups_of_their_own_with_a_note(well_project):
    project, ids, labels, truth = well_project
    groups = assign_groups(parse_group_spec(r"plate1/(?P<well>[A-P][0-9]{2})"), ids, project)
    plate2 = [i for i in ids if i.startswith("plate2/")]
    assert groups.uncovered == tuple(plate2)
    assert len({groups.of[i] for i in plate2}) == len(plate2)  # one group each
    assert f"no group for {len(plate2)} of {len(ids)} labelled image(s)" in groups.note()


@pytest.mark.parametrize("spec, pattern", [
    ("(?P<well>[A-P][0-9]{2}", r"not a valid regular expression .*\(\?P<well>"),
    ("B[0-9]{2}", r"has no named group; write \(\?P<name>...\)"),
    ("folder:last", "folder level must be a whole number"),
    ("column:", "names no column; write column:NAME"),
])
def test_bad_spec_syntax_is_one_line(spec, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        parse_group_spec(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec, pattern", [
    ("(?P<x>plate9)", r"matches none of the \d+ labelled image ids .*fix the pattern"),
    ("folder:3", "finds that folder level in none"),
    ("column:donor", rf"{GROUPS_NAME}: no column 'donor' \(columns: image_id, plate, specimen\)"),
])
def test_spec_that_fits_no_image_is_one_line(well_project, spec, pattern):
    project, ids, *_ = well_project
    with pytest.raises(ProjectError, match=pattern) as err:
        assign_groups(parse_group_spec(spec), ids, project)
    assert "\n" not in str(err.value)


def test_column_that_names_no_labelled_image_is_one_line(well_project):
    project, ids, *_ = well_project
    (project.root / GROUPS_NAME).write_text("image_id,donor\nother/x.tif,d1\nplate1/B02_f1.tif,\n")
    with pytest.raises(ProjectError, match=r"group_by='donor' gives a group for none of the \d+ labelled image ids"):
        assign_groups(parse_group_spec("donor"), ids, project)


def test_missing_groups_file_names_it(well_project):
    project, ids, *_ = well_project
    (project.root / GROUPS_NAME).unlink()
    with pytest.raises(ProjectError, match=f"{GROUPS_NAME}, which does not exist; write it"):
        assign_groups(parse_group_spec("specimen"), ids, project)


def test_one_group_is_too_few():
    with pytest.raises(ProjectError, match="one group; a split by group needs at least two"):
        stratified_group_split(["a/1", "a/2"], [("x",), ("y",)], {"a/1": "a", "a/2": "a"})


def test_crossing_note_counts_groups_in_two_splits():
    ids, labels, truth = well_ids()
    groups = assign_groups(parse_group_spec(REGEX), ids, None)
    b02 = [i for i in ids if i.startswith("plate1/B02")]
    c03 = [i for i in ids if i.startswith("plate1/C03")]
    parts = {"train": [i for i in ids if i not in b02[-1:] + c03[-1:]], "val": b02[-1:] + c03[-1:]}
    note = crossing_note(groups, parts, "predefined")
    big = max((b02, c03), key=len)
    assert note.startswith(f"group '{big[0].split('_')[0]}' has images in train ({len(big) - 1}) and val (1), e.g. ")
    assert "2 group(s) of group_by" in note
    assert crossing_note(groups, {"train": b02, "val": c03}, "predefined") is None
