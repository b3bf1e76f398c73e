"""The GPU check: the CUDA tests, the pipeline benchmark in bf16 and torchrun over NCCL; one JSON summary.

Run ``benchmarks/gpu_check.sh`` (or ``PYTHONPATH=src python benchmarks/gpu_check.py``) from a copy
of the repository on a CUDA machine. It needs torch, torchvision, timm, tifffile, safetensors,
scikit-learn (pytest when present); it installs nothing, reaches no network and imports no napari or Qt.
It prints one JSON line (device name, test results, benchmark figures, torchrun result, targets)
and exits 1 when a target fails or a part breaks, 2 without CUDA. ``--dry-run`` runs the same
parts on the CPU with tiny settings and judges nothing (a check of the check itself).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: what the pipeline must reach on a GPU (bench_pipeline.py's ratios, bf16, channels-last)
TARGETS = {"training_ratio_1_2": 0.9, "training_ratio_1_3": 3.0}
#: the pipeline benchmark on a GPU: a model with real work per image, so the ratios measure the pipeline
BENCH_GPU = ["--backbone", "resnet50", "--input-size", "224", "--batch-size", "128", "--predict-batch-size", "256",
             "--images", "3000", "--epochs", "3"]
BENCH_DRY = ["--backbone", "mobilenetv3_small_050", "--input-size", "32", "--batch-size", "16", "--images", "64",
             "--epochs", "2", "--image-size", "48"]
TRAIN_ARGS = ["--backbone", "resnet18", "--input-size", "64", "--batch-size", "32", "--epochs", "2"]


def _env(**extra: str) -> dict[str, str]:
    """This environment with ``src`` first on the path and pytest's plugin autoloading off."""
    env = dict(os.environ)
    path = [str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(path), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """Return code (124 on timeout), stdout, stderr and seconds of a command run from the repository root."""
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env or _env(), timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return 124, out, err + f"\ntimed out after {timeout:.0f} s", time.perf_counter() - t


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:].strip()


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


# ---------------------------------------------------------------------------- parts
def cuda_tests(work: Path, timeout: float) -> dict[str, Any]:
    """``pytest -m cuda tests/learn/test_cuda.py`` without plugins or cache; counts from its JUnit XML.

    Without pytest on the machine the same test functions run through :func:`_run_without_pytest`.
    """
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        t0 = time.perf_counter()
        res = _run_without_pytest(work)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        return res
    xml = work / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/learn/test_cuda.py", "-p", "no:cacheprovider",
           "-q", "-rs", "-o", "filterwarnings=", f"--junitxml={xml}", f"--basetemp={work / 'pytest'}"]
    rc, out, err, s = _run(cmd, timeout)
    res: dict[str, Any] = {"returncode": rc, "seconds": round(s, 1), "passed": [], "failed": {}, "skipped": {}}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = case.get("name", "?")
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            skip = case.find("skipped")
            if bad is not None:
                res["failed"][name] = _tail(bad.get("message", "") or bad.text or "", 600)
            elif skip is not None:
                res["skipped"][name] = skip.get("message", "")
            else:
                res["passed"].append(name)
    if rc not in (0, 5) or not xml.exists():
        res["output"] = _tail(out + err)
    return res


def _run_without_pytest(work: Path) -> dict[str, Any]:
    """The CUDA tests' functions called directly, with a stand-in for the few pytest features they use
    (marks, ``raises``) and their fixtures (``tiny_sample``, ``fast_config``, ``tmp_path``) made here."""
    import contextlib
    import traceback
    import types

    class _Marks:
        def __getattr__(self, _name: str) -> Any:
            return lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else None)

    @contextlib.contextmanager
    def raises(kind: type[BaseException]) -> Any:
        box = types.SimpleNamespace(value=None)
        try:
            yield box
        except kind as exc:
            box.value = exc
        else:
            raise AssertionError(f"{kind.__name__} was not raised")

    stub = types.ModuleType("pytest")
    stub.mark = _Marks()
    stub.raises = raises
    stub.fixture = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)
    sys.modules.setdefault("pytest", stub)
    sys.path.insert(0, str(Path.cwd()))
    import importlib

    import torch
    from tests.learn.conftest import FAST

    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn.config import TrainConfig

    mod = importlib.import_module("tests.learn.test_cuda")
    res: dict[str, Any] = {"returncode": 0, "runner": "built-in (no pytest here)", "passed": [], "failed": {},
                           "skipped": {}}
    if not torch.cuda.is_available():
        res["skipped"] = {n: "needs a CUDA GPU" for n in dir(mod) if n.startswith("test_")}
        return res
    tiny = make_sample_project(work / "tiny" / "sample", n=40, seed=5, size=64)
    for name in sorted(n for n in dir(mod) if n.startswith("test_")):
        fn = getattr(mod, name)
        tmp = Path(tempfile.mkdtemp(prefix=name[:20], dir=work))
        given = {"tiny_sample": tiny, "tmp_path": tmp,
                 "fast_config": lambda **changes: TrainConfig(**{**FAST, **changes})}
        try:
            fn(**{k: v for k, v in given.items() if k in fn.__code__.co_varnames[:fn.__code__.co_argcount]})
            res["passed"].append(name)
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            res["failed"][name] = _tail(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", 600)
            res["returncode"] = 1
    return res


def pipeline_benchmark(work: Path, dry: bool, timeout: float) -> dict[str, Any]:
    """``bench_pipeline.py --device cuda --precision bf16`` (dry run: the CPU, tiny); its ratios."""
    device = ["--device", "cpu", "--precision", "fp32"] if dry else ["--device", "cuda", "--precision", "bf16"]
    cmd = [sys.executable, "benchmarks/bench_pipeline.py", *device, *(BENCH_DRY if dry else BENCH_GPU),
           "--workdir", str(work)]
    rc, out, err, s = _run(cmd, timeout)
    res: dict[str, Any] = {"returncode": rc, "seconds": round(s, 1), "args": cmd[2:-2]}
    full = _last_json(out)
    if rc != 0 or full is None:
        res["output"] = _tail(out + err)
        return res
    tr, pr = full["training"], full["prediction"]
    pipe = pr["pipeline"]
    res.update({
        "training_ratio_1_2": tr["ratio_1_2"], "training_ratio_1_3": tr["ratio_1_3"],
        "training_img_s": {"pipeline_later_epochs": tr["pipeline"].get("later_epochs_img_s"),
                           "pipeline_first_epoch": tr["pipeline"]["first_epoch_img_s"],
                           "pure_step": tr["pure_step"]["img_s"],
                           "naive": tr["naive"].get("later_epochs_img_s")},
        "prediction_ratio_1_2": pr["ratio_1_2"], "prediction_ratio_1_3": pr["ratio_1_3"],
        "prediction_img_s": {"from_files": pipe["from_files_img_s"], "from_cache": pipe["from_cache_img_s"],
                             "pure_forward": pr["pure_forward"]["img_s"], "naive": pr["naive"]["img_s"]},
        "prediction_from_files_vs_cache": round(pipe["from_files_img_s"] / max(pipe["from_cache_img_s"], 1e-9), 3),
        "peak_gpu_mib": tr["pipeline"].get("peak_gpu_mib"),
        "device": full["device"], "precision": full["precision"], "channels_last": full["channels_last"],
    })
    return res


def nccl_probe() -> int:
    """Under torchrun: join a NCCL group, all-reduce and broadcast across the ranks, leave (0: all agreed)."""
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl", device_id=device)
    try:
        world = dist.get_world_size()
        x = torch.full((4,), float(dist.get_rank() + 1), device=device)
        dist.all_reduce(x)
        box = [{"from": "rank 0"} if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        ok = bool(torch.all(x == world * (world + 1) / 2)) and box[0] == {"from": "rank 0"}
        if dist.get_rank() == 0:
            print(json.dumps({"backend": dist.get_backend(), "world_size": world, "all_reduce_ok": ok,
                              "nccl_version": ".".join(map(str, torch.cuda.nccl.version()))}))
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port())]


def torchrun_check(work: Path, gpus: int, dry: bool, timeout: float) -> dict[str, Any]:
    """NCCL across ``gpus`` ranks (one per GPU), then ``napari-cellclass train`` under torchrun."""
    res: dict[str, Any] = {"nproc_per_node": gpus}
    if not dry:
        rc, out, err, s = _run([*_torchrun(gpus), str(Path(__file__)), "--nccl-probe"], timeout / 3)
        probe = _last_json(out)
        res["nccl"] = {"returncode": rc, "seconds": round(s, 1), **(probe or {"output": _tail(out + err)})}
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from napari_cellclass.core.sample import make_sample_project

    project = make_sample_project(work / "torchrun-project", n=160, seed=7, labelled_fraction=1.0, size=64)
    model = work / "torchrun-model"
    nproc = 2 if dry else gpus  # the dry run: two CPU processes over gloo
    cmd = [*_torchrun(nproc), "-m", "napari_cellclass", "train", str(project.root), *TRAIN_ARGS,
           "--device", "cpu" if dry else "cuda", "--seed", "0", "--out", str(model), "--json"]
    env = _env(**({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"} if dry else {}))
    rc, out, err, s = _run(cmd, timeout * 2 / 3, env)
    result = _last_json(out) or {}
    train: dict[str, Any] = {"returncode": rc, "seconds": round(s, 1), "nproc_per_node": nproc,
                             "ok": bool(result.get("ok")), "epochs_run": result.get("epochs_run")}
    try:
        config = json.loads((model / "config.json").read_text())
        train["distributed"] = config.get("distributed")  # absent with one process: the single-process path
        train["device"] = config.get("device")
        train["precision"] = config.get("precision")
        train["val_accuracy"] = (config.get("best_metrics") or {}).get("accuracy")
    except (OSError, ValueError) as exc:
        train["output"] = _tail(out + err) or str(exc)
    if rc != 0:
        train["output"] = _tail(out + err)
    if nproc == 1:
        train["note"] = ("one GPU: torchrun with one process takes the single-process path (no process group); "
                         "NCCL itself was exercised by the probe")
    res["train"] = train
    return res


# ---------------------------------------------------------------------------- verdict
def verdict(summary: dict[str, Any], dry: bool) -> list[str]:
    """What failed (empty: every target holds)."""
    bad = []
    tests = summary["tests"]
    if tests["returncode"] != 0 or tests["failed"]:
        bad.append(f"CUDA tests: {len(tests['failed'])} failed (pytest exit {tests['returncode']})")
    if not dry and tests["skipped"]:
        bad.append(f"CUDA tests: {len(tests['skipped'])} skipped on a GPU machine")
    bench = summary["benchmark"]
    if bench["returncode"] != 0 or "training_ratio_1_2" not in bench:
        bad.append(f"pipeline benchmark failed (exit {bench['returncode']})")
    elif not dry:
        for key, floor in TARGETS.items():
            if bench[key] < floor:
                bad.append(f"{key} {bench[key]} < {floor}")
    run = summary["torchrun"]
    nccl = run.get("nccl")
    if nccl is not None and (nccl["returncode"] != 0 or not nccl.get("all_reduce_ok")):
        bad.append(f"NCCL probe failed (exit {nccl['returncode']})")
    train = run["train"]
    if train["returncode"] != 0 or not train["ok"]:
        bad.append(f"torchrun training failed (exit {train['returncode']})")
    elif train["nproc_per_node"] > 1:
        want = "gloo" if dry else "nccl"
        if (train.get("distributed") or {}).get("backend") != want:
            bad.append(f"torchrun training did not run over {want}: {train.get('distributed')}")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the CPU with tiny settings; no targets judged")
    p.add_argument("--nccl-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=460, help="seconds for all parts together (default 460)")
    args = p.parse_args(argv)
    if args.nccl_probe:
        return nccl_probe()
    import torch

    t0 = time.perf_counter()
    dry = args.dry_run
    summary: dict[str, Any] = {"check": "gpu", "dry_run": dry, "torch": torch.__version__,
                               "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available() and not dry:
        summary.update(ok=False, failures=["no CUDA device is visible (torch.cuda.is_available() is False)"])
        print(json.dumps(summary))
        return 2
    gpus = torch.cuda.device_count() if not dry else 0
    summary["device"] = (torch.cuda.get_device_name(0) if gpus else "CPU (dry run)")
    summary["gpus"] = gpus
    if gpus:
        summary["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        summary["bf16_supported"] = torch.cuda.is_bf16_supported()
    b = args.budget
    with tempfile.TemporaryDirectory(prefix="cellclass-gpu-check-") as tmp:
        work = Path(tmp)
        summary["tests"] = cuda_tests(work, 0.3 * b)
        summary["benchmark"] = pipeline_benchmark(work, dry, 0.45 * b)
        summary["torchrun"] = torchrun_check(work, max(gpus, 1), dry, 0.25 * b)
    failures = verdict(summary, dry)
    summary.update(ok=not failures, failures=failures, targets=TARGETS, seconds=round(time.perf_counter() - t0, 1))
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
