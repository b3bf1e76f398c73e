"""Predicting a whole screen from files: throughput and peak memory, serial and parallel decoding, torchrun.

    python benchmarks/bench_predict_screen.py            # 10,000 images, a few minutes on 2 CPU cores
    python benchmarks/bench_predict_screen.py --n 2000   # quicker

Generates ``--n`` two-channel uint16 64x64 TIFF images in plate/well folders (a temporary folder),
trains a tiny model for one epoch on a 40-image sample (seconds), then predicts every image, each
run in a fresh process so its peak RSS is its own (``VmHWM``; ``rss_growth_mib``: the peak above the
process with its libraries and the model loaded, i.e. what the images cost):

1. ``serial``: the API, one decoding thread;
2. ``parallel``: the API, the default decoding threads and chunk size (the reference for the ratios);
3. ``chunk_1024`` and ``chunk_1024_quarter``: chunks of 1,024 images, on all images and on the first
   plate (a quarter): the memory the images cost must not grow with their number;
4. ``one_chunk``: all images in one chunk (what memory looked like before chunking);
5. ``cli`` / ``cli_resumed``: the command line with ``--csv``, then again (every image skipped);
6. ``torchrun_2``: the command line under ``torchrun --nproc_per_node=2`` (peak RSS: the largest rank).

Images per second count the predicted images over the seconds of the ``predict`` call (API) or of
the whole command (CLI, process start and imports included); with ``--repeat R`` each figure is
the fastest of R runs (other work on a shared machine only slows a run down). Prints one JSON object and writes it
to ``benchmarks/results/predict_screen.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def make_screen(root: Path, n: int, seed: int = 0) -> None:
    """``n`` images: 4 plates of 96 wells, fields numbered within each well."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        plate, rest = divmod(i, 96 * max(1, -(-n // (4 * 96))))
        well, field = divmod(rest, max(1, -(-n // (4 * 96))))
        folder = root / f"plate{plate + 1}" / f"{'ABCDEFGH'[well // 12 % 8]}{well % 12 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        blob = np.exp(-((yy - rng.integers(16, 48)) ** 2 + (xx - rng.integers(16, 48)) ** 2) / rng.uniform(20, 80))
        pix = rng.normal(500, 60, (2, 64, 64)) + np.stack([blob * 3000, blob * rng.uniform(0, 3000)])
        tifffile.imwrite(folder / f"f{field + 1}.tif", np.clip(pix, 0, 65535).astype(np.uint16))


def make_model(where: Path) -> Path:
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import train
    from napari_cellclass.learn.config import TrainConfig

    project = make_sample_project(where / "sample", n=40, seed=5, size=64)
    cfg = TrainConfig(backbone="mobilenetv3_small_050", input_size=64, batch_size=16, epochs=1, device="cpu", seed=0)
    train(project, cfg, where / "model")
    return where / "model"


def child_api(model: str, inputs: list[str], kw: dict) -> None:
    """Run in a fresh process: one ``predict`` call; prints seconds, count and peak RSS."""
    from napari_cellclass.learn import load_model, predict

    trained = load_model(model)
    base = peak_rss_mib()  # the libraries and the model, before any image
    t = time.perf_counter()
    res = predict(trained, inputs if len(inputs) > 1 else inputs[0], device="cpu", **kw)
    seconds = time.perf_counter() - t
    peak = peak_rss_mib()
    print(json.dumps({"n": len(res), "seconds": seconds, "skipped": len(res.skipped), "peak_rss_mib": peak,
                      "base_rss_mib": base, "rss_growth_mib": peak - base}))


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``: of this program only; ``ru_maxrss`` keeps the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(call: str) -> str:
    """Python code that runs ``call`` with this module imported as ``b``."""
    return f"import json, sys; from pathlib import Path; sys.path.insert(0, {str(HERE)!r}); " \
           f"import bench_predict_screen as b; {call}"


REPEAT = 1


def run_api(model: Path, inputs: list[str], **kw) -> dict:
    """The fastest of ``REPEAT`` fresh processes (the machine may be shared)."""
    code = _child("b.child_api(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, str(model), json.dumps(inputs), json.dumps(kw)],
                                      capture_output=True, text=True, env=_env(), check=True
                                      ).stdout.strip().splitlines()[-1]) for _ in range(REPEAT)]
    row = min(runs, key=lambda r: r["seconds"])
    row["images_per_s"] = round(row["n"] / row["seconds"], 1)
    row["seconds"] = round(row["seconds"], 2)
    for key in ("peak_rss_mib", "base_rss_mib", "rss_growth_mib"):
        row[key] = round(row[key], 1)
    return row


def run_command(cmd: list[str], repeat: int | None = None) -> dict:
    """Wall seconds of a command and the peak RSS of its largest process (through a small fresh wrapper, so
    that no big process's ``ru_maxrss`` is inherited); the fastest of ``repeat`` runs."""
    rows = [_command(cmd) for _ in range(repeat or REPEAT)]
    return min(rows, key=lambda r: r["seconds"])


def _command(cmd: list[str]) -> dict:
    code = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); s = time.perf_counter() - t; "
            "print(json.dumps({'rc': p.returncode, 'seconds': s, 'stdout': p.stdout[-2000:], "
            "'stderr': p.stderr[-2000:], "
            "'peak_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=_env(), check=True)
    row = json.loads(out.stdout)
    if row["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{row['stderr']}")
    return row


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("CELLCLASS_PROGRESS", None)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_row(row: dict, n: int) -> dict:
    """Figures of a ``predict`` command from its text report (``--json`` would list every image)."""
    done = re.search(r"predicted (\d+) image", row["stdout"])
    reused = re.search(r"skipped (\d+) image\(s\) already predicted", row["stdout"])
    return {"n": int(done.group(1)) if done else None, "reused": int(reused.group(1)) if reused else 0,
            "seconds": round(row["seconds"], 2),
            "images_per_s": round(n / row["seconds"], 1), "peak_rss_mib": round(row["peak_rss_mib"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="images to generate (default 10,000)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the fastest is kept")
    ap.add_argument("--out", default=str(HERE / "results" / "predict_screen.json"))
    args = ap.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)
    with tempfile.TemporaryDirectory(prefix="cellclass-screen-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_screen(tmp / "screen", args.n)
        made = time.perf_counter() - t
        subprocess.run([sys.executable, "-c", _child("b.make_model(Path(sys.argv[1]))"), str(tmp)], env=_env(),
                       check=True, capture_output=True)  # torch stays out of this process
        model = tmp / "model"
        screen = str(tmp / "screen")
        plates = sorted(p.name for p in (tmp / "screen").iterdir())
        rows: dict[str, dict] = {}
        rows["serial"] = run_api(model, [screen], threads=1)
        rows["parallel"] = run_api(model, [screen])
        rows["chunk_1024"] = run_api(model, [screen], chunk_size=1024)
        rows["chunk_1024_quarter"] = run_api(model, [str(tmp / "screen" / plates[0])], chunk_size=1024)
        rows["one_chunk"] = run_api(model, [screen], chunk_size=args.n)
        cli = [sys.executable, "-m", "napari_cellclass.cli", "predict", screen, "--model", str(model), "--device",
               "cpu"]
        rows["cli"] = cli_row(run_command([*cli, "--csv", str(tmp / "cli.csv"), "--fresh"]), args.n)
        rows["cli_resumed"] = cli_row(run_command([*cli, "--csv", str(tmp / "cli.csv")]), args.n)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
                    "--master_port", str(_port()), "-m", "napari_cellclass.cli", *cli[3:], "--csv",
                    str(tmp / "torchrun.csv"), "--fresh"]
        rows["torchrun_2"] = cli_row(run_command(torchrun), args.n)
        with open(tmp / "cli.csv") as a, open(tmp / "torchrun.csv") as b:
            same_rows = sum(1 for _ in a) == sum(1 for _ in b)
    par = rows["parallel"]
    report = {
        "images": args.n, "repeat": REPEAT, "image": "2 x 64 x 64 uint16 TIFF",
        "model": "mobilenetv3_small_050 at 64 px",
        "generate_seconds": round(made, 1), "runs": rows,
        "ratios": {
            "parallel_over_serial_speed": round(par["images_per_s"] / rows["serial"]["images_per_s"], 2),
            "rss_growth_all_over_quarter_chunk_1024": round(rows["chunk_1024"]["rss_growth_mib"]
                                                            / rows["chunk_1024_quarter"]["rss_growth_mib"], 2),
            "rss_growth_one_chunk_over_chunk_1024": round(rows["one_chunk"]["rss_growth_mib"]
                                                          / rows["chunk_1024"]["rss_growth_mib"], 2),
            "torchrun_2_over_cli_speed": round(rows["torchrun_2"]["images_per_s"] / rows["cli"]["images_per_s"], 2),
            "cli_resumed_over_cli_seconds": round(rows["cli_resumed"]["seconds"] / rows["cli"]["seconds"], 2),
        },
        "torchrun_csv_rows_equal_cli": same_rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    text = json.dumps(report, indent=1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
