"""Learning curves of the suggestion strategies against random, and the label check on flipped labels.

A simulated user with the ground truth as oracle: each strategy starts from no labels and runs
rounds of "suggest B images, label them, retrain" up to a budget; 3 seeds. The learner retrained
each round is a logistic regression on frozen ImageNet features (EfficientNet-Lite0 at 128 px,
the features ``suggest`` and ``check-labels`` use before a model exists), so that 3 datasets x
5 strategies x 3 seeds x 20 rounds finish on a laptop CPU; margin and entropy use that learner's
probabilities (in the product: the trained CNN's). Accuracy and balanced accuracy are measured
on a fixed held-out 30 % of each dataset.

Datasets: (a) the sample data with 2,000 images (two classes); (a2) a harder variant with a third,
rarer class (10 %, crowded fields of 3-6 cells); (b) scikit-learn's handwritten digits (1,797 real
8x8 images upscaled to 64x64, 10 classes).

Label check: 10 % of the pool's labels flipped at random, then ``check-labels``' method
(5-fold out-of-fold probe + cleanlab); precision and recall of the flagged images against the
flipped ones.

Run: ``python benchmarks/bench_active_learning.py [--out benchmarks/results]`` (needs matplotlib
for the plot). Prints one JSON object; writes ``active_learning.json`` and ``learning_curves.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cellclass.core.project import Project  # noqa: E402
from napari_cellclass.core.strategies import STRATEGIES  # noqa: E402
from napari_cellclass.learn.embeddings import Embedder, embed  # noqa: E402
from napari_cellclass.learn.label_check import out_of_fold_probabilities, rank_issues  # noqa: E402
from napari_cellclass.learn.suggest import (  # noqa: E402
    AUTO_MIN_PER_CLASS,
    rank_typical,
    rank_uncertain,
    uncertainty,
)

SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------- datasets
def sample_dataset(folder: Path, n: int, third_class: bool) -> tuple[Path, dict[str, str]]:
    """The sample data (``n`` images); with ``third_class`` 10 % become crowded fields (a rarer class)."""
    import tifffile

    from napari_cellclass.core.sample import make_image

    if (folder / "truth.json").exists():  # made by an earlier run (its features are cached too)
        return folder, json.loads((folder / "truth.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11 if third_class else 10)
    truth = {}
    for i in range(n):
        u = rng.random()
        if third_class and u < 0.10:
            a, b = make_image(False, rng), make_image(False, rng)
            img = (a.astype(np.int32) + b - 100).clip(0, 65535).astype(np.uint16)
            cls = "crowded"
        else:
            pos = rng.random() < 0.5
            img, cls = make_image(pos, rng), ("positive" if pos else "negative")
        name = f"img_{i:05d}.tif"
        tifffile.imwrite(folder / name, img, metadata={"axes": "CYX"})
        truth[name] = cls
    (folder / "truth.json").write_text(json.dumps(truth))
    return folder, truth


def digits_dataset(folder: Path) -> tuple[Path, dict[str, str]]:
    """scikit-learn's digits, upscaled 8 -> 64 px, as 8-bit PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if (folder / "truth.json").exists():
        return folder, json.loads((folder / "truth.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    truth = {}
    for i, (img, y) in enumerate(zip(d.images, d.target, strict=True)):
        name = f"digit_{i:04d}.png"
        arr = (img / 16 * 255).astype(np.uint8)
        Image.fromarray(arr).resize((64, 64), Image.Resampling.BILINEAR).save(folder / name)
        truth[name] = str(int(y))
    (folder / "truth.json").write_text(json.dumps(truth))
    return folder, truth


def features_of(folder: Path, truth: dict[str, str]) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """ImageNet features of every image (cached in the folder's project), class indices, class names, seconds."""
    project = Project.open(folder, fsync=False)
    ids = [i for i in project.image_ids if Path(i).name in truth]
    t = time.perf_counter()
    emb = embed(project, ids, Embedder.imagenet(), device="cpu")
    seconds = time.perf_counter() - t
    classes = sorted(set(truth.values()))
    y = np.array([classes.index(truth[Path(i).name]) for i in emb.ids])
    return emb.features, y, classes, seconds


# ---------------------------------------------------------------------------- the simulated user
def probe(x: np.ndarray, y: np.ndarray, k: int):
    """Fit the learner (logistic regression on L2-normalised features); None with one class."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(max_iter=2000, C=1.0).fit(x, y)


def proba(model, x: np.ndarray, y_lab: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(x), k), 1.0 / k)
    if model is None:
        if len(y_lab):
            out[:] = 0
            out[:, y_lab[0]] = 1
        return out
    out[:] = 0
    out[:, model.classes_] = model.predict_proba(x)
    return out


def pick(strategy: str, x: np.ndarray, labelled: np.ndarray, y: np.ndarray, k: int, model, b: int,
         seed: int) -> np.ndarray:
    """The next ``b`` pool rows to label."""
    pool = np.flatnonzero(~labelled)
    if strategy == "auto":
        counts = np.bincount(y[labelled], minlength=k)
        strategy = "margin" if model is not None and counts.min() >= AUTO_MIN_PER_CLASS else "typical"
    if strategy == "random" or (strategy in ("margin", "entropy") and model is None):
        return np.random.default_rng([seed, int(labelled.sum())]).choice(pool, min(b, len(pool)), replace=False)
    if strategy == "typical":
        rows, _, _ = rank_typical(x, labelled, b, seed)
        return rows
    scores = uncertainty(proba(model, x[pool], y[labelled], k), strategy)
    return pool[rank_uncertain(scores, x[pool], b, seed)]


def run_curve(x: np.ndarray, y: np.ndarray, test: np.ndarray, k: int, strategy: str, seed: int, b: int,
              budget: int) -> list[dict]:
    from sklearn.metrics import balanced_accuracy_score

    pool_rows = np.flatnonzero(~test)
    xp, yp = x[pool_rows], y[pool_rows]
    labelled = np.zeros(len(xp), bool)
    model = None
    out = []
    while labelled.sum() < budget:
        chosen = pick(strategy, xp, labelled, yp, k, model, b, seed)
        if not len(chosen):
            break
        labelled[chosen] = True
        model = probe(xp[labelled], yp[labelled], k)
        pred = proba(model, x[test], yp[labelled], k).argmax(1)
        out.append({"labels": int(labelled.sum()), "accuracy": float((pred == y[test]).mean()),
                    "balanced_accuracy": float(balanced_accuracy_score(y[test], pred)),
                    "classes_seen": int(len(np.unique(yp[labelled])))})
    return out


def label_check(x: np.ndarray, y: np.ndarray, k: int, seed: int, rate: float = 0.10) -> dict:
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    flip = rng.choice(len(y), int(round(rate * len(y))), replace=False)
    noisy[flip] = (noisy[flip] + rng.integers(1, k, len(flip))) % k
    t = time.perf_counter()
    probs = out_of_fold_probabilities(x, noisy, k, folds=5, seed=seed)
    flagged, _ = rank_issues(noisy, probs)
    seconds = time.perf_counter() - t
    hit = np.isin(flagged, flip).sum()
    top = flagged[:len(flip)]
    return {"images": len(y), "flipped": len(flip), "flagged": len(flagged),
            "precision": float(hit / max(1, len(flagged))), "recall": float(hit / len(flip)),
            "precision_at_flipped": float(np.isin(top, flip).mean()) if len(top) else 0.0,
            "seconds": round(seconds, 2)}


def summarise(curves: dict[str, list[list[dict]]], full_acc: float) -> dict:
    out = {}
    for strategy, runs in curves.items():
        labels = [r["labels"] for r in runs[0]]
        n = min(len(r) for r in runs)
        acc = np.array([[r[i]["accuracy"] for i in range(n)] for r in runs])
        bal = np.array([[r[i]["balanced_accuracy"] for i in range(n)] for r in runs])
        need = []
        for row in acc:
            hit = np.flatnonzero(row >= 0.9 * full_acc)
            need.append(labels[hit[0]] if len(hit) else None)
        out[strategy] = {"labels": labels[:n], "accuracy_mean": acc.mean(0).round(4).tolist(),
                         "balanced_accuracy_mean": bal.mean(0).round(4).tolist(),
                         "labels_to_90pct_of_full": need,
                         "area_under_curve": round(float(acc.mean()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default="/tmp/cellclass_bench_active")
    ap.add_argument("--n", type=int, default=2000, help="sample images per sample dataset")
    args = ap.parse_args()
    work, out_dir = Path(args.work), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    setups = {
        "sample (2 classes)": (lambda: sample_dataset(work / "sample2", args.n, False), 10, 200),
        "sample + rare third class": (lambda: sample_dataset(work / "sample3", args.n, True), 10, 200),
        "digits (10 classes, real)": (lambda: digits_dataset(work / "digits"), 20, 400),
    }
    report: dict = {"learner": "logistic regression on frozen ImageNet EfficientNet-Lite0 features (128 px)",
                    "seeds": list(SEEDS), "datasets": {}}
    for name, (make, b, budget) in setups.items():
        folder, truth = make()
        x, y, classes, emb_s = features_of(folder, truth)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        k = len(classes)
        test = np.zeros(len(y), bool)
        test[np.random.default_rng(99).choice(len(y), int(0.3 * len(y)), replace=False)] = True
        full = probe(x[~test], y[~test], k)
        full_acc = float((full.predict(x[test]) == y[test]).mean())
        curves = {s: [run_curve(x, y, test, k, s, seed, b, budget) for seed in SEEDS] for s in STRATEGIES}
        summary = summarise(curves, full_acc)
        checks = [label_check(x[~test], y[~test], k, seed) for seed in SEEDS]
        report["datasets"][name] = {
            "images": len(y), "classes": classes, "class_counts": np.bincount(y).tolist(), "batch": b,
            "budget": budget, "features_seconds": round(emb_s, 1), "full_pool_accuracy": round(full_acc, 4),
            "strategies": summary,
            "label_check": {key: round(float(np.mean([c[key] for c in checks])), 4)
                            for key in ("precision", "recall", "precision_at_flipped", "flagged", "flipped",
                                        "seconds")}}
        print(f"{name}: full-pool accuracy {full_acc:.3f}", file=sys.stderr)
        for s, v in summary.items():
            print(f"  {s:8s} AUC {v['area_under_curve']:.3f}  labels to 90% {v['labels_to_90pct_of_full']}",
                  file=sys.stderr)
    (out_dir / "active_learning.json").write_text(json.dumps(report, indent=1))
    plot(report, out_dir / "learning_curves.png")
    print(json.dumps(report))


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    names = list(report["datasets"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    colors = {"auto": "C3", "typical": "C0", "margin": "C1", "entropy": "C2", "random": "0.4"}
    for j, name in enumerate(names):
        d = report["datasets"][name]
        for i, metric in enumerate(("accuracy_mean", "balanced_accuracy_mean")):
            ax = axes[i][j]
            for s, v in d["strategies"].items():
                ax.plot(v["labels"], v[metric], label=s, color=colors[s], lw=2.2 if s in ("auto", "random") else 1.2,
                        ls="--" if s == "random" else "-")
            ax.axhline(d["full_pool_accuracy"], color="k", lw=0.8, ls=":")
            ax.set_title(name if i == 0 else "")
            ax.set_xlabel("labelled images")
            ax.set_ylabel(metric.replace("_mean", "").replace("_", " ") + " (mean of 3 seeds)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
