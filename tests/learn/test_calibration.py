"""Calibrated confidence: temperature scaling recovers a known temperature, the calibration error, the
coverage threshold, per-class thresholds, and a trained model's calibration applied by predict and evaluate."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_cellclass.learn import calibration as cal


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n=3000, k=3, t=2.5, seed=0):
    """Probabilities whose logits are ``t`` times too large, and labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    y0 = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y0] += 1.5
    true = _softmax(z)
    labels = np.array([rng.choice(k, p=p) for p in true])
    return _softmax(z * t), labels


def test_rescale_is_exact_and_keeps_the_top_class():
    p, _ = _overconfident(200)
    back = cal.rescale(cal.rescale(p, 2.5, False), 1 / 2.5, False)
    np.testing.assert_allclose(back, p, atol=1e-5)
    assert (cal.rescale(p, 3.0, False).argmax(1) == p.argmax(1)).all()
    q = np.array([[0.9, 0.2]])
    logit = np.log(q / (1 - q))
    np.testing.assert_allclose(cal.rescale(q, 2.0, True), 1 / (1 + np.exp(-logit / 2)), atol=1e-6)


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_error():
    p, y = _overconfident(t=2.5)
    out = cal.calibrate(p, y, False)
    assert out["temperature"] == pytest.approx(2.5, rel=0.1)
    assert out["ece_before"] > 0.1 and out["ece_after"] < 0.03
    assert out["bins"] == 15 and out["n"] == len(y)


def test_a_calibrated_model_keeps_temperature_one():
    p, y = _overconfident(t=1.0)
    assert cal.fit_temperature(p, y, False) == pytest.approx(1.0, abs=0.1)


def test_expected_calibration_error_by_hand():
    # two images at confidence 0.9 (one right) and two at 0.6 (both right): |0.5-0.9|/2 + |1.0-0.6|/2
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    assert cal.expected_calibration_error(p, y, False) == pytest.approx(0.4)
    bins = cal.reliability_bins(p, y, False)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4


def test_coverage_threshold_keeps_the_most_images_at_the_target():
    # confidences 0.99..0.50; the three least confident are wrong
    conf = np.linspace(0.99, 0.5, 20)
    p = np.stack([conf, 1 - conf], 1)
    y = np.zeros(20, int)
    y[-3:] = 1
    reach = cal.threshold_for_accuracy(cal.coverage_curve(p, y, False), 0.95)
    # 17 right of the first 17; of the first 18, 17 right = 0.944 < 0.95
    assert reach["coverage"] == pytest.approx(17 / 20) and reach["threshold"] == pytest.approx(conf[16])
    assert reach["accuracy"] == 1.0
    assert cal.threshold_for_accuracy(cal.coverage_curve(p, np.ones(20, int), False), 0.95) is None


def test_class_thresholds_pick_the_best_f1():
    # class 0 positives sit at 0.3..0.4, negatives below 0.2: a threshold of 0.5 misses them all
    p = np.array([[0.35, 0.9], [0.38, 0.8], [0.1, 0.7], [0.15, 0.2]])
    y = np.array([[1, 1], [1, 1], [0, 1], [0, 0]])
    t = cal.class_thresholds(p, y)
    assert 0.15 < t[0] <= 0.35 and 0.2 < t[1] <= 0.7


def test_training_calibrates_and_predict_applies_the_temperature(tiny_sample, fast_config, tmp_path):
    from napari_cellclass.learn import load_model, predict, train
    from napari_cellclass.learn.evaluate import evaluate

    result = train(tiny_sample, fast_config(epochs=1), out_dir=tmp_path / "m")
    config = json.loads((result.model_dir / "config.json").read_text())
    block = dict(config["calibration"])
    assert block["split"] == "val" and block["n"] == len(config["split"]["ids"]["val"]) and block["temperature"] > 0
    assert block["ece_after"] <= block["ece_before"] + 1e-9

    # predict divides the logits by the stored temperature
    trained = load_model(result.model_dir)
    ids = tiny_sample.unlabelled_ids()[:4]
    res = predict(trained, tiny_sample, ids=ids, write=False, device="cpu")
    from napari_cellclass.learn.data import ImageStore

    store = ImageStore([tiny_sample.path(i) for i in ids], trained.input_size, trained.normalisation.scaling,
                       trained.in_chans)
    list(store.build())
    mean, std = trained.normalisation.tensors(torch.device("cpu"))
    x = (torch.from_numpy(store.gather(np.arange(len(ids)))).float() - mean) / std
    with torch.inference_mode():
        logits = trained.model(x).float().numpy()
    np.testing.assert_allclose(res.probabilities, _softmax(logits / block["temperature"]), atol=1e-4)

    # a changed temperature in config.json changes the probabilities (it is read, not ignored)
    config["calibration"]["temperature"] = block["temperature"] * 4
    (result.model_dir / "config.json").write_text(json.dumps(config))
    hot = predict(result.model_dir, tiny_sample, ids=ids, write=False, device="cpu")
    np.testing.assert_allclose(hot.probabilities, _softmax(logits / (block["temperature"] * 4)), atol=1e-4)

    ev = evaluate(result.model_dir, tiny_sample, split="val", device="cpu")
    assert set(ev["calibration"]) >= {"temperature", "ece_before", "ece_after"}
    assert ev["calibration"]["temperature"] == pytest.approx(block["temperature"] * 4)
    assert ev["coverage"]["target"] == 0.95 and len(ev["coverage"]["curve"]) == ev["n"]


def test_no_sharpening_when_every_validation_image_is_right():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert cal.fit_temperature(p, np.array([0, 1, 0]), False) == 1.0
    assert cal.calibrate(p, np.array([0, 1, 0]), False)["temperature"] == 1.0
