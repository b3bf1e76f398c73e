"""A model folder's config.json is checked field by field without torch: one line naming the field."""
from __future__ import annotations

import copy
import json

import pytest

from napari_cellclass.core.errors import ModelFolderError
from napari_cellclass.core.model_folder import MODEL_FORMAT, MODEL_FORMAT_VERSION, read_model_config

GOOD = {
    "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "backbone": "resnet18",
    "classes": ["a", "b"], "in_chans": 2, "input_size": 64,
    "normalisation": {"scaling": "auto", "mean": [0.1, 0.2], "std": [1.0, 2.0]},
    "train_config": {"head": "linear", "dropout": 0.1, "threshold": 0.5, "precision": "fp32"},
    "multi_label": False, "split": {"ids": {"train": ["x.png"], "val": []}}, "channel_names": ["DNA", "GFP"],
}


def _folder(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")  # no weights_id: only its presence is checked here
    return tmp_path


def _with(path: str, value):
    cfg = copy.deepcopy(GOOD)
    *sections, key = path.split(".")
    where = cfg
    for name in sections:
        where = where[name]
    if value is _MISSING:
        del where[key]
    else:
        where[key] = value
    return cfg


_MISSING = object()


def test_a_good_config_is_read(tmp_path):
    assert read_model_config(_folder(tmp_path, GOOD)) == GOOD


@pytest.mark.parametrize("path, value, words", [
    ("backbone", " ", "'backbone' must be a backbone name"),
    ("classes", ["a", "a"], "'classes' must be a list of distinct class names"),
    ("classes", [], "'classes' must be"),
    ("in_chans", True, "'in_chans' must be a whole number >= 1, not True"),
    ("in_chans", 0, "'in_chans'"),
    ("input_size", 4, "'input_size' must be a whole number of pixels, not 4"),
    ("normalisation", [], "'normalisation' must be a mapping"),
    ("normalisation.scaling", "log", "normalisation 'scaling' must be one of auto, dtype, percentile, not 'log'"),
    ("normalisation.scaling", _MISSING, "not None"),
    ("normalisation.mean", [0.1], "normalisation 'mean' must be 2 finite number(s), not [0.1]"),
    ("normalisation.std", [1.0, float("nan")], "normalisation 'std' must be 2 finite number(s)"),
    ("normalisation.std", [1.0, 0.0], "normalisation 'std' must be positive"),
    ("train_config", None, "'train_config' must be a mapping"),
    ("train_config.head", 3, "train_config 'head' must be a name, not 3"),
    ("train_config.dropout", 1.0, "train_config 'dropout' must be a number in [0, 1), not 1.0"),
    ("train_config.threshold", 0, "train_config 'threshold' must be a number in (0, 1), not 0"),
    ("train_config.precision", None, "train_config 'precision' must be a name"),
    ("multi_label", "yes", "'multi_label' must be true or false, not 'yes'"),
    ("split", {"ids": {"train": [1]}}, "'split' must map train/val/test to lists of image ids"),
    ("channel_names", "DNA", "'channel_names' must be a list"),
    ("weights_id", 7, "'weights_id' must be a string"),
])
def test_each_bad_field_is_one_line_naming_it(tmp_path, path, value, words):
    with pytest.raises(ModelFolderError) as info:
        read_model_config(_folder(tmp_path, _with(path, value)))
    msg = str(info.value)
    assert words in msg and "config.json" in msg and "\n" not in msg


@pytest.mark.parametrize("path", ["train_config.head", "train_config.dropout", "train_config.threshold",
                                  "train_config.precision", "multi_label", "split", "channel_names"])
def test_optional_fields_may_be_missing(tmp_path, path):
    assert read_model_config(_folder(tmp_path, _with(path, _MISSING)))["backbone"] == "resnet18"


def test_missing_required_fields_are_listed(tmp_path):
    cfg = copy.deepcopy(GOOD)
    del cfg["backbone"], cfg["input_size"]
    with pytest.raises(ModelFolderError, match="missing backbone, input_size"):
        read_model_config(_folder(tmp_path, cfg))
