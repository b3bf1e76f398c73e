"""Defaults that do well on imbalanced data: class weights when needed, a found learning rate."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from napari_cellclass.learn import Log, TrainConfig, run_training
from napari_cellclass.learn.builders import class_weighting


def _parts(counts, multi=False):
    targets = np.repeat(np.arange(len(counts)), counts)
    data = SimpleNamespace(classes=tuple(f"c{k}" for k in range(len(counts))), multi_label=multi)
    return data, SimpleNamespace(targets={"train": targets})


def test_imbalanced_classes_are_weighted_by_default_and_the_run_says_so():
    data, images = _parts([450, 205])
    weights, note = class_weighting(TrainConfig(), data, images)
    assert weights is not None and weights[1] > weights[0]
    assert weights[1] / weights[0] == np.float32(450 / 205)
    assert "c0 450 vs c1 205" in note and "2.2x" in note
    assert class_weighting(TrainConfig(), *_parts([100, 80])) == (None, None)  # 1.25x: left alone
    assert class_weighting(TrainConfig(class_weights="none"), data, images) == (None, None)
    assert class_weighting(TrainConfig(balanced_sampler=True), data, images) == (None, None)  # the sampler does it
    assert class_weighting(TrainConfig(class_weights="balanced"), *_parts([100, 100]))[0] is not None


def test_lr_auto_runs_a_range_test_and_trains_with_its_rate(tiny_sample, fast_config, tmp_path):
    events = list(run_training(tiny_sample, fast_config(epochs=1, lr="auto"), tmp_path / "m"))
    logs = [e.message for e in events if isinstance(e, Log)]
    assert any("range test" in m for m in logs)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    found = cfg["lr_find"]
    assert cfg["train_config"]["lr_find"] and cfg["train_config"]["lr"] == found["lr"]
    assert 1e-5 <= found["lr"] <= 0.1 and len(found["lrs"]) == len(found["losses"]) >= 8
    assert found["lrs"] == sorted(found["lrs"])
