"""Reading a trained-model folder's ``config.json`` without torch (for the napari widgets and checks).

The weights (``model.safetensors``) are loaded by :mod:`napari_cellclass.learn.checkpoint`.

A folder is saved in three steps so that a reader always finds a matching pair: the new weights
go to ``model.pending.safetensors``, then ``config.json`` (naming the new ``weights_id``) replaces
the old one, then the pending file replaces ``model.safetensors``. ``config.json`` and each
weights file's safetensors metadata carry the same ``weights_id``; :func:`weights_path` picks
the file whose id matches, so a save killed between two steps leaves the old or the new model.
Folders written before ``weights_id`` existed are read as they are.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from .errors import ModelFolderError

MODEL_FORMAT = "napari-cellclass/model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
PENDING_WEIGHTS_NAME = "model.pending.safetensors"
CONFIG_NAME = "config.json"
WEIGHTS_ID = "weights_id"
SCALINGS = ("auto", "dtype", "percentile")
_MAX_HEADER = 100 * 2**20


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (stdlib only; the tensors are not read)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", raw)
            if size > _MAX_HEADER:
                raise ValueError("header too large")
            header = json.loads(fh.read(size).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: unreadable weights file ({' '.join(str(exc).split())}); the file is "
                               "damaged, retrain or copy it again") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def weights_path(folder: str | os.PathLike, cfg: dict[str, Any]) -> Path:
    """The weights file that belongs to ``cfg`` (the folder's ``config.json``).

    ``model.safetensors`` when its ``weights_id`` matches (or the folder predates ids, or the
    file was rewritten without one: then only the shapes are checked on loading); the pending
    file of a save that was interrupted after ``config.json`` was written; otherwise
    :class:`ModelFolderError`.
    """
    folder = Path(folder)
    main = folder / WEIGHTS_NAME
    wanted = cfg.get(WEIGHTS_ID)
    if wanted is None:
        if not main.exists():
            raise ModelFolderError(f"{folder}: {WEIGHTS_NAME} is missing; copy the whole model folder")
        return main
    ids = {path: read_safetensors_metadata(path).get(WEIGHTS_ID)
           for path in (main, folder / PENDING_WEIGHTS_NAME) if path.exists()}
    for path, found in ids.items():
        if found == wanted:
            return path
    if main not in ids:
        raise ModelFolderError(f"{folder}: {WEIGHTS_NAME} is missing; copy the whole model folder")
    if ids[main] is None:  # rewritten by another tool: only the shapes can be checked
        return main
    raise ModelFolderError(f"{main}: these weights do not belong to config.json (weights_id differs: the folder "
                           "was mixed with another model or altered); retrain or copy the whole folder again")


def _bad(path: Path, what: str) -> ModelFolderError:
    return ModelFolderError(f"{path}: {what}; the folder was altered or damaged, retrain the model or copy it again")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_model_config(path: Path, cfg: dict[str, Any]) -> None:
    """Check the types and values of a model ``config.json`` (one :class:`ModelFolderError` line)."""
    if not isinstance(cfg.get("backbone"), str) or not cfg["backbone"].strip():
        raise _bad(path, "'backbone' must be a backbone name")
    classes = cfg.get("classes")
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise _bad(path, "'classes' must be a list of distinct class names")
    if not _is_int(cfg.get("in_chans")) or not 1 <= cfg["in_chans"] <= 4096:
        raise _bad(path, f"'in_chans' must be a whole number >= 1, not {cfg.get('in_chans')!r}")
    if not _is_int(cfg.get("input_size")) or not 8 <= cfg["input_size"] <= 16384:
        raise _bad(path, f"'input_size' must be a whole number of pixels, not {cfg.get('input_size')!r}")
    norm = cfg.get("normalisation")
    if not isinstance(norm, dict):
        raise _bad(path, "'normalisation' must be a mapping with scaling, mean and std")
    if norm.get("scaling") not in SCALINGS:
        raise _bad(path, f"normalisation 'scaling' must be one of {', '.join(SCALINGS)}, not {norm.get('scaling')!r}")
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list) or len(values) != cfg["in_chans"] or not all(_is_num(v) for v in values):
            raise _bad(path, f"normalisation '{key}' must be {cfg['in_chans']} finite number(s), not {values!r}")
    if not all(v > 0 for v in norm["std"]):
        raise _bad(path, f"normalisation 'std' must be positive, not {norm['std']!r} (zero or negative spread "
                         "turns every prediction into NaN)")
    tc = cfg.get("train_config")
    if not isinstance(tc, dict):
        raise _bad(path, "'train_config' must be a mapping of training settings")
    if "head" in tc and not isinstance(tc["head"], str):
        raise _bad(path, f"train_config 'head' must be a name, not {tc['head']!r}")
    if "dropout" in tc and not (_is_num(tc["dropout"]) and 0 <= tc["dropout"] < 1):
        raise _bad(path, f"train_config 'dropout' must be a number in [0, 1), not {tc['dropout']!r}")
    if "threshold" in tc and not (_is_num(tc["threshold"]) and 0 < tc["threshold"] < 1):
        raise _bad(path, f"train_config 'threshold' must be a number in (0, 1), not {tc['threshold']!r}")
    if "precision" in tc and not isinstance(tc["precision"], str):
        raise _bad(path, f"train_config 'precision' must be a name, not {tc['precision']!r}")
    if not isinstance(cfg.get("multi_label", False), bool):
        raise _bad(path, f"'multi_label' must be true or false, not {cfg['multi_label']!r}")
    split = cfg.get("split", {})
    ids = split.get("ids", {}) if isinstance(split, dict) else None
    if not isinstance(ids, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v)
                                            for v in ids.values()):
        raise _bad(path, "'split' must map train/val/test to lists of image ids")
    if not isinstance(cfg.get("channel_names", []), list):
        raise _bad(path, "'channel_names' must be a list")
    if WEIGHTS_ID in cfg and not isinstance(cfg[WEIGHTS_ID], str):
        raise _bad(path, f"'{WEIGHTS_ID}' must be a string")


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``config.json`` of a model folder; :class:`ModelFolderError` otherwise."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelFolderError(f"{folder}: model folder does not exist; check the path")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a folder; give the model folder (with {CONFIG_NAME} and {WEIGHTS_NAME})")
    path = folder / CONFIG_NAME
    if not path.exists():
        others = sorted(p.name for p in folder.iterdir())[:3]
        hint = f" (it holds {', '.join(others)}: written by another tool?)" if others else " (it is empty)"
        raise ModelFolderError(f"{folder}: not a napari-cellclass model folder, no {CONFIG_NAME}{hint}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFolderError(f"{path}: unreadable ({' '.join(str(exc).split())}); the folder is damaged") from None
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
        raise ModelFolderError(f"{path}: not a napari-cellclass model (written by another tool); "
                               "train one with `napari-cellclass train`")
    version = cfg.get("format_version")
    if not _is_int(version) or version < MODEL_FORMAT_VERSION:
        raise ModelFolderError(f"{folder}: model folder format {version} is older than this napari-cellclass "
                               f"reads (format {MODEL_FORMAT_VERSION}); retrain the model")
    if version > MODEL_FORMAT_VERSION:
        raise ModelFolderError(f"{folder}: model folder format {version} is newer than this napari-cellclass "
                               f"(format {MODEL_FORMAT_VERSION}); upgrade napari-cellclass")
    missing = [k for k in ("backbone", "classes", "in_chans", "input_size", "normalisation", "train_config")
               if k not in cfg]
    if missing:
        raise ModelFolderError(f"{path}: incomplete model description (missing {', '.join(missing)}); "
                               "the folder was altered, retrain the model")
    check_model_config(path, cfg)
    weights_path(folder, cfg)
    return cfg
