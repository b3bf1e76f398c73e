"""Predicting a screen: many folders and patterns, chunks of bounded size, resuming a --csv file, a project's
--resume, and torchrun with two CPU processes writing one file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.cli import main
from napari_cellclass.core.predictions import read_predictions, read_predictions_csv
from napari_cellclass.learn import load_model, predict, train
from napari_cellclass.learn.checkpoint import TrainedModel
from napari_cellclass.learn.data import chunks as chunks_module

from .test_distributed import _free_port

WELLS = ("plate1/A01", "plate1/A02", "plate2/B01")


@pytest.fixture(scope="module")
def model_dir(tiny_sample, tmp_path_factory):
    from napari_cellclass.learn.config import TrainConfig

    from .conftest import FAST

    out = tmp_path_factory.mktemp("screen_model") / "m"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 1}), out)
    return out


@pytest.fixture(scope="module")
def trained(model_dir):
    return load_model(model_dir)


@pytest.fixture
def screen(tiny_sample, tmp_path):
    """30 two-channel images in three well folders of two plates (10 each), plus a note that is no image."""
    root = tmp_path / "screen"
    ids = list(tiny_sample.image_ids)
    for w, well in enumerate(WELLS):
        (root / well).mkdir(parents=True)
        for f in range(10):
            shutil.copy(tiny_sample.path(ids[(10 * w + f) % len(ids)]), root / well / f"field{f + 1}.tif")
    (root / "plate2" / "notes.txt").write_text("not an image")
    return root


def _files(root, well):
    return [str(root / well / f"field{f}.tif") for f in range(1, 11)]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_folders_files_and_patterns_give_path_ids_once_in_order(trained, screen):
    one = screen / "plate1" / "A02" / "field3.tif"
    res = predict(trained, [screen / "plate1" / "A01", str(screen / "plate2" / "**" / "*.tif"), one,
                            str(screen / "plate1" / "A01" / "field1.tif")], device="cpu")
    assert res.ids == [*_files(screen, "plate1/A01"), *_files(screen, "plate2/B01"), str(one)]
    assert res.probabilities.shape == (21, 2) and not res.skipped
    # a pattern matching folders gives the images below them; one pattern alone works too
    by_plate = predict(trained, str(screen / "plate*"), device="cpu")
    assert by_plate.ids == [*_files(screen, "plate1/A01"), *_files(screen, "plate1/A02"), *_files(screen, "plate2/B01")]
    np.testing.assert_allclose(by_plate.probabilities[:10], res.probabilities[:10], atol=1e-6)


def test_cli_many_paths_and_one_line_errors(model_dir, screen, tmp_path, capsys):
    out_csv = tmp_path / "p.csv"
    code, out, _ = _run(capsys, "predict", screen / "plate1", str(screen / "plate2" / "*" / "field1*.tif"),
                        "--model", model_dir, "--csv", out_csv, "--json", "--device", "cpu")
    assert code == 0
    res = json.loads(out)
    assert [p["image_id"] for p in res["predictions"]] == [
        *_files(screen, "plate1/A01"), *_files(screen, "plate1/A02"),
        str(screen / "plate2/B01/field1.tif"), str(screen / "plate2/B01/field10.tif")]
    assert list(read_predictions_csv(out_csv)) == [p["image_id"] for p in res["predictions"]]

    for bad in (tmp_path / "no_such_plate", str(screen / "plate9*" / "*.tif")):
        code, out, err = _run(capsys, "predict", screen / "plate1", bad, "--model", model_dir, "--device", "cpu")
        assert code != 0 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in err


class _CountingStore(chunks_module.ImageStore):
    """An ImageStore that records its size and how many are open at once."""

    sizes: list[int] = []
    live = 0
    most_live = 0

    def __init__(self, items, *args, **kwargs):
        super().__init__(items, *args, **kwargs)
        type(self).sizes.append(len(items))
        type(self).live += 1
        type(self).most_live = max(type(self).most_live, type(self).live)
        self._open = True

    def close(self):
        if self._open:
            type(self).live -= 1
            self._open = False
        super().close()


def test_chunks_give_the_same_results_and_never_hold_more_than_two_chunks(trained, screen, monkeypatch):
    whole = predict(trained, screen, chunk_size=1000, device="cpu")
    monkeypatch.setattr(_CountingStore, "sizes", [])
    monkeypatch.setattr(chunks_module, "ImageStore", _CountingStore)
    done = []
    chunked = predict(trained, screen, chunk_size=7, device="cpu", progress=lambda d, t: done.append((d, t)))
    assert chunked.ids == whole.ids and len(whole) == 30
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, atol=1e-6)
    assert _CountingStore.sizes == [7, 7, 7, 7, 2]  # one store per chunk, none bigger than a chunk
    assert _CountingStore.most_live <= 2 and _CountingStore.live == 0  # the next decodes while one is used; all closed
    assert done[-1] == (60, 60) and all(a[0] <= b[0] for a, b in zip(done, done[1:], strict=False))


def _rows(path):
    return path.read_text().splitlines()[1:]


def test_resume_skips_exactly_the_rows_a_killed_run_left(trained, screen, tmp_path):
    out = tmp_path / "p.csv"
    full = predict(trained, screen, csv=out, chunk_size=7, device="cpu")
    assert len(_rows(out)) == 30 and full.reused == 0
    # a run killed while appending its third chunk: two chunks complete, half a line of the third
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:15]) + lines[15][:20])

    again = predict(trained, screen, csv=out, chunk_size=7, device="cpu")
    assert again.reused == 14 and again.ids == full.ids[14:]
    np.testing.assert_allclose(again.probabilities, full.probabilities[14:], atol=1e-6)
    stored = read_predictions_csv(out)
    assert list(stored) == full.ids and len(_rows(out)) == 30  # each image once, the torn line gone
    assert {p.model_id for p in stored.values()} == {trained.identity}

    before = out.read_bytes()
    third = predict(trained, screen, csv=out, device="cpu")
    assert third.reused == 30 and len(third) == 0 and out.read_bytes() == before

    # an image written since its prediction is predicted again, and only that one
    changed = screen / "plate1" / "A02" / "field4.tif"
    later = time.time() + 5
    os.utime(changed, (later, later))
    fourth = predict(trained, screen, csv=out, device="cpu")
    assert fourth.ids == [str(changed)] and fourth.reused == 29
    assert list(read_predictions_csv(out)) == [i for i in full.ids if i != str(changed)] + [str(changed)]

    # --fresh: everything again, the file started afresh
    fresh = predict(trained, screen, csv=out, device="cpu", resume=False)
    assert fresh.reused == 0 and len(fresh) == 30 and len(_rows(out)) == 30


def test_a_changed_model_predicts_everything_again(trained, screen, tmp_path, capsys, model_dir):
    out = tmp_path / "p.csv"
    code, text, _ = _run(capsys, "predict", screen, "--model", model_dir, "--csv", out, "--device", "cpu")
    assert code == 0 and len(_rows(out)) == 30
    code, text, _ = _run(capsys, "predict", screen, "--model", model_dir, "--csv", out, "--device", "cpu")
    assert code == 0 and "skipped 30 image(s) already predicted by this model" in text

    import copy

    import torch

    altered = copy.deepcopy(trained.model)
    with torch.no_grad():
        altered.head.fc.bias.add_(0.5)
    other = TrainedModel(altered, trained.path, trained.config)  # same folder name, other weights
    assert other.identity != trained.identity and other.identity.startswith(trained.name + "@")
    res = predict(other, screen, csv=out, device="cpu")
    assert res.reused == 0 and len(res) == 30
    stored = read_predictions_csv(out)
    assert len(stored) == 30 == len(_rows(out)) and {p.model_id for p in stored.values()} == {other.identity}


def test_project_resume_is_asked_for_and_fresh_is_the_default(trained, sample_project):
    todo = sample_project.unlabelled_ids()
    first = predict(trained, sample_project, chunk_size=4, device="cpu")
    assert first.ids == todo and first.stored_in
    stored = read_predictions(sample_project.root)
    assert set(stored) == set(todo) and {p.model_id for p in stored.values()} == {trained.identity}

    resumed = predict(trained, sample_project, resume=True, device="cpu")
    assert resumed.reused == len(todo) and len(resumed) == 0
    again = predict(trained, sample_project, device="cpu")  # today's behaviour: everything again
    assert again.reused == 0 and again.ids == todo

    touched = sample_project.path(todo[0])
    later = time.time() + 5
    os.utime(touched, (later, later))
    partial = predict(trained, sample_project, resume=True, device="cpu")
    assert partial.ids == [todo[0]] and partial.reused == len(todo) - 1


def _torchrun(model_dir, screen, out_dir, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "napari_cellclass.cli", "predict", str(screen / "plate1"),
           str(screen / "plate2" / "**" / "*.tif"), "--model", str(model_dir), "--csv", str(out_dir / "p.csv"),
           "--chunk-size", "4", "--device", "cpu", "--json"]
    import napari_cellclass

    src = str(Path(napari_cellclass.__file__).resolve().parents[1])  # this checkout, whatever the working folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("CELLCLASS_PROGRESS", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_torchrun_two_processes_write_one_file_with_the_single_process_results(trained, model_dir, screen,
                                                                                tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _torchrun(model_dir, screen, out_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    objects = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(objects) == 1, proc.stdout  # rank 1 prints nothing
    single = predict(trained, screen, device="cpu")
    assert [p["image_id"] for p in objects[0]["predictions"]] == single.ids
    assert [p.name for p in out_dir.iterdir()] == ["p.csv"]
    stored = read_predictions_csv(out_dir / "p.csv")
    assert list(stored) == single.ids and len(_rows(out_dir / "p.csv")) == 30
    probs = np.array([[stored[i].probabilities[c] for c in trained.classes] for i in single.ids])
    np.testing.assert_allclose(probs, single.probabilities, atol=1e-5)


def test_torchrun_a_bad_image_on_one_rank_stops_both_with_one_error(model_dir, screen, tmp_path):
    import tifffile

    bad = screen / "plate1" / "A01" / "field6.tif"  # 6th image: rank 1's part of the first chunk
    tifffile.imwrite(bad, np.zeros((3, 64, 64), np.uint16), photometric="minisblack")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _torchrun(model_dir, screen, out_dir, tmp_path)  # a hang would time out
    assert proc.returncode != 0
    assert "field6.tif: has 3 channel(s) but the model takes 2" in proc.stderr
    assert not [line for line in proc.stdout.splitlines() if '"ok": true' in line]


def test_resumed_rows_get_the_verdict_of_the_new_minimum_confidence(trained, screen, tmp_path):
    out = tmp_path / "p.csv"
    predict(trained, screen, csv=out, device="cpu")
    assert "verdict" not in out.read_text().splitlines()[0]
    res = predict(trained, screen, csv=out, device="cpu", min_confidence=0.9)
    assert res.reused == 30 and len(res) == 0
    stored = read_predictions_csv(out)
    assert len(stored) == 30
    for p in stored.values():
        assert p.verdict == ("uncertain" if p.confidence < 0.9 else p.classes[0])


def test_a_summary_of_a_resumed_run_covers_the_skipped_images(model_dir, screen, tmp_path, capsys):
    argv = ["predict", screen, "--model", model_dir, "--csv", tmp_path / "p.csv", "--device", "cpu",
            "--group-by", r"(?P<well>[A-H]\d\d)/field", "--json"]
    code, out, _ = _run(capsys, *argv)
    first = json.loads(out)
    code, out, _ = _run(capsys, *argv)
    again = json.loads(out)
    assert code == 0 and again["n"] == 0 and again["reused"] == 30
    groups = {g["group"]: g["n"] for g in again["summary"]["groups"]}
    assert groups == {g["group"]: g["n"] for g in first["summary"]["groups"]} and sum(groups.values()) == 30


def test_only_empty_folders_is_one_line_not_zero_predictions(model_dir, tmp_path, capsys):
    from napari_cellclass.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "also_empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), str(tmp_path / "also_empty"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image found" in err[0] and "empty" in err[0]
