"""Each training setting is declared once: validation, command-line flags and widgets come from it."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch

from napari_cellclass._widgets.settings_spec import config_from_values, settings_spec, values_from_config
from napari_cellclass.cli import build_parser
from napari_cellclass.cli.learn_cmds import setting_flag
from napari_cellclass.core.errors import ConfigError
from napari_cellclass.learn.config import SEED_MAX, TrainConfig
from napari_cellclass.learn.settings import Setting, setting, settings_of

SETTINGS = TrainConfig.settings()
NUMBERS = [s for s in SETTINGS if s.kind in (int, float)]
#: the flags `train` had before they were generated: they stay
TRAIN_FLAGS = {"--backbone", "--pretrained", "--epochs", "--batch-size", "--lr", "--optimizer", "--loss",
               "--train-percent", "--test-percent", "--input-size", "--device", "--seed", "--group-by"}


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["train"]
    parser.format_help()  # adds the generated flags
    return parser


def test_every_field_is_declared_with_metadata():
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(TrainConfig)]
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("description"), f.name
    for s in NUMBERS:
        assert s.lower is not None and s.upper is not None, s.name
        assert s.allows(s.default), s.name
    for s in SETTINGS:
        assert s.allows(s.default), s.name
        if s.nullable and s.visible:
            assert s.none_value is not None, f"{s.name}: the widget needs a stand-in for None"


def test_cli_flags_are_generated_from_the_fields():
    parser = _train_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    generated = {s.flag for s in SETTINGS if s.cli}
    assert generated == TRAIN_FLAGS
    for s in SETTINGS:
        if not s.cli:
            assert s.flag not in actions or s.flag == "--config", s.name
            continue
        action = actions[s.flag]
        assert action.dest == s.name and action.default is None
        assert s.description.split(" (")[0] in action.help.replace("\n", " ")
        if s.enum:
            assert tuple(action.choices) == s.enum
        if s.auto:  # --lr auto
            assert action.type("auto") == "auto" and action.type("0.5") == 0.5
        else:
            assert action.type is {int: int, float: float, str: str}[s.kind]
    # the run's own flags are kept
    assert {"--config", "--freeze", "--out", "--resume", "--json"} <= set(actions)


def test_cli_values_reach_the_config(tmp_path):
    from napari_cellclass.cli.learn_cmds import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", str(tmp_path), "--input-size", "0", "--train-percent", "70", "--freeze",
                              "head", "--seed", str(SEED_MAX), "--loss", "focal"])
    cfg = config_from_args(args)
    assert cfg.input_size is None and cfg.train_percent == 70 and cfg.val_percent is None
    assert (cfg.fine_tune, cfg.seed, cfg.loss) == ("head", SEED_MAX, "focal")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", str(tmp_path), "--optimizer", "rmsprop"])


def test_the_plain_cli_does_not_load_torch_for_other_commands():
    import subprocess
    import sys

    code = ("import sys\nfrom napari_cellclass.cli import build_parser\n"
            "build_parser().parse_args(['info', 'x'])\nassert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_widget_spec_is_generated_from_the_fields():
    specs = {sp.name: sp for sp in settings_spec()}
    assert set(specs) == {s.name for s in SETTINGS if s.visible} and "extra" not in specs
    order = [sp.name for sp in settings_spec()]
    basic = sorted((s for s in SETTINGS if s.basic is not None), key=lambda s: s.basic)
    assert order[:len(basic)] == [s.name for s in basic] and order[0] == "backbone"
    for s in SETTINGS:
        if not s.visible:
            continue
        sp = specs[s.name]
        assert sp.label == s.label and sp.tooltip == s.description and sp.basic == (s.basic is not None)
        if s.enum:
            assert sp.kind == "choice" and sp.choices == s.enum
        if s.kind in (int, float):
            assert sp.kind == ("int" if s.kind is int else "float")
            # the widget's limits are valid values (the None stand-in aside), just past them is not
            for edge in (sp.minimum, sp.maximum):
                if not (s.nullable and edge == s.none_value):
                    assert s.allows(s.kind(edge)), (s.name, edge)
            assert not s.allows(s.kind(sp.maximum + sp.step)), s.name
    assert specs["seed"].maximum == SEED_MAX  # one limit for the widget and the validation


def test_widget_values_round_trip():
    cfg = TrainConfig(input_size=None, channels_last=False, split_seed=7, pretrained="/w.pth")
    values, weights = values_from_config(cfg)
    assert values["input_size"] == 0 and values["channels_last"] == "false" and values["pretrained"] == "file"
    assert config_from_values(values, weights_file=None if weights is None else __file__).input_size is None


@pytest.mark.parametrize("s", NUMBERS, ids=lambda s: s.name)
def test_validate_refuses_values_past_the_declared_limits(s: Setting):
    step = 1 if s.kind is int else 1e-6
    for limit, outside, open_ in ((s.lower, s.lower - step, s.lower_open), (s.upper, s.upper + step, s.upper_open)):
        with pytest.raises(ConfigError, match=rf"^{s.name}=.* is not allowed") as info:
            TrainConfig().replace(**{s.name: s.kind(outside)})
        assert "\n" not in str(info.value)
        edge_ok = s.allows(s.kind(limit))
        assert edge_ok is not open_, (s.name, limit)
    if s.kind is int:
        with pytest.raises(ConfigError, match="whole number"):
            TrainConfig().replace(**{s.name: 1.5})


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.enum], ids=lambda s: s.name)
def test_validate_refuses_values_outside_the_choices(s: Setting):
    with pytest.raises(ConfigError, match=rf"{s.name}='nope' is not allowed; use one of {', '.join(s.enum)}"):
        TrainConfig().replace(**{s.name: "nope"})


def test_the_seed_limit_is_what_numpy_and_torch_accept():
    assert TrainConfig(seed=SEED_MAX, split_seed=SEED_MAX).seed == SEED_MAX
    np.random.seed(SEED_MAX)
    torch.manual_seed(SEED_MAX)
    np.random.default_rng([SEED_MAX, 3])
    with pytest.raises(ConfigError, match="seed"):
        TrainConfig(seed=SEED_MAX + 1)


def test_a_new_setting_is_one_line():
    @dataclasses.dataclass
    class More(TrainConfig):
        knob: int = setting(3, "a new knob", minimum=0, maximum=5, cli=True, basic=99)

    (knob,) = [s for s in settings_of(More) if s.name == "knob"]
    assert More().knob == 3 and setting_flag(knob)["type"] is int
    with pytest.raises(ConfigError, match="knob=9 is not allowed; use a whole number from 0 to 5"):
        More(knob=9)
    with pytest.raises(TypeError, match="unknown setting metadata"):
        setting(1, "typo", maximun=3)
