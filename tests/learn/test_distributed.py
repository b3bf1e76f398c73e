"""torchrun with two CPU processes (gloo): one model folder written by rank 0, metrics that a
single-process evaluation of the saved model reproduces."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from napari_cellclass.learn import distributed
from napari_cellclass.learn.evaluate import evaluate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tiny_sample, tmp_path):
    model = tmp_path / "model"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "napari_cellclass", "train", str(tiny_sample.root),
           "--backbone", "mobilenetv3_small_050", "--input-size", "32", "--batch-size", "4", "--epochs", "2",
           "--device", "cpu", "--seed", "0", "--out", str(model), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    env.pop("CELLCLASS_PROGRESS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # only rank 0 reports: one JSON object on stdout, one set of epoch lines on stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(objects) == 1, proc.stdout
    res = objects[0]
    assert res["ok"] and res["model"] == str(model) and res["epochs_run"] == 2
    assert sum(line.lstrip().startswith("epoch ") for line in proc.stderr.splitlines()) == 2

    # one model folder, written once: the expected files and no leftovers of concurrent writers
    files = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".tmp", ".part")) or f.startswith(".")], files
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing beside it (e.g. a second default folder)
    config = json.loads((model / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert len(config["history"]) == 2 and [h["epoch"] for h in config["history"]] == [1, 2]

    # the validation metrics of the run = a single-process evaluation of the saved model
    ev = evaluate(model, tiny_sample.root, split="val", device="cpu")
    best = res["best_metrics"]
    assert ev["n"] == best["n"] == len(config["split"]["ids"]["val"])
    for key in ("accuracy", "balanced_accuracy", "f1_macro"):
        assert ev["metrics"][key] == pytest.approx(best[key], abs=1e-9), key
    assert ev["metrics"]["confusion_matrix"] == best["confusion_matrix"]
    # the temperature fitted on the gathered validation probabilities: the same images without it give the
    # calibration error the run recorded, and with it a loss no higher than the run's
    assert ev["calibration"]["ece_before"] == pytest.approx(config["calibration"]["ece_before"], abs=1e-4)
    assert ev["metrics"]["loss"] <= best["loss"] + 1e-4


def test_shards_cover_every_batch_with_equal_step_counts():
    import numpy as np

    batches = [np.array([i]) for i in range(5)]
    shards = [distributed.shard_batches(distributed.DistInfo(r, 2), batches) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    assert {int(b[0]) for s in shards for b in s} == set(range(5))
    rows = [distributed.shard_rows(distributed.DistInfo(r, 3), 7) for r in range(3)]
    assert np.concatenate(rows).tolist() == list(range(7))
    assert distributed.shard_batches(distributed.SINGLE, batches) == batches
