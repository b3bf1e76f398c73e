"""Temperature scaling on held-out images: expected calibration error (15 bins) and negative log-likelihood
of the test split without and with the temperature fitted on the validation split after training.

Data: real handwritten digits (scikit-learn, 1,797 images, 10 classes) upscaled to 32x32, split 55 %
train / 15 % validation / 30 % test (stratified, predefined, the same for every setting of a seed).
Two settings through the command line (default backbone from random weights, 10 epochs): clean
labels, and 20 % of the training and validation labels replaced by a wrong class (the test labels
stay right) - the case where a network fits the noise and becomes overconfident. Also the share of
test images accepted at the confidence that reached 95 % accuracy on validation, and their
accuracy (does the threshold carry over to new images?).

Run: ``python benchmarks/bench_calibration.py``; prints one JSON object (progress on stderr).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_project(folder: Path, seed: int, noise: float) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    sys.path.insert(0, str(ROOT / "src"))
    from napari_cellclass.core.project import Project
    from napari_cellclass.core.splits import write_split_file

    d = load_digits()
    idx = np.arange(len(d.target))
    rest, test = train_test_split(idx, test_size=0.30, stratify=d.target, random_state=seed)
    train, val = train_test_split(rest, test_size=0.15 / 0.70, stratify=d.target[rest], random_state=seed)
    rng = np.random.default_rng(seed)
    given = d.target.copy()
    noisy = rng.permutation(rest)[:int(round(noise * len(rest)))]
    given[noisy] = (given[noisy] + rng.integers(1, 10, len(noisy))) % 10  # always another class
    folder.mkdir(parents=True)
    project = Project.open(folder, fsync=False)
    for name in NAMES:
        project.add_class(name)
    names = {}
    for i in idx:
        names[i] = f"img_{i:04d}.png"
        img = (d.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR).save(folder / names[i])
    project = Project.open(folder, fsync=False)
    for k, name in enumerate(NAMES):
        project.assign([names[i] for i in idx if given[i] == k], name)
    write_split_file(folder / "cellclass_split.csv", {**{names[i]: "train" for i in train},
                                                     **{names[i]: "val" for i in val},
                                                     **{names[i]: "test" for i in test}})
    return folder


def measure(folder: Path, model: Path) -> dict:
    from napari_cellclass.core.project import Project
    from napari_cellclass.learn import calibration as cal
    from napari_cellclass.learn import load_model
    from napari_cellclass.learn.evaluate import evaluate_arrays

    trained = load_model(model)
    ev = evaluate_arrays(trained, Project.open(folder, create=False), split="test", device="cpu")
    t = trained.temperature
    after = ev.probabilities
    before = cal.rescale(after, 1.0 / t, False)
    y = ev.targets

    reach = trained.calibration.get("at_target") or {}
    out = {"temperature": t, "accuracy": float((after.argmax(1) == y).mean()),
           "ece_before": cal.expected_calibration_error(before, y, False),
           "ece_after": cal.expected_calibration_error(after, y, False),
           "nll_before": cal.negative_log_likelihood(before, y, False),
           "nll_after": cal.negative_log_likelihood(after, y, False), "val_threshold": reach.get("threshold")}
    if reach.get("threshold") is not None:
        kept = after.max(1) >= reach["threshold"]
        out["test_coverage_at_val_threshold"] = float(kept.mean())
        out["test_accuracy_at_val_threshold"] = float((after.argmax(1) == y)[kept].mean()) if kept.any() else None
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for noise in (0.0, 0.2):
            for seed in (0, 1):
                folder = make_project(Path(tmp) / f"digits-{noise}-{seed}", seed, noise)
                model = folder / "cellclass_models" / "m"
                cmd = [sys.executable, "-m", "napari_cellclass", "train", str(folder), "--out", str(model), "--seed",
                       str(seed), "--device", "cpu", "--epochs", "10", "--input-size", "32",
                       "--json"]
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = {"label_noise": noise, "seed": seed, **measure(folder, model)}
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    summary = {}
    for noise in (0.0, 0.2):
        rows = [r for r in results if r["label_noise"] == noise]
        summary[f"noise_{noise}"] = {k: float(np.mean([r[k] for r in rows])) for k in
                                     ("temperature", "accuracy", "ece_before", "ece_after", "nll_before", "nll_after")}
    print(json.dumps({"runs": results, "mean": summary}, indent=1))


if __name__ == "__main__":
    main()
