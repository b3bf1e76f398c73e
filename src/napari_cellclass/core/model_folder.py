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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFolderError
from .textfiles import read_bytes_bounded

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


def _int_in(low: int, high: int) -> Callable[[Any, dict[str, Any]], bool]:
    return lambda v, _: _is_int(v) and low <= v <= high


def _num_in(low: float, high: float, *, low_open: bool = False) -> Callable[[Any, dict[str, Any]], bool]:
    return lambda v, _: _is_num(v) and (low < v if low_open else low <= v) and v < high


def _of_type(kind: type) -> Callable[[Any, dict[str, Any]], bool]:
    return lambda v, _: isinstance(v, kind)


def _class_names(v: Any, _: dict[str, Any]) -> bool:
    return (isinstance(v, list) and bool(v) and all(isinstance(c, str) and c for c in v)
            and len(set(v)) == len(v))


def _per_channel(v: Any, cfg: dict[str, Any]) -> bool:
    return isinstance(v, list) and len(v) == cfg["in_chans"] and all(_is_num(x) for x in v)


def _class_thresholds(v: Any, _: dict[str, Any]) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _num_in(0, 1, low_open=True)(x, _) for k, x in v.items())


def _split_ids(v: Any, _: dict[str, Any]) -> bool:
    ids = v.get("ids", {}) if isinstance(v, dict) else None
    return isinstance(ids, dict) and all(isinstance(x, list) and all(isinstance(i, str) for i in x)
                                         for x in ids.values())


def _split_groups(v: Any, _: dict[str, Any]) -> bool:
    """The optional group record of a split: ``group_by`` text and ``groups`` counts per subset."""
    if not isinstance(v, dict):
        return True  # reported by _split_ids
    counts = v.get("groups", {})
    return (isinstance(v.get("group_by", ""), str) and isinstance(counts, dict)
            and all(_is_int(n) and n >= 0 for n in counts.values()))


@dataclass(frozen=True)
class _Field:
    """One field of a model ``config.json``: where it is (``section.key``), what it must be, what to say.

    A required field that is missing is checked as None; an optional one only when present.
    ``message`` may name ``{value!r}`` and ``{n}`` (the number of channels).
    """

    path: str
    ok: Callable[[Any, dict[str, Any]], bool]
    message: str
    optional: bool = False


#: Every field of a model ``config.json`` that is checked, in the order the checks run.
_FIELDS: tuple[_Field, ...] = (
    _Field("backbone", lambda v, _: isinstance(v, str) and bool(v.strip()), "'backbone' must be a backbone name"),
    _Field("classes", _class_names, "'classes' must be a list of distinct class names"),
    _Field("in_chans", _int_in(1, 4096), "'in_chans' must be a whole number >= 1, not {value!r}"),
    _Field("input_size", _int_in(8, 16384), "'input_size' must be a whole number of pixels, not {value!r}"),
    _Field("normalisation", _of_type(dict), "'normalisation' must be a mapping with scaling, mean and std"),
    _Field("normalisation.scaling", lambda v, _: v in SCALINGS,
           "normalisation 'scaling' must be one of " + ", ".join(SCALINGS) + ", not {value!r}"),
    _Field("normalisation.mean", _per_channel, "normalisation 'mean' must be {n} finite number(s), not {value!r}"),
    _Field("normalisation.std", _per_channel, "normalisation 'std' must be {n} finite number(s), not {value!r}"),
    _Field("normalisation.std", lambda v, _: all(x > 0 for x in v), "normalisation 'std' must be positive, not "
           "{value!r} (zero or negative spread turns every prediction into NaN)"),
    _Field("train_config", _of_type(dict), "'train_config' must be a mapping of training settings"),
    _Field("train_config.head", _of_type(str), "train_config 'head' must be a name, not {value!r}", True),
    _Field("train_config.dropout", _num_in(0, 1), "train_config 'dropout' must be a number in [0, 1), not {value!r}",
           True),
    _Field("train_config.threshold", _num_in(0, 1, low_open=True),
           "train_config 'threshold' must be a number in (0, 1), not {value!r}", True),
    _Field("train_config.precision", _of_type(str), "train_config 'precision' must be a name, not {value!r}", True),
    _Field("multi_label", _of_type(bool), "'multi_label' must be true or false, not {value!r}", True),
    _Field("split", _split_ids, "'split' must map train/val/test to lists of image ids", True),
    _Field("split", _split_groups, "'split' must hold 'group_by' as text and 'groups' as image-group counts "
           "per subset", True),
    _Field("channel_names", _of_type(list), "'channel_names' must be a list", True),
    _Field(WEIGHTS_ID, _of_type(str), f"'{WEIGHTS_ID}' must be a string", True),
    _Field("calibration", _of_type(dict), "'calibration' must be a mapping with the temperature", True),
    _Field("calibration.temperature", _num_in(0, 1000, low_open=True),
           "calibration 'temperature' must be a positive number, not {value!r}", True),
    _Field("calibration.thresholds", _class_thresholds,
           "calibration 'thresholds' must map class names to numbers in (0, 1), not {value!r}", True),
)


def _lookup(cfg: dict[str, Any], path: str) -> tuple[bool, Any]:
    """``(present, value)`` of a ``section.key`` path (sections are checked before their keys)."""
    *sections, key = path.split(".")
    where = cfg
    for name in sections:
        if name not in where:  # an optional section that is absent
            return False, None
        where = where[name]
    return key in where, where.get(key)


def check_model_config(path: Path, cfg: dict[str, Any]) -> None:
    """Check the types and values of a model ``config.json`` (one :class:`ModelFolderError` line)."""
    for f in _FIELDS:
        present, value = _lookup(cfg, f.path)
        if (present or not f.optional) and not f.ok(value, cfg):
            raise _bad(path, f.message.format(value=value, n=cfg.get("in_chans")))


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
    raw, _ = read_bytes_bounded(path, _MAX_HEADER, "model settings", fix="the folder is damaged",
                                error=ModelFolderError)
    try:
        cfg = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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
