"""Project speed: opening a folder of N images (no pixels read), with labels (label index current or
deleted), and labelling one image.

Prints one JSON object. References in the same run: a bare ``os.walk`` listing of the folder,
a bare ``os.scandir`` walk of the labelled tree that also stats every file (the least work that
notices a label file rewritten in place), and a plain ``numpy.savez`` of the same sidecar
without the atomic rename and fsync.

    python benchmarks/bench_project.py [--n 10000] [--labelled 10000]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_cellclass.core.project import Project
from napari_cellclass.core.project_index import INDEX_PATH


def make_folder(root: Path, n: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    for i in range(n):
        sub = root / f"plate{i // 1000:02d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img_{i:05d}.png").write_bytes(data)


def walk_and_stat(root: Path) -> int:
    """Bare ``os.scandir`` walk that stats every file (reference)."""
    n, stack = 0, [str(root)]
    while stack:
        for e in os.scandir(stack.pop()):
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            else:
                e.stat()
                n += 1
    return n


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--labelled", type=int, default=10_000, help="images with a sidecar for the second open")
    ap.add_argument("--label-repeats", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        make_folder(root, args.n)
        walk = timed(lambda: sum(len(f) for _, _, f in os.walk(root)), 3)
        open_ms = timed(lambda: Project.open(root), 3)
        p = Project.open(root)
        p.add_class("a")
        p.add_class("b")
        ids = p.image_ids
        names = ("a", "b")
        k = iter(range(10**9))
        label_ms = timed(lambda: p.assign(ids[next(k) % 1000], names[next(k) % 2]), args.label_repeats)
        p.fsync = False
        nofsync_ms = timed(lambda: p.assign(ids[next(k) % 1000], names[next(k) % 2]), args.label_repeats)
        raw_dir = Path(tmp) / "raw"
        raw_dir.mkdir()
        raw_ms = timed(lambda: np.savez(raw_dir / f"{next(k) % 1000}.npz", classes=np.array(["a"])), args.label_repeats)
        t = time.perf_counter()
        p.assign(ids[: args.labelled], "a")
        bulk_s = time.perf_counter() - t
        index = root.joinpath(*INDEX_PATH)

        def open_unindexed() -> None:
            index.unlink(missing_ok=True)
            Project.open(root)

        unindexed_ms = timed(open_unindexed, 3)  # every label file read (and the index written)
        time.sleep(2.5)  # folders changed in the last 2 s are listed again (same clock tick)
        Project.open(root)
        open_labelled_ms = timed(lambda: Project.open(root), 3)  # the index is current
        walk_stat = timed(lambda: walk_and_stat(root), 3)
    result = {
        "benchmark": "project",
        "images": args.n,
        "open_ms_median": round(statistics.median(open_ms), 1),
        "reference_os_walk_ms_median": round(statistics.median(walk), 1),
        "open_with_labels_ms_median": round(statistics.median(open_labelled_ms), 1),
        "open_with_labels_no_index_ms_median": round(statistics.median(unindexed_ms), 1),
        "reference_scandir_walk_with_stat_ms_median": round(statistics.median(walk_stat), 1),
        "labelled_images": args.labelled,
        "label_one_ms_median": round(statistics.median(label_ms), 2),
        "label_one_ms_p95": round(float(np.percentile(label_ms, 95)), 2),
        "label_one_no_fsync_ms_median": round(statistics.median(nofsync_ms), 2),
        "reference_plain_savez_ms_median": round(statistics.median(raw_ms), 2),
        "label_many_s": round(bulk_s, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
