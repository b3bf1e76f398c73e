"""Command line: train / predict / evaluate with --json on a tiny sample; bad input is one line, exit 2."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from napari_cellclass.cli import main

FAST_ARGS = ["--backbone", "mobilenetv3_small_050", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
             "--device", "cpu"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_predict_evaluate_json(tiny_sample, tmp_path, capsys):
    model = tmp_path / "model"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("lr: 0.003\naug_rot90: false\n")
    code, out, _ = _run(capsys, "train", str(tiny_sample.root), *FAST_ARGS, "--config", str(cfg), "--out", str(model),
                        "--json")
    assert code == 0
    res = json.loads(out)
    assert res["ok"] and res["model"] == str(model) and res["best_epoch"] == 1
    assert res["config"]["lr"] == 0.003 and res["config"]["aug_rot90"] is False and res["config"]["epochs"] == 1
    assert (model / "model.safetensors").exists()

    code, out, _ = _run(capsys, "predict", str(tiny_sample.root), "--model", str(model), "--json",
                        "--csv", str(tmp_path / "p.csv"), "--truth", str(tiny_sample.root / "ground_truth.csv"),
                        "--min-confidence", "0.6")
    assert code == 0
    res = json.loads(out)
    assert res["n"] == len(tiny_sample.unlabelled_ids()) and (tmp_path / "p.csv").exists()
    assert 0 <= res["truth"]["accuracy"] <= 1 and res["truth"]["n"] == res["n"]
    # the verdict: the class at or above the minimum confidence, else "uncertain" (JSON and the CSV file)
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    for p in res["predictions"]:
        expected = p["predicted"][0] if p["confidence"] >= 0.6 else "uncertain"
        assert p["verdict"] == rows[p["image_id"]]["verdict"] == expected
    assert res["uncertain"] == sum(p["confidence"] < 0.6 for p in res["predictions"])

    code, out, _ = _run(capsys, "evaluate", str(tiny_sample.root), "--model", str(model), "--split", "all", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["split"] == "all" and "confusion_matrix" in res["metrics"]

    code, out, _ = _run(capsys, "evaluate", str(tiny_sample.root), "--model", str(model))
    assert code == 0 and "confusion matrix" in out and "precision" in out

    # --out writes the Metrics dock's three CSV files
    folder = tmp_path / "eval"
    code, out, _ = _run(capsys, "evaluate", str(tiny_sample.root), "--model", str(model), "--split", "all",
                        "--out", str(folder), "--json")
    assert code == 0
    res = json.loads(out)
    stem = f"model_{res['split']}"
    assert res["files"] == [str(folder / f"{stem}_{kind}") for kind in (
        "metrics.csv", "predictions.csv", "confusion_matrix.csv", "reliability.csv", "coverage.csv", "reliability.png")]
    with open(folder / f"{stem}_reliability.csv", newline="") as fh:
        bins = list(csv.DictReader(fh))
    assert len(bins) == 15 and sum(int(b["count"]) for b in bins) == res["n"]
    assert Image.open(folder / f"{stem}_reliability.png").size[0] > 400
    # the same export again replaces its own figure; a picture of the user's under that name is kept
    again = ["evaluate", str(tiny_sample.root), "--model", str(model), "--split", "all", "--out", str(folder)]
    assert _run(capsys, *again)[0] == 0
    Image.new("RGB", (8, 8)).save(folder / f"{stem}_reliability.png")
    code, _, err = _run(capsys, *again)
    assert code == 2 and "reliability.png: this is an existing image" in err
    with open(folder / f"{stem}_metrics.csv", newline="") as fh:
        metrics = list(csv.reader(fh))
    assert metrics[0] == ["class", "precision", "recall", "f1", "support"]
    assert [r[0] for r in metrics[1:len(res["classes"]) + 1]] == res["classes"]
    with open(folder / f"{stem}_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == res["n"] and set(rows[0]) == {"image_id", "true", "predicted", "confidence", "correct"}
    with open(folder / f"{stem}_confusion_matrix.csv", newline="") as fh:
        cm = list(csv.reader(fh))
    assert cm[0][1:] == res["classes"] and sum(int(v) for r in cm[1:] for v in r[1:]) == res["n"]
    assert res["metrics"]["confusion_matrix"] == [[int(v) for v in r[1:]] for r in cm[1:]]
    code, out, _ = _run(capsys, "evaluate", str(tiny_sample.root), "--model", str(model), "--out", str(folder))
    assert code == 0 and f"written: {folder}" in out
    # inside the project the diagram would become one of its images (a 3-channel PNG that predict trips on)
    images_before = list(tiny_sample.image_ids)
    inside = tiny_sample.root / "evaluation"
    code, _, err = _run(capsys, "evaluate", str(tiny_sample.root), "--model", str(model), "--out", str(inside))
    assert code == 2 and "is inside the project" in err and "_evaluation beside it" in err
    assert not inside.exists()
    from napari_cellclass.core.project import Project

    assert list(Project.open(tiny_sample.root).image_ids) == images_before


def test_evaluate_help_names_the_files(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in ("metrics", "predictions", "confusion_matrix"):
        assert f"<model>_<split>_{kind}.csv" in text
    assert "--out DIR" in text


@pytest.mark.parametrize("argv,pattern", [
    (["train", "{root}", "--epochs", "0"], "epochs=0 is not allowed"),
    (["train", "{root}", "--backbone", "no_such_net_xyz"], "no_such_net_xyz"),
    (["train", "{tmp}/missing"], "does not exist"),
    (["predict", "{root}", "--model", "{tmp}"], "not a napari-cellclass model folder"),
    (["evaluate", "{root}", "--model", "{tmp}/none"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(tiny_sample, tmp_path, capsys, argv, pattern):
    args = [a.format(root=tiny_sample.root, tmp=tmp_path) for a in argv]
    code, out, err = _run(capsys, *args, "--json")
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and pattern in err
    assert json.loads(out)["ok"] is False


def test_backbones_listed(capsys):
    code, out, _ = _run(capsys, "backbones", "--json")
    assert code == 0
    names = {b["name"] for b in json.loads(out)["backbones"]}
    assert {"resnet18", "mobilenetv2"} <= names


def test_truth_file_is_read_bounded_and_before_predicting(tmp_path, capsys):
    from napari_cellclass.cli.learn_cmds import read_truth
    from napari_cellclass.core.errors import CellclassError

    from ._fifo import fifo_with_late_writer

    fifo = fifo_with_late_writer(tmp_path / "truth.csv", "a.tif,x\n")
    for path in (fifo, "/dev/zero"):
        with pytest.raises(CellclassError, match="not a regular file") as info:
            read_truth(str(path))
        assert "\n" not in str(info.value)
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfimage_id,class\na.tif,x\n")
    assert read_truth(str(tmp_path / "t.csv")) == {"a.tif": "x"}
    # a bad --truth is refused before the model is even opened
    code, out, err = _run(capsys, "predict", str(tmp_path), "--model", str(tmp_path / "none"), "--truth",
                          str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err and len(err.strip().splitlines()) == 1


def test_an_interrupted_run_says_whether_a_model_was_saved():
    from napari_cellclass.cli.learn_cmds import _TrainReport
    from napari_cellclass.learn.config import TrainConfig
    from napari_cellclass.learn.events import CheckpointSaved

    report = _TrainReport(TrainConfig(), main_rank=True, quiet=True)
    assert "no model was saved" in report.interrupted()
    report.show(CheckpointSaved("/m/last", 1, "last"))
    assert "no model was saved" in report.interrupted()  # the resume state is not a model
    report.show(CheckpointSaved("/m", 1, "best", "accuracy", 0.5))
    assert report.interrupted() == "interrupted; the best model so far is kept in /m"


def test_ctrl_c_while_the_options_load_is_one_line(monkeypatch, capsys, tmp_path):
    """The training options import torch while the command line is parsed (a second or more)."""
    import argparse

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", interrupted)
    try:
        code = main(["train", str(tmp_path)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl+C escaped as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip() == "napari-cellclass: error: interrupted"
