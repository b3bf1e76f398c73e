"""Reading a trained-model folder's ``config.json`` without torch (for the napari widgets and checks).

The weights (``model.safetensors``) are loaded by :mod:`napari_cellclass.learn.checkpoint`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelFolderError

MODEL_FORMAT = "napari-cellclass/model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFolderError(f"{path}: unreadable ({' '.join(str(exc).split())}); the folder is damaged") from None
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
        raise ModelFolderError(f"{path}: not a napari-cellclass model (written by another tool); "
                               "train one with `napari-cellclass train`")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version < MODEL_FORMAT_VERSION:
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
    if not (folder / WEIGHTS_NAME).exists():
        raise ModelFolderError(f"{folder}: {WEIGHTS_NAME} is missing; copy the whole model folder")
    return cfg
