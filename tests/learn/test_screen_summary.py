"""Per-well summaries from the command line: predict --summary, summarize, the plate heatmaps; bad input exits 2."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.cli import main
from napari_cellclass.core.groups import parse_group_spec
from napari_cellclass.core.plates import DEFAULT_GROUP_BY, parse_well, well_name
from napari_cellclass.core.predictions import Prediction
from napari_cellclass.core.project import Project
from napari_cellclass.learn.screen_summary import summarize

from .test_cli_learn import FAST_ARGS, _run

REGEX = r"(?P<plate>plate[0-9])/(?P<well>[A-P][0-9]{2})"


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A labelled 2-plate screen (``plate1/B02_f1.tif``: 2 plates x 6 wells x 2 fields) and a one-epoch model
    trained with ``--group-by REGEX``."""
    import tifffile

    root = tmp_path_factory.mktemp("screen") / "screen"
    rng = np.random.default_rng(0)
    labels = {}
    for p in (1, 2):
        for w in range(6):
            for f in range(2):
                iid = f"plate{p}/{'BCDEFG'[w]}{w + 2:02d}_f{f + 1}.tif"
                (root / iid).parent.mkdir(parents=True, exist_ok=True)
                bright = 200 if w % 2 else 40
                tifffile.imwrite(root / iid, rng.integers(bright - 30, bright + 30, (24, 24), dtype=np.uint8))
                labels[iid] = ("a" if w % 2 else "b",)
    project = Project.open(root)
    project.add_classes(["a", "b"])
    project.apply_labels(labels, description="test labels")
    model = root.parent / "model"
    assert main(["train", str(root), "--group-by", REGEX, *FAST_ARGS, "--out", str(model), "--json"]) == 0
    return project, model


def _pixels_vary(path) -> bool:
    with Image.open(path) as im:
        assert im.text.get("Software") == "napari-cellclass"
        return float(np.asarray(im.convert("L"), np.float64).std()) > 10


def test_predict_summary_end_to_end(screen, tmp_path, capsys):
    project, model = screen
    out_dir = tmp_path / "summary"
    code, out, err = _run(capsys, "predict", str(project.root), "--model", str(model), "--all", "--summary",
                          str(out_dir), "--heatmap-class", "b", "--json")
    assert code == 0, err
    res = json.loads(out)
    s = res["summary"]
    assert s["ok"] and s["group_by"] == REGEX and s["class"] == "b"  # the model's training group_by
    assert s["plates"] == ["plate1", "plate2"] and s["layout"].startswith("96 wells")
    heatmaps = sorted(p.name for p in out_dir.glob("heatmap_*.png"))
    assert heatmaps == ["heatmap_plate1_b.png", "heatmap_plate2_b.png"]
    assert sorted(s["files"]) == sorted(str(out_dir / n) for n in ["summary.csv", *heatmaps])
    assert all(_pixels_vary(out_dir / n) for n in heatmaps)
    # the CSV and the JSON say what the per-image predictions say
    expected: dict[str, list[str]] = {}
    for p in res["predictions"]:
        expected.setdefault(p["image_id"].split("_")[0], []).append(p["predicted"][0])
    with open(out_dir / "summary.csv", newline="") as fh:
        rows = {r["group"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(expected) == {g["group"] for g in s["groups"]}
    for g in s["groups"]:
        preds = expected[g["group"]]
        assert g["n"] == int(rows[g["group"]]["n"]) == len(preds) == 2
        assert g["counts"] == {"a": preds.count("a"), "b": preds.count("b")}
        assert float(rows[g["group"]]["fraction:b"]) == pytest.approx(preds.count("b") / 2)

    # the same predictions summarised again from the project, without predicting (the model is not one of the
    # project's, so the default group_by, which finds the same wells)
    code, out, _ = _run(capsys, "summarize", str(project.root), "--json")
    again = json.loads(out)
    assert code == 0 and again["group_by"] == DEFAULT_GROUP_BY and again["class"] == "a" and again["files"] == []
    assert [g["group"] for g in again["groups"]] == [g["group"] for g in s["groups"]]
    assert [g["counts"] for g in again["groups"]] == [g["counts"] for g in s["groups"]]


def test_summarize_a_csv_with_the_default_group_by(tmp_path, capsys):
    csv_file = tmp_path / "p.csv"
    rows = ["image_id,predicted,confidence,verdict,p:a,p:b,model,timestamp"]
    for w, verdicts in (("B03", ["a", "a", "uncertain"]), ("C04", ["b", "b", "a"])):
        for i, v in enumerate(verdicts):
            cls = "b" if v == "uncertain" else v
            rows.append(f"/data/Plate_01/{w}_f{i}.tif,{cls},0.8,{v},{0.8 if cls == 'a' else 0.2},"
                        f"{0.2 if cls == 'a' else 0.8},m,t")
    csv_file.write_text("\n".join(rows) + "\n")
    code, out, err = _run(capsys, "summarize", str(csv_file), "--out", str(tmp_path / "out"), "--class", "a")
    assert code == 0, err
    assert "Plate_01/B03" in out and "written:" in out
    assert (tmp_path / "out" / "heatmap_Plate_01_a.png").exists()
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        got = {r["well"]: r for r in csv.DictReader(fh)}
    assert got["B03"]["count:a"] == "2" and got["B03"]["count:uncertain"] == "1"
    assert got["C04"]["fraction:b"] == f"{2 / 3:.6f}" and got["C04"]["plate"] == "Plate_01"


def test_one_heatmap_per_plate_and_384_wells(tmp_path):
    wells = [(r, c) for r in range(16) for c in range(24) if (r, c) != (5, 5)]
    preds = [Prediction(f"screen/plate{p}/{well_name(r, c)}_s1.tif", ("a" if (r + c + p) % 3 else "b",), 0.9,
                        {"a": 0.5, "b": 0.5}) for p in range(3) for r, c in wells]
    summary, res = summarize(preds, None, tmp_path / "out", "b")
    assert res["layout"] == "384 wells (16 x 24)" and len(summary.plates()) == 3
    pngs = sorted((tmp_path / "out").glob("heatmap_*_b.png"))
    assert [p.name for p in pngs] == ["heatmap_plate0_b.png", "heatmap_plate1_b.png", "heatmap_plate2_b.png"]
    assert all(_pixels_vary(p) for p in pngs)
    frac, n = summary.grid("plate0", "b")
    assert np.isnan(frac[5, 5]) and n[5, 5] == 0 and frac[0, 0] == 1.0 and frac[0, 1] == 0.0
    assert parse_well(res["groups"][0]["well"]) == (0, 0)
    assert parse_group_spec(DEFAULT_GROUP_BY).pattern.search(preds[0].image_id).group("plate") == "plate0"


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--group-by", "(?P<well>[A-P"], "not a valid regular expression"),
    (["--group-by", "[A-P][0-9]+"], "no named group"),
    (["--heatmap-class", "nope"], "heatmap class 'nope' is not a column of the predictions; use one of: a, b"),
])
def test_bad_summary_options_are_one_line_exit_2_before_predicting(screen, tmp_path, capsys, extra, pattern):
    project, model = screen
    code, out, err = _run(capsys, "predict", str(project.root), "--model", str(model), "--all", "--csv",
                          str(tmp_path / "p.csv"), "--summary", str(tmp_path / "s"), *extra)
    assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "s").exists()  # refused before predicting


def test_summary_folder_inside_the_project_and_bad_sources_are_refused(screen, tmp_path, capsys):
    project, model = screen
    code, _, err = _run(capsys, "predict", str(project.root), "--model", str(model), "--summary",
                        str(project.root / "summary"))
    assert code == 2 and "inside the project" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "summarize", str(tmp_path / "missing.csv"))
    assert code == 2 and "no such predictions CSV" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,predicted,confidence,p:a\nplate1/B03.tif,a,0.9,0.9\n")
    code, _, err = _run(capsys, "summarize", str(bad), "--class", "zzz")
    assert code == 2 and "'zzz' is not a column" in err and len(err.strip().splitlines()) == 1
