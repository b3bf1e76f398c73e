"""The trained-model folder and the resumable training state; nothing is ever unpickled.

A model folder holds ``model.safetensors`` (the best weights) and ``config.json`` (format
name and version, backbone, classes, channels, input size, normalisation, the whole
TrainConfig, the exact train/val/test image lists, metrics history, best epoch, package
versions). ``checkpoint/last.safetensors`` + ``checkpoint/last.json`` hold the state of the
last finished epoch (weights, optimizer tensors, schedule, history) for resuming.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.atomic import atomic_write_text
from ..core.errors import ModelFolderError
from .data import Normalisation

from ..core.model_folder import (  # noqa: F401 - re-exported: the torch-free half of the model folder
    CONFIG_NAME,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    WEIGHTS_NAME,
    read_model_config,
)

STATE_DIR = "checkpoint"
STATE_WEIGHTS = "last.safetensors"
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
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- safetensors I/O
def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    """Atomic safetensors write (temp file + os.replace); tensors are copied to contiguous CPU memory."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=".cellclass-tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        raise ModelFolderError(f"{path}: unreadable weights file ({msg}); the file is damaged, retrain or "
                               "copy it again") from None


def save_weights(folder: Path, model: nn.Module) -> Path:
    """Write the model's state dict to ``folder/model.safetensors``."""
    path = Path(folder) / WEIGHTS_NAME
    _write_safetensors(path, model.state_dict(), {"format": MODEL_FORMAT})
    return path


def write_model_config(folder: Path, meta: dict[str, Any]) -> Path:
    """Write ``config.json`` (adds the format name, version, versions and a timestamp)."""
    data = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **meta,
            "package_versions": package_versions(), "saved": now_iso()}
    path = Path(folder) / CONFIG_NAME
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=_json_default) + "\n",
                      fsync=False)
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


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
        return self.path.name

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config["classes"])

    @property
    def multi_label(self) -> bool:
        return bool(self.config.get("multi_label", False))

    @property
    def in_chans(self) -> int:
        return int(self.config["in_chans"])

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def backbone(self) -> str:
        return str(self.config["backbone"])

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation.from_json(self.config["normalisation"])

    @property
    def threshold(self) -> float:
        return float(self.config.get("train_config", {}).get("threshold", 0.5))

    @property
    def split(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.config.get("split", {}).get("ids", {}).items()}

    def __repr__(self) -> str:
        return (f"TrainedModel({str(self.path)!r}, backbone={self.backbone!r}, classes={list(self.classes)}, "
                f"in_chans={self.in_chans}, input_size={self.input_size})")


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
        or weights that do not match the description (altered shapes).
    """
    folder = Path(folder).expanduser().resolve()
    cfg = read_model_config(folder)
    model = build_from_config(cfg)
    load_state_checked(model, _read_safetensors(folder / WEIGHTS_NAME), folder / WEIGHTS_NAME)
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


def save_training_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any]) -> Path:
    """Write ``checkpoint/last.safetensors`` (model + optimizer tensors) and ``last.json``."""
    d = Path(folder) / STATE_DIR
    opt_tensors, opt_json = _split_optimizer_state(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    _write_safetensors(d / STATE_WEIGHTS, tensors, {"format": MODEL_FORMAT + "/state"})
    data = {"format": MODEL_FORMAT + "/state", "format_version": MODEL_FORMAT_VERSION,
            "optimizer": opt_json, **state, "saved": now_iso()}
    atomic_write_text(d / STATE_JSON, json.dumps(data, default=_json_default) + "\n", fsync=False)
    return d


def read_training_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The resume state of a model folder (JSON part, tensors)."""
    d = Path(folder) / STATE_DIR
    path = d / STATE_JSON
    if not path.exists() or not (d / STATE_WEIGHTS).exists():
        raise ModelFolderError(f"{folder}: nothing to resume (no {STATE_DIR}/{STATE_JSON}); train without resume")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: unreadable ({exc}); train without resume") from None
    if data.get("format") != MODEL_FORMAT + "/state" or data.get("format_version") != MODEL_FORMAT_VERSION:
        raise ModelFolderError(f"{path}: not a resumable napari-cellclass state of this version; train without resume")
    return data, _read_safetensors(d / STATE_WEIGHTS)


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
