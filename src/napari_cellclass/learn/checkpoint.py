"""The trained-model folder and the resumable training state; nothing is ever unpickled.

A model folder holds ``model.safetensors`` (the best weights) and ``config.json`` (format
name and version, backbone, classes, channels, input size, normalisation, the whole
TrainConfig, the exact train/val/test image lists, metrics history, best epoch, package
versions). ``checkpoint/last.safetensors`` + ``checkpoint/last.json`` hold the state of the
last finished epoch (weights, optimizer tensors, schedule, history) for resuming.

Both pairs are written by :func:`.weights_io.save_pair`, so a kill at any point leaves the old or
the new complete state; non-finite weights are never written.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.atomic import atomic_write_text, atomic_write_with
from ..core.errors import CellclassError, ModelFolderError
from ..core.model_folder import (  # noqa: F401 - re-exported: the torch-free half of the model folder
    CONFIG_NAME,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    PENDING_WEIGHTS_NAME,
    WEIGHTS_ID,
    WEIGHTS_NAME,
    read_model_config,
    read_safetensors_metadata,
    weights_path,
)
from .data import Normalisation
from .weights_io import (  # noqa: F401 - non_finite_tensors and to_json_text re-exported for the trainer
    non_finite_tensors,
    read_safetensors,
    refuse_non_finite,
    save_error,
    save_pair,
    snapshot_tensors,
    tensor_writer,
    to_json_text,
)

STATE_DIR = "checkpoint"
STATE_WEIGHTS = "last.safetensors"
STATE_PENDING = "last.pending.safetensors"
STATE_JSON = "last.json"
_PACKAGES = ("napari-cellclass", "torch", "torchvision", "timm", "numpy", "safetensors", "tifffile")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model (and Python's)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now_iso() -> str:
    """The current UTC time in ISO-8601 (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def save_model_folder(folder: str | os.PathLike, model: nn.Module | dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> str:
    """Write ``model.safetensors`` and ``config.json`` as one step (see :func:`save_pair`); returns the weights id.

    ``model`` may be a state dict (e.g. a snapshot taken by :func:`snapshot_tensors`).
    """
    data = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **meta,
            "package_versions": package_versions(), "saved": now_iso()}
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return save_pair(Path(folder), WEIGHTS_NAME, PENDING_WEIGHTS_NAME, state,
                      {"format": MODEL_FORMAT}, CONFIG_NAME, data, indent=1)


class BackgroundSaves:
    """Checkpoint writes in one background thread while training goes on, paced to a share of the time.

    The training thread snapshots what to write at each epoch's end and hands it to :meth:`offer`
    by kind (``'best'``, ``'last'``): a newer offer replaces an older one of its kind not started
    yet. Writes start when none is running and the last one ended at least its own duration /
    ``share`` ago (so writing takes about ``share`` of the time: with epochs longer than that,
    every epoch is written); :meth:`flush` starts the newest at once and waits (end of a run,
    cancel). :meth:`done` yields the events of the finished writes (the files are on disk then).
    A write's error (a full disk) is raised in the training thread by :meth:`done` or
    :meth:`flush`, and nothing more is written. Each write is atomic, so a crash leaves the
    previous complete files, at most one pace interval older.
    """

    KINDS = ("best", "last")  # written in this order

    def __init__(self, share: float = 0.03) -> None:
        self.share = share
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cellclass-save")
        self._jobs: deque[tuple[Future, Any]] = deque()
        self._offers: dict[str, tuple[Callable[[], Any], Any]] = {}
        self._failed = False
        self._next = 0.0  # time.monotonic() from which the next write may start

    def offer(self, kind: str, write: Callable[[], Any], event: Any) -> None:
        """Hand over the write of ``kind`` (a snapshot); ``event`` announces it once on disk. Writes start
        in :meth:`done` (when due) or :meth:`flush`."""
        self._offers[kind] = (write, event)

    def due(self) -> bool:
        """Whether a write offered now would start at once."""
        return not self._jobs and not self._failed and time.monotonic() >= self._next

    def _start(self, force: bool) -> None:
        if not self._offers or self._failed or (not force and (self._jobs or time.monotonic() < self._next)):
            return
        for kind in self.KINDS:
            if kind in self._offers:
                write, event = self._offers.pop(kind)
                self._jobs.append((self._pool.submit(self._run, write), event))

    def _run(self, write: Callable[[], Any]) -> Any:
        if self._failed:
            return None
        t = time.monotonic()
        try:
            return write()
        except BaseException:
            self._failed = True
            raise
        finally:
            now = time.monotonic()
            self._next = max(self._next, now + (now - t) * (1 / self.share - 1))

    def done(self) -> Iterator[Any]:
        """The events of the finished writes, in order (raises a write's error); starts a due write."""
        while self._jobs and self._jobs[0][0].done():
            fut, event = self._jobs.popleft()
            fut.result()
            yield event
        self._start(force=False)

    def flush(self) -> Iterator[Any]:
        """Start the newest offers now and wait for every write; their events in order."""
        self._start(force=True)
        while self._jobs:
            fut, event = self._jobs.popleft()
            fut.result()
            yield event

    def close(self) -> None:
        """Let the started writes finish (their errors are dropped: the caller is already ending)."""
        self._pool.shutdown(wait=True)
        self._jobs.clear()
        self._offers.clear()


def save_weights(folder: Path, model: nn.Module) -> Path:
    """Write only ``folder/model.safetensors`` (a folder without ``config.json``; non-finite weights refused).

    A complete model folder is written with :func:`save_model_folder`.
    """
    folder = Path(folder)
    path = folder / WEIGHTS_NAME
    state = model.state_dict()
    refuse_non_finite(path, state)
    from safetensors import SafetensorError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, tensor_writer(state, {"format": MODEL_FORMAT}), fsync=True)
    except (OSError, CellclassError, SafetensorError, RuntimeError) as exc:
        raise save_error(folder, exc) from None
    return path


def write_model_config(folder: Path, meta: dict[str, Any]) -> Path:
    """Rewrite ``config.json`` of a saved model (same weights: their ``weights_id`` is kept).

    Adds the format name, version, package versions and a timestamp.
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    data = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **meta,
            "package_versions": package_versions(), "saved": now_iso()}
    if WEIGHTS_ID not in data and path.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            old = json.loads(path.read_text(encoding="utf-8")).get(WEIGHTS_ID)
            if old is not None:
                data[WEIGHTS_ID] = old
    try:
        text = to_json_text(data, 1)
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{path}: cannot be saved ({exc}); use plain values in the settings") from None
    try:
        atomic_write_text(path, text, fsync=True)
    except (OSError, CellclassError) as exc:
        raise save_error(folder, exc) from None
    return path


# ---------------------------------------------------------------------------- reading a folder
@dataclass
class TrainedModel:
    """A trained classifier ready for prediction (in eval mode, on CPU until moved).

    Attributes
    ----------
    model : torch.nn.Module
    path : Path
        The model folder.
    config : dict
        The full ``config.json``.
    """

    model: nn.Module
    path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        """The model folder's name."""
        return self.path.name

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in output order."""
        return tuple(self.config["classes"])

    @property
    def multi_label(self) -> bool:
        """Whether the model predicts several classes per image."""
        return bool(self.config.get("multi_label", False))

    @property
    def in_chans(self) -> int:
        """Input channels."""
        return int(self.config["in_chans"])

    @property
    def input_size(self) -> int:
        """Input size in pixels (square)."""
        return int(self.config["input_size"])

    @property
    def backbone(self) -> str:
        """The backbone name."""
        return str(self.config["backbone"])

    @property
    def normalisation(self) -> Normalisation:
        """Intensity scaling and per-channel mean/std of the inputs."""
        return Normalisation.from_json(self.config["normalisation"])

    @property
    def threshold(self) -> float:
        """Multi-label decision threshold of the settings (see :attr:`thresholds`)."""
        return float(self.config.get("train_config", {}).get("threshold", 0.5))

    @property
    def calibration(self) -> dict[str, Any]:
        """The calibration fitted after training (``{}`` for a model trained before calibration existed)."""
        cal = self.config.get("calibration")
        return cal if isinstance(cal, dict) else {}

    @property
    def temperature(self) -> float:
        """The logits are divided by this before softmax/sigmoid (1: not calibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def thresholds(self) -> np.ndarray:
        """Multi-label decision threshold per class: chosen on validation, else :attr:`threshold`."""
        chosen = self.calibration.get("thresholds") or {}
        return np.array([float(chosen.get(c, self.threshold)) for c in self.classes], np.float32)

    @property
    def identity(self) -> str:
        """``<folder name>@<12 hex digits>``: the sha256 of the weights as they are now (names, dtypes, shapes,
        bytes; computed on each access), so retrained or altered weights under the same name are another model."""
        return f"{self.name}@{state_digest(self.model)[:12]}"

    @property
    def split(self) -> dict[str, list[str]]:
        """The image ids of the train/val/test split it was trained with."""
        return {k: list(v) for k, v in self.config.get("split", {}).get("ids", {}).items()}

    def __repr__(self) -> str:
        return (f"TrainedModel({str(self.path)!r}, backbone={self.backbone!r}, classes={list(self.classes)}, "
                f"in_chans={self.in_chans}, input_size={self.input_size})")


def state_digest(model: nn.Module) -> str:
    """The sha256 (hex) of a model's state: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def build_from_config(cfg: dict[str, Any]) -> nn.Module:
    """The untrained network described by a model ``config.json`` (no weights downloaded)."""
    from .models import build_model

    tc = cfg["train_config"]
    model, _report = build_model(cfg["backbone"], len(cfg["classes"]), in_chans=int(cfg["in_chans"]),
                                 pretrained=None, head=tc.get("head", "pool"), dropout=float(tc.get("dropout", 0.0)))
    return model


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load weights, refusing (clear error) on missing, unexpected or reshaped tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or reshaped:
        parts = []
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} tensor(s) of another shape, e.g. {k} {tuple(state[k].shape)} "
                         f"instead of {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise ModelFolderError(f"{where}: weights do not match config.json ({'; '.join(parts)}); "
                               "the folder was altered or mixed with another model, retrain or copy it again")
    model.load_state_dict(state, strict=True)


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Open a model folder written by :func:`napari_cellclass.learn.train`.

    Raises
    ------
    ModelFolderError
        For a missing folder or file, a folder from another tool, an older or newer format,
        a damaged ``config.json``, weights that do not match the description (altered shapes,
        another save's weights) or hold NaN/infinity.
    """
    folder = Path(folder).expanduser().resolve()
    cfg = read_model_config(folder)
    try:
        model = build_from_config(cfg)
    except CellclassError as exc:  # a backbone or head this version does not know
        raise ModelFolderError(f"{folder / CONFIG_NAME}: {exc}") from None
    path = weights_path(folder, cfg)
    state = read_safetensors(path)
    bad = non_finite_tensors(state)
    if bad:
        raise ModelFolderError(f"{path}: {len(bad)} tensor(s) hold non-finite values (NaN or infinity, e.g. "
                               f"{bad[0]}): the training diverged; retrain with a lower learning rate")
    load_state_checked(model, state, path)
    model.eval().to(device)
    return TrainedModel(model, folder, cfg)


# ---------------------------------------------------------------------------- training state
def _split_optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                plain.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def training_state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (model + optimizer, not copied) and the JSON part of the optimizer's state."""
    opt_tensors, opt_json = _split_optimizer_state(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    return tensors, opt_json


def save_training_state(folder: Path, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                        state: dict[str, Any], snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
                        ) -> Path:
    """Write ``checkpoint/last.safetensors`` (model + optimizer tensors) and ``last.json`` as one step.

    ``snapshot``: the :func:`training_state_tensors` to write instead of the model's and optimizer's.
    """
    d = Path(folder) / STATE_DIR
    tensors, opt_json = snapshot if snapshot is not None else training_state_tensors(model, optimizer)
    data = {"format": MODEL_FORMAT + "/state", "format_version": MODEL_FORMAT_VERSION,
            "optimizer": opt_json, **state, "saved": now_iso()}
    save_pair(d, STATE_WEIGHTS, STATE_PENDING, tensors, {"format": MODEL_FORMAT + "/state"}, STATE_JSON, data,
               indent=None)
    return d


def read_training_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The resume state of a model folder (JSON part, and the tensors saved with it)."""
    d = Path(folder) / STATE_DIR
    path = d / STATE_JSON
    if not path.exists() or not ((d / STATE_WEIGHTS).exists() or (d / STATE_PENDING).exists()):
        raise ModelFolderError(f"{folder}: nothing to resume (no {STATE_DIR}/{STATE_JSON}); train without resume")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: unreadable ({' '.join(str(exc).split())}); train without resume") from None
    if (not isinstance(data, dict) or data.get("format") != MODEL_FORMAT + "/state"
            or data.get("format_version") != MODEL_FORMAT_VERSION):
        raise ModelFolderError(f"{path}: not a resumable napari-cellclass state of this version; train without resume")
    wanted = data.get(WEIGHTS_ID)
    chosen = d / STATE_WEIGHTS
    if wanted is not None:
        ids = {p: read_safetensors_metadata(p).get(WEIGHTS_ID) for p in (d / STATE_WEIGHTS, d / STATE_PENDING)
               if p.exists()}
        match = [p for p, found in ids.items() if found == wanted]
        if match:
            chosen = match[0]
        elif ids.get(chosen, "") is not None:  # another save's weights (a file without an id: shapes checked)
            raise ModelFolderError(f"{d}: {STATE_WEIGHTS} does not belong to {STATE_JSON} (altered or mixed); "
                                   "train without resume")
    elif not chosen.exists():
        raise ModelFolderError(f"{folder}: nothing to resume (no {STATE_DIR}/{STATE_WEIGHTS}); train without resume")
    return data, read_safetensors(chosen)


def restore_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, data: dict[str, Any],
                           tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Put saved weights and optimizer state back (shapes checked)."""
    load_state_checked(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, where)
    opt_json = data["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, extra in opt_json.get("plain_state", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": opt_json["param_groups"]})
