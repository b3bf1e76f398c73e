"""The start-up report: seconds from the command to the first training batch, phase by phase."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from napari_cellclass.learn import BatchProgress, Finished, Log, run_training
from napari_cellclass.learn.startup import StartupClock, process_seconds


def test_process_seconds_is_the_age_of_the_process():
    age = process_seconds()
    if not sys.platform.startswith("linux"):
        assert age is None or age >= 0
        return
    assert age is not None and age > 0
    time.sleep(0.05)
    assert process_seconds() >= age


def test_only_the_command_counts_from_the_process_start():
    assert "process start and imports" not in StartupClock().laps  # pytest is not the command
    clock = StartupClock(from_process_start=True)
    assert sys.platform != "linux" or clock.laps["process start and imports"] > 0
    assert clock.line().endswith(")") and "after the command" in clock.line()


def test_clock_laps_add_up_to_the_line():
    clock = StartupClock()
    time.sleep(0.02)
    clock.lap("images")
    clock.lap("model")
    clock.lap("images")  # repeated laps add up
    d = clock.to_dict()
    assert list(d)[-2:] == ["images", "model"] and d["images"] >= 0.02
    assert abs(d["seconds"] - sum(v for k, v in d.items() if k != "seconds")) < 0.01
    assert clock.line().startswith(f"first training batch {clock.total:.1f} s after")


def test_a_run_reports_its_start_up_at_the_first_batch(tiny_sample, fast_config, tmp_path):
    events = list(run_training(tiny_sample, fast_config(epochs=1), tmp_path / "m"))
    first = next(i for i, e in enumerate(events) if isinstance(e, BatchProgress) and e.phase == "train")
    line = events[first + 1]
    assert isinstance(line, Log) and line.message.startswith("first training batch"), line
    assert sum(isinstance(e, Log) and e.message.startswith("first training batch") for e in events) == 1
    fin = events[-1]
    assert isinstance(fin, Finished)
    phases = ["project and split", "timm import", "images", "model", "optimizer", "first step"]
    assert [k for k in fin.startup if k in phases] == phases
    assert fin.startup["seconds"] > 0 and all(v >= 0 for v in fin.startup.values())


def test_the_train_command_reports_start_up_from_the_command(tiny_sample, tmp_path):
    cmd = [sys.executable, "-m", "napari_cellclass", "train", str(tiny_sample.root), "--backbone",
           "mobilenetv3_small_050", "--input-size", "32", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
           "--out", str(tmp_path / "m"), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    startup = json.loads(proc.stdout)["startup"]
    assert list(startup)[:2] == ["seconds", "process start and imports"] and "first step" in startup
    if sys.platform.startswith("linux"):
        # counted from the process's start: the interpreter and the imports are in it, and it fits in the wall time
        assert startup["process start and imports"] > 0
        assert startup["seconds"] < wall


def test_the_train_command_imports_nothing_it_does_not_need(tiny_sample, tmp_path):
    unneeded = ("sklearn", "matplotlib", "captum", "cleanlab", "onnx", "onnxruntime", "onnxscript", "bioimageio",
                "pydantic", "napari", "qtpy", "magicgui", "pandas", "skimage")
    code = ("import sys; from napari_cellclass.cli import main; "
            f"main(['train', {str(tiny_sample.root)!r}, '--backbone', 'mobilenetv3_small_050', '--input-size', '32', "
            f"'--epochs', '1', '--device', 'cpu', '--out', {str(tmp_path / 'm')!r}, '--json']); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({unneeded!r})), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "[]"
