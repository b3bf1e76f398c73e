"""The logic behind the training and prediction docks' runs, free of Qt and napari.

- :class:`RunHistory` collects one run's per-epoch curves and best epoch (what the plots draw).
- :class:`TrainingSession` runs the engine with a cancel token and turns its event stream into
  runs, progress fractions and a result; the widget only iterates it in a worker thread.
- :func:`choose_active_model` keeps a better model active after a worse run.
- :func:`run_prediction` is the Predictions dock's worker body.

Torch is imported only inside the functions that train, predict or evaluate.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import CellclassError, ModelFolderError
from ..core.model_folder import read_model_config
from ..core.predictions import (
    Prediction,
    write_predictions,
)
from ..core.project import Project

if TYPE_CHECKING:
    from ..learn import CancelToken, TrainConfig

log = logging.getLogger(__name__)

#: How much lower the training process's priority is than the viewer's (Unix ``nice``).
CHILD_NICE = 5


# ---------------------------------------------------------------------------- imports
def import_learning_libraries() -> None:
    """Import torch, timm and the learning floor now, in the calling (main) thread.

    Two crashes are avoided here. Workers must never be the first to import these libraries
    (C extensions initialised off the main thread). And triton's bundled LLVM crashes the
    process when it loads after Mesa's LLVM, which napari's canvas brings in on software
    OpenGL (llvmpipe: remote desktops, virtual machines, Xvfb). Training and prediction do not
    use triton (it only serves ``torch.compile`` on GPUs), so in that case it is blocked for
    this process. After the first call this costs nothing.
    """
    if "triton" not in sys.modules and _mesa_llvm_loaded():
        log.info("software OpenGL (Mesa LLVM) is loaded: triton is disabled in this napari session")
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
    import timm  # noqa: F401
    import timm.layers  # noqa: F401
    import torchvision  # noqa: F401

    from .. import learn  # noqa: F401
    from ..learn import models  # noqa: F401


def _mesa_llvm_loaded() -> bool:
    """Whether a Mesa LLVM library is mapped into this process (Linux; False elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:
        return False


# ---------------------------------------------------------------------------- runs and curves
@dataclass
class RunHistory:
    """Per-epoch curves of one training run (what the plots show)."""

    name: str
    monitor: str = "accuracy"
    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    model_dir: str | None = None
    status: str = "running"

    def add_epoch(self, epoch: int, train: Mapping[str, Any], val: Mapping[str, Any], is_best: bool,
                  monitor: str | None = None) -> None:
        """Record one epoch's train and validation metrics."""
        self.epochs.append(int(epoch))
        self.train_loss.append(float(train.get("loss", np.nan)))
        self.val_loss.append(float(val.get("loss", np.nan)))
        self.train_accuracy.append(float(train.get("accuracy", np.nan)))
        self.val_accuracy.append(float(val.get("accuracy", np.nan)))
        if monitor:
            self.monitor = monitor
        if is_best:
            self.best_epoch = int(epoch)

    def best_point(self, curve: str) -> tuple[int, float] | None:
        """``(epoch, value)`` of ``curve`` (e.g. ``'val_accuracy'``) at the best epoch."""
        if self.best_epoch is None or self.best_epoch not in self.epochs:
            return None
        k = self.epochs.index(self.best_epoch)
        return self.best_epoch, getattr(self, curve)[k]

    @property
    def label(self) -> str:
        best = f", best epoch {self.best_epoch}" if self.best_epoch is not None else ""
        return f"{self.name} ({self.status}{best})"


@dataclass(frozen=True)
class Failed:
    """The run failed: a message for the user (what happened and what to do)."""

    message: str
    details: str = ""


def user_message(exc: BaseException) -> str:
    """One line a user can act on, for any exception of a run."""
    if isinstance(exc, CellclassError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "the computer ran out of memory; lower the batch size or the input size"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "out of memory" in text.lower():
        return f"out of memory ({text[:200]}); lower the batch size or the input size, or use device cpu"
    return f"unexpected {type(exc).__name__}: {text[:300]} (details in the log; please report it)"


class TrainingSession:
    """Train on a project and keep every run's curves; the widget iterates :meth:`run`.

    Parameters
    ----------
    project
        The project to train on.
    models_dir
        Folder for new model folders (default: the engine's ``<project>/cellclass_models``).
    in_process
        Train in a child process (default), so the viewer's event loop never waits for the
        training loop; False trains in the calling thread (scripts, debugging).
    """

    def __init__(self, project: Project, models_dir: str | os.PathLike | None = None,
                 in_process: bool = True) -> None:
        self.project = project
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.in_process = in_process
        self.runs: list[RunHistory] = []
        self.active_model: Path | None = None
        self.cancel_token: CancelToken | None = None
        self.total_steps = 1
        self.done_steps = 0
        self._epoch_steps = 1
        self._val_steps = 1
        self._val_batch = 64

    @property
    def running(self) -> bool:
        return self.cancel_token is not None

    def start(self, config: TrainConfig) -> RunHistory:
        """Prepare a run (main thread): a new :class:`RunHistory` and cancel token."""
        from ..learn import CancelToken

        if self.running:
            raise CellclassError("a training run is already going; stop it first")
        self.cancel_token = CancelToken()
        run = RunHistory(f"run {len(self.runs) + 1}: {config.backbone}")
        self.runs.append(run)
        self.total_steps, self.done_steps = max(1, config.epochs), 0
        self._val_batch = max(1, 2 * config.batch_size)  # the engine validates in batches of 2x
        return run

    def run(self, config: TrainConfig, out_dir: str | os.PathLike | None = None,
            progress_interval: float = 0.1) -> Iterator[Any]:
        """The engine's events (call in a worker thread after :meth:`start`).

        Batch progress is thinned to one event per ``progress_interval`` seconds (plus the first
        and last batch of every phase); every other event passes. Any exception ends the stream
        with a :class:`Failed` item instead of raising, so the caller always gets control back
        and can show the message.
        """
        token = self.cancel_token
        if token is None:
            raise CellclassError("call start() before run()")
        if out_dir is None and self.models_dir is not None:
            from ..learn.engine import default_out_dir

            out_dir = self.models_dir / default_out_dir(self.project, config.backbone).name
        threads = None
        try:
            if self.in_process:
                from ..learn.process import default_num_threads, run_training_in_process

                events = run_training_in_process(self.project.root, config, out_dir, token, nice=CHILD_NICE,
                                                 num_threads=default_num_threads(config.device))
            else:
                from ..learn import run_training

                threads = _leave_a_core_for_the_viewer(config.device)
                events = run_training(self.project, config, out_dir, cancel=token)
            yield from thin_progress(events, progress_interval)
        except Exception as exc:  # noqa: BLE001 - turned into a user notification by the widget
            log.error("training failed", exc_info=True)
            yield Failed(user_message(exc), traceback.format_exc())
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)

    def handle(self, event: Any) -> None:
        """Update the current run and the progress from one event (main thread)."""
        from ..learn import BatchProgress, EpochEnd, Finished, Started

        run = self.runs[-1] if self.runs else None
        if isinstance(event, Started):
            self._epoch_steps = max(1, event.batches_per_epoch)
            self._val_steps = max(1, -(-event.n_val // self._val_batch))
            per_epoch = self._epoch_steps + self._val_steps
            self.total_steps = max(1, (event.epochs - event.start_epoch + 1) * per_epoch)
            self._first_epoch = event.start_epoch
            self.done_steps = 0
        elif isinstance(event, BatchProgress) and event.phase in ("train", "val"):
            per_epoch = self._epoch_steps + self._val_steps
            base = (event.epoch - getattr(self, "_first_epoch", 1)) * per_epoch
            step = event.batch if event.phase == "train" else self._epoch_steps + min(event.batch, self._val_steps)
            self.done_steps = min(self.total_steps, max(self.done_steps, base + step))
        elif isinstance(event, EpochEnd) and run is not None:
            run.add_epoch(event.epoch, event.train, event.val, event.is_best, event.monitor)
        elif isinstance(event, Finished):
            if run is not None:
                run.model_dir = event.model_dir
                run.status = "cancelled" if event.cancelled else ("stopped early" if event.stopped_early else "done")
            if event.model_dir:
                self.active_model = Path(event.model_dir)
            self.cancel_token = None
        elif isinstance(event, Failed):
            if run is not None:
                run.status = "failed"
            self.cancel_token = None

    def finish(self) -> None:
        """The worker ended (whatever happened): the session is idle again."""
        if self.runs and self.runs[-1].status == "running":
            self.runs[-1].status = "ended"
        self.cancel_token = None

    def stop(self) -> bool:
        """Ask the run to stop after the current batch (the best model is kept); False when idle."""
        if self.cancel_token is None:
            return False
        self.cancel_token.cancel()
        return True


def thin_progress(events: Iterable[Any], interval: float = 0.1,
                  clock: Callable[[], float] = time.monotonic) -> Iterator[Any]:
    """``events`` with batch progress thinned to at most one per ``interval`` seconds.

    The first and last batch of every phase always pass, and so does every other event.
    """
    from ..learn import BatchProgress

    last = -float("inf")
    for event in events:
        if isinstance(event, BatchProgress) and 1 < event.batch < event.num_batches:
            now = clock()
            if now - last < interval:
                continue
            last = now
        yield event


def _leave_a_core_for_the_viewer(device: str) -> int | None:
    """On a CPU run, let torch use one core less so the viewer's event loop keeps a core.

    Returns the previous thread count to restore (None when nothing changed).
    """
    import torch

    if device not in ("cpu", "auto") or (device == "auto" and (torch.cuda.is_available() or (
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()))):
        return None
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = max(1, min(before, cores - 1))
    if wanted == before:
        return None
    torch.set_num_threads(wanted)
    return before


# ---------------------------------------------------------------------------- model folders
@dataclass(frozen=True)
class ModelChoice:
    """Which model should be active after a run: the new one, or the one already active.

    ``reason`` says why in one line (shown in the Training dock).
    """

    keep_active: bool
    reason: str


def choose_active_model(new_dir: str | os.PathLike, active_dir: str | os.PathLike | None) -> ModelChoice:
    """Compare a finished run's model with the active one on their monitored validation metric.

    The new model becomes active unless the active model monitored the same metric on the
    same validation images and did strictly better (a second run stopped early must not
    silently replace a better model; figures on other images say nothing either way).
    """
    new_cfg = read_model_config(new_dir)
    new = _monitored(new_cfg)
    if active_dir is None or Path(active_dir) == Path(new_dir):
        return ModelChoice(False, "")
    try:
        old_cfg = read_model_config(active_dir)
    except ModelFolderError:
        return ModelChoice(False, "")
    if _validation_ids(new_cfg) != _validation_ids(old_cfg):
        return ModelChoice(False, "")
    old = _monitored(old_cfg)
    if new is None or old is None or new[0] != old[0] or new[1] != old[1]:
        return ModelChoice(False, "")
    metric, mode, new_value = new
    old_value = old[2]
    worse = new_value < old_value if mode == "max" else new_value > old_value
    if not worse:
        return ModelChoice(False, "")
    return ModelChoice(True, f"its best validation {metric} {new_value:.3f} is worse than "
                             f"{old_value:.3f} of the active model {Path(active_dir).name}, which stays active")


def _validation_ids(cfg: Mapping[str, Any]) -> list[str] | None:
    """The validation image ids a model's config.json records (None when it records none)."""
    ids = ((cfg.get("split") or {}).get("ids") or {}).get("val")
    return sorted(map(str, ids)) if isinstance(ids, list) and ids else None


def _monitored(cfg: Mapping[str, Any]) -> tuple[str, str, float] | None:
    """``(metric, mode, best value)`` recorded in a model's config.json, when it is finite."""
    monitor = cfg.get("monitor") or {}
    metric, mode = monitor.get("metric"), monitor.get("mode", "max")
    value = (cfg.get("best_metrics") or {}).get(metric) if isinstance(metric, str) else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(value) or mode not in ("max", "min"):
        return None
    return metric, mode, value


def check_model_folder(folder: str | os.PathLike) -> Path:
    """A model folder path after checking its ``config.json`` and weights file (torch-free)."""
    folder = Path(folder).expanduser().resolve()
    read_model_config(folder)
    return folder


def copy_model_folder(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a model folder (without its resume checkpoint) to ``dest`` (must not exist or be empty)."""
    src = check_model_folder(src)
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and any(dest.iterdir()):
        dest = dest / src.name
        if dest.exists():
            raise ModelFolderError(f"{dest}: already exists; pick another folder")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoint"), dirs_exist_ok=True)
    return dest


# ---------------------------------------------------------------------------- predictions
def run_prediction(model_dir: str | os.PathLike, project: Project, ids: Sequence[str], chunk: int = 64,
                   cancel: CancelToken | None = None
                   ) -> Iterator[tuple[int, int] | dict[str, Prediction] | Failed]:
    """Predict ``ids`` in chunks and store the results once at the end (labels untouched).

    Yields ``(done, total)`` after every chunk (a worker can quit there), then the
    ``{image_id: Prediction}`` of all predicted images (also those done before a cancel).
    Exceptions end the stream with a :class:`Failed` instead of raising.
    """
    from ..learn import load_model, predict

    ids = list(ids)
    if not ids:
        yield Failed("no images to predict in this scope (all labelled? choose 'whole project')")
        return
    out: dict[str, Prediction] = {}
    try:
        trained = load_model(model_dir)
        yield 0, len(ids)
        for start in range(0, len(ids), chunk):
            if cancel is not None and cancel.is_set():
                break
            res = predict(trained, project, ids=ids[start:start + chunk], write=False, cancel=cancel)
            out.update((r.image_id, r) for r in res.records())
            yield min(start + chunk, len(ids)), len(ids)
        if out:  # one write of the predictions file, not one per chunk
            write_predictions(project.root, out.values())
    except Exception as exc:  # noqa: BLE001 - handed to the widget as a Failed item
        log.error("prediction failed", exc_info=True)
        yield Failed(user_message(exc), traceback.format_exc())
        return
    yield out
