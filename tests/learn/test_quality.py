"""Honest quality checks on real training runs (CPU, a minute or two in all).

- The synthetic U2OS sample (texture, not brightness, separates the classes): the default
  settings reach >= 0.9 validation accuracy and >= 0.85 accuracy on the unlabelled images
  against ``ground_truth.csv`` (typically 1.0 and ~0.97 with 200 images).
- scikit-learn's 8x8 digits, upscaled to 32 px PNGs: 10 classes (chance 0.1); every
  single-label loss (CE, focal, KL) learns well above chance.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.project import Project
from napari_cellclass.core.sample import ground_truth
from napari_cellclass.learn import TrainConfig, predict, train

pytestmark = pytest.mark.slow


def test_sample_dataset_reaches_high_accuracy(shared_sample, tmp_path):
    cfg = TrainConfig(device="cpu", epochs=10)  # the defaults otherwise (mobilenetv3_small_100, 96 px)
    result = train(shared_sample, cfg, tmp_path / "m")
    assert result.best_metrics["accuracy"] >= 0.9, result.history
    res = predict(result.model_dir, shared_sample, write=False)
    truth = ground_truth(shared_sample.root)
    acc = np.mean([truth[i] == c for i, c in zip(res.ids, res.top_class, strict=True)])
    assert acc >= 0.85, acc


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.permutation(np.flatnonzero(d.target == k))[:40] for k in range(10)])
    root = tmp_path_factory.mktemp("digits") / "digits"
    (root / "images").mkdir(parents=True)
    for i in pick:
        img = (d.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(img).resize((32, 32), Image.BILINEAR).save(root / "images" / f"d{i:04d}.png")
    p = Project.open(root)
    for k in range(10):
        p.add_class(str(k))
    for k in range(10):
        p.set_labels([f"images/d{i:04d}.png" for i in pick if d.target[i] == k], (str(k),))
    return p


@pytest.mark.parametrize("loss", ["ce", "focal", "kl"])
def test_digits_learn_well_above_chance(digits_project, tmp_path, loss):
    cfg = TrainConfig(backbone="mobilenetv3_small_100", input_size=32, epochs=8, batch_size=32, lr=3e-3,
                      loss=loss, aug_flips=False, aug_rot90=False, aug_affine_degrees=8.0, device="cpu")
    result = train(digits_project, cfg, tmp_path / "m")
    assert result.best_metrics["accuracy"] >= 0.6, (loss, result.history[-1])
