"""Model folders: round trip, and clear errors for foreign, old, incomplete or altered folders."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_cellclass.core.errors import ModelFolderError
from napari_cellclass.learn import load_model, train


@pytest.fixture(scope="module")
def model_dir(tiny_sample, tmp_path_factory):
    from napari_cellclass.learn.config import TrainConfig

    from .conftest import FAST

    out = tmp_path_factory.mktemp("models") / "m"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 1, "train_percent": 60.0, "test_percent": 20.0}), out)
    return out


def test_round_trip(model_dir, tiny_sample):
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["format"] == "napari-cellclass/model" and cfg["format_version"] == 1
    for key in ("backbone", "classes", "in_chans", "input_size", "normalisation", "train_config", "seed", "split",
                "history", "best_epoch", "package_versions"):
        assert key in cfg
    ids = cfg["split"]["ids"]
    assert set(ids["train"]) | set(ids["val"]) | set(ids["test"]) == set(tiny_sample.labelled_ids())
    assert ids["test"] and not set(ids["train"]) & set(ids["val"])
    assert {"torch", "timm", "napari-cellclass"} <= set(cfg["package_versions"])
    m = load_model(model_dir)
    x = torch.zeros(2, m.in_chans, m.input_size, m.input_size)
    with torch.inference_mode():
        assert m.model(x).shape == (2, len(m.classes))
    saved = load_file(model_dir / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in m.model.state_dict().items())


def _copy(model_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(model_dir, dst)
    return dst


def _edit(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("change,pattern", [
    ({"format_version": 0}, "older than this napari-cellclass"),
    ({"format_version": 99}, "newer than this napari-cellclass"),
    ({"format": "keras"}, "another tool"),
])
def test_other_formats(model_dir, tmp_path, change, pattern):
    d = _copy(model_dir, tmp_path)
    _edit(d, **change)
    with pytest.raises(ModelFolderError, match=pattern):
        load_model(d)


def test_missing_files_and_foreign_folders(model_dir, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model(tmp_path / "nope")
    foreign = tmp_path / "keras_model"
    foreign.mkdir()
    (foreign / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(ModelFolderError, match="another tool"):
        load_model(foreign)
    d = _copy(model_dir, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="model.safetensors is missing"):
        load_model(d)


def test_tampered_shapes_and_damaged_weights(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path)
    _edit(d, classes=["a", "b", "c"])  # description no longer matches the weights
    with pytest.raises(ModelFolderError, match="another shape"):
        load_model(d)
    d2 = tmp_path / "d2"
    shutil.copytree(model_dir, d2)
    state = load_file(d2 / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, d2 / "model.safetensors")
    with pytest.raises(ModelFolderError, match="missing"):
        load_model(d2)
    (d2 / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelFolderError, match="unreadable weights"):
        load_model(d2)


def test_loading_never_unpickles(model_dir, monkeypatch):
    import pickle

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_model(model_dir).classes
