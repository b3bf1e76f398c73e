"""Per-well summaries: well names, plate layouts, and exact counts and fractions per group."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_cellclass.core.errors import ConfigError, ProjectError
from napari_cellclass.core.groups import parse_group_spec
from napari_cellclass.core.plates import (
    DEFAULT_GROUP_BY,
    NO_GROUP,
    PlateLayout,
    infer_layout,
    parse_well,
    summarize_groups,
    well_name,
    write_summary_csv,
)
from napari_cellclass.core.predictions import Prediction


@pytest.mark.parametrize(("text", "expected"), [
    ("A1", (0, 0)), ("A01", (0, 0)), ("a01", (0, 0)), ("B03", (1, 2)), ("b3", (1, 2)), ("H12", (7, 11)),
    ("P24", (15, 23)), ("AF48", (31, 47)), ("r02c05", (1, 4)), ("R1C1", (0, 0)),
    ("A0", None), ("AG01", None), ("plate1", None), ("B", None), ("12", None), ("B123", None),
])
def test_parse_well(text, expected):
    assert parse_well(text) == expected


def test_well_name_round_trips():
    for r in range(32):
        for c in range(48):
            assert parse_well(well_name(r, c)) == (r, c)
    assert well_name(1, 2) == "B03" and well_name(26, 0) == "AA01"


def test_layout_is_the_smallest_plate_that_holds_the_wells():
    assert infer_layout([(0, 0), (7, 11)]) == PlateLayout(8, 12)
    assert infer_layout([(0, 0), (8, 0)]) == PlateLayout(16, 24)  # row I
    assert infer_layout([(0, 12)]) == PlateLayout(16, 24)  # column 13
    assert infer_layout([(15, 23)]) == PlateLayout(16, 24)
    assert infer_layout([(16, 0)]) == PlateLayout(32, 48)
    assert PlateLayout(16, 24).wells == 384 and PlateLayout(16, 24).row_names()[-1] == "P"


@pytest.mark.parametrize(("iid", "plate", "well"), [
    ("plate1/B03_s1.tif", "plate1", "B03"),
    ("Plate_01/A01_f02.tif", "Plate_01", "A01"),
    ("r02c05f01.tiff", None, "r02c05"),
    ("/data/screen/plate2/b3_field1.png", "plate2", "b3"),
    ("exp1/r12c03f02p01-ch1sk1fk1fl1.tiff", "exp1", "r12c03"),
    ("plate1/img_B03_w1.tif", "plate1", "B03"),
])
def test_default_group_by_finds_plate_and_well(iid, plate, well):
    m = parse_group_spec(DEFAULT_GROUP_BY).pattern.search(iid)
    assert m is not None and m.group("plate") == plate and m.group("well") == well


def _plate(fraction_of_a, fields=4, plate="plate1"):
    """Predictions of a 96-well plate: in well (r, c), round(fraction * fields) of the fields are class a."""
    preds = []
    for (r, c), f in np.ndenumerate(fraction_of_a):
        if np.isnan(f):
            continue
        k = round(f * fields)
        for s in range(fields):
            cls = "a" if s < k else "b"
            preds.append(Prediction(f"{plate}/{well_name(r, c)}_s{s + 1}.tif", (cls,), 0.5 + 0.1 * s,
                                    {"a": 0.9 if cls == "a" else 0.1, "b": 0.1 if cls == "a" else 0.9}))
    return preds


def test_a_96_well_plate_gives_exactly_its_fractions(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, (8, 12)) / 4  # 0, 0.25, ..., 1 per well (4 fields)
    truth[2, 5] = truth[7, 0] = np.nan  # two empty wells
    preds = _plate(truth) + _plate(1 - np.nan_to_num(truth, nan=0.5), plate="plate2")
    summary = summarize_groups(preds, parse_group_spec(DEFAULT_GROUP_BY), classes=("a", "b"))
    assert summary.layout == PlateLayout(8, 12) and summary.plates() == ["plate1", "plate2"]
    assert summary.columns == ("a", "b") and not summary.notes
    frac, n = summary.grid("plate1", "a")
    np.testing.assert_array_equal(np.isnan(frac), np.isnan(truth))
    np.testing.assert_allclose(frac[~np.isnan(truth)], truth[~np.isnan(truth)])
    assert n.sum() == 4 * 94 and n[2, 5] == 0
    frac2, _ = summary.grid("plate2", "a")
    np.testing.assert_allclose(frac2, 1 - np.nan_to_num(truth, nan=0.5))

    path = write_summary_csv(tmp_path / "summary.csv", summary)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 94 + 96
    assert list(rows[0])[:5] == ["group", "plate", "well", "n", "mean_confidence"]
    for row in rows:
        r, c = parse_well(row["well"])
        expected = truth[r, c] if row["plate"] == "plate1" else 1 - np.nan_to_num(truth, nan=0.5)[r, c]
        assert float(row["fraction:a"]) == pytest.approx(expected, abs=1e-6)
        assert int(row["count:a"]) + int(row["count:b"]) == int(row["n"]) == 4
        assert float(row["mean_confidence"]) == pytest.approx(0.65)
        assert row["group"] == f"{row['plate']}/{row['well']}"
    assert rows[0]["well"] == "A01" and rows[1]["well"] == "A02"  # by plate, row, column


def test_384_wells_and_no_plate_part():
    preds = [Prediction(f"{w}_f1.tif", ("a",), 0.9, {"a": 0.9}) for w in ("A1", "P24", "C7")]
    summary = summarize_groups(preds, parse_group_spec(r"(?P<well>[A-P][0-9]+)_"))
    assert summary.layout == PlateLayout(16, 24) and summary.plates() == [""]
    assert [g.well for g in summary.groups] == ["A01", "C07", "P24"]


def test_uncertain_verdicts_and_multi_label_counts():
    preds = [Prediction("p/A01_1.tif", ("a", "b"), 0.9, {"a": 0.9, "b": 0.8}, verdict="a;b"),
             Prediction("p/A01_2.tif", ("b",), 0.6, {"a": 0.2, "b": 0.6}, verdict="uncertain"),
             Prediction("p/A01_3.tif", (), 0.7, {"a": 0.3, "b": 0.3}, verdict=""),
             Prediction("p/A01_4.tif", ("a",), 0.8, {"a": 0.8, "b": 0.1}, verdict="a")]
    g = summarize_groups(preds, parse_group_spec(DEFAULT_GROUP_BY)).groups[0]
    assert g.n == 4 and g.counts == {"a": 2, "b": 1, "uncertain": 1}
    assert g.fractions == {"a": 0.5, "b": 0.25, "uncertain": 0.25}
    assert g.mean_confidence == pytest.approx(0.75)


def test_well_looking_last_part_and_uncovered_images():
    preds = [Prediction("s/plate7_C03_x.tif", ("a",), 0.9, {"a": 0.9}),
             Prediction("s/other.tif", ("a",), 0.9, {"a": 0.9})]
    summary = summarize_groups(preds, parse_group_spec(r"(?P<g>plate[0-9]+_[A-H][0-9]{2})"))
    first, rest = summary.groups
    assert (first.group, first.plate, first.well, first.position) == ("plate7_C03", "plate7", "C03", (2, 2))
    assert rest.group == NO_GROUP and rest.n == 1 and "1 of 2" in summary.notes[0]
    folder = summarize_groups(preds, parse_group_spec("folder"))
    assert [g.group for g in folder.groups] == ["s"] and folder.plates() == []


def test_a_spec_that_covers_nothing_or_is_bad_is_one_line():
    preds = [Prediction("img_0001.tif", ("a",), 0.9, {"a": 0.9})]
    with pytest.raises(ProjectError, match="matches none of the 1 predicted image ids"):
        summarize_groups(preds, parse_group_spec(DEFAULT_GROUP_BY))
    with pytest.raises(ConfigError, match="no named group"):
        parse_group_spec("[A-P][0-9]+")


def test_a1_and_a01_are_one_well_and_1536_wells_with_an_explicit_spec():
    preds = [Prediction(f"p1/{w}_s{k}.tif", ("a",), 0.9, {"a": 0.9}) for k, w in enumerate(["A1", "A01", "a01"])]
    summary = summarize_groups(preds, parse_group_spec(DEFAULT_GROUP_BY))
    assert [(g.plate, g.well, g.n) for g in summary.groups] == [("p1", "A01", 3)]
    big = [Prediction(f"p1/{well_name(r, c)}_f1.tif", ("a",), 0.9, {"a": 0.9}) for r in (0, 16, 31) for c in (0, 47)]
    spec = parse_group_spec(r"(?P<plate>[^/]+)/(?P<well>[A-Z]{1,2}[0-9]{2})_")
    summary = summarize_groups(big, spec)
    assert summary.layout == PlateLayout(32, 48) and len(summary.groups) == 6 and not summary.notes
    assert [g.well for g in summary.groups][-1] == "AF48"
