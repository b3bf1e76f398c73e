"""Training settings as widget descriptions, generated from each TrainConfig field's declaration.

Qt-free: :func:`settings_spec` says which widget edits each setting (kind, limits, choices,
label, tooltip); :func:`config_from_values` and :func:`values_from_config` map widget values to
a validated :class:`~napari_cellclass.learn.TrainConfig` and back.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..learn import TrainConfig
    from ..learn.settings import Setting

#: The widget value of ``pretrained`` that means "the file picked in 'weights file'".
WEIGHTS_FILE_CHOICE = "file"


@dataclass(frozen=True)
class SettingSpec:
    """How one TrainConfig field is edited, generated from the field's declaration.

    Attributes
    ----------
    name : field name.
    kind : ``'choice'``, ``'bool'``, ``'int'``, ``'float'`` or ``'text'``.
    default : the widget value of the default setting (``None`` shown as the field's ``none_value``).
    choices : for ``'choice'``.
    minimum, maximum, step : for numbers (an open limit moved inward by the widget's resolution).
    basic : shown in the main section.
    label, tooltip : the field's title and description.
    decimals : decimals a float widget shows.
    """

    name: str
    kind: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float = 0.0
    maximum: float = 1e9
    step: float = 1.0
    basic: bool = False
    label: str = ""
    tooltip: str = ""
    decimals: int = 3


def settings_spec() -> list[SettingSpec]:
    """One :class:`SettingSpec` per visible TrainConfig field: the basic ones first (in their
    declared ``basic`` order), then the others in field order."""
    from ..learn.config import TrainConfig

    declared = TrainConfig.settings()
    rank = {s.name: s.basic for s in declared if s.basic is not None}
    specs = [_spec(s) for s in declared if s.visible]
    return sorted(specs, key=lambda sp: (not sp.basic, rank.get(sp.name, 0)))


def _spec(s: Setting) -> SettingSpec:
    """The widget of one declared setting."""
    common: dict[str, Any] = {"basic": s.basic is not None, "label": s.label, "tooltip": s.description}
    default = s.none_value if s.default is None else s.default
    if s.examples:  # free text with well-known values (pretrained): one of them, or a file
        return SettingSpec(s.name, "choice", default, (*s.examples, WEIGHTS_FILE_CHOICE), **common)
    if s.enum:
        return SettingSpec(s.name, "choice", default, s.enum, **common)
    if s.kind is bool and s.nullable:  # auto / true / false
        shown = default if s.default is None else ("true" if s.default else "false")
        return SettingSpec(s.name, "choice", shown, (s.none_value, "true", "false"), **common)
    if s.kind is bool:
        return SettingSpec(s.name, "bool", default, **common)
    if s.kind in (int, float):
        step = float(s.step or 1)
        decimals = 0 if s.kind is int else (6 if step < 0.01 else 3)
        resolution = 10.0 ** -decimals
        lo = 0.0 if s.lower is None else s.lower + (resolution if s.lower_open else 0)
        hi = 1e9 if s.upper is None else s.upper - (resolution if s.upper_open else 0)
        if s.nullable:
            lo = min(lo, s.none_value)
        return SettingSpec(s.name, "int" if s.kind is int else "float", default, minimum=lo, maximum=hi, step=step,
                           decimals=decimals, **common)
    return SettingSpec(s.name, "text", default, **common)


def config_from_values(values: Mapping[str, Any], weights_file: str | os.PathLike | None = None) -> TrainConfig:
    """A validated TrainConfig from widget values (each field's ``none_value`` stand-in mapped back).

    ``pretrained='file'`` takes ``weights_file``; a missing file is a :class:`ConfigError`.
    """
    from ..core.errors import ConfigError
    from ..learn.config import TrainConfig

    declared = {s.name: s for s in TrainConfig.settings()}
    data: dict[str, Any] = {}
    for name, value in values.items():
        s = declared.get(name)
        if s is not None and s.nullable:
            value = None if value == s.none_value else (value == "true" if s.kind is bool else value)
        data[name] = value
    if data.get("pretrained") == WEIGHTS_FILE_CHOICE:
        if not weights_file or not Path(weights_file).is_file():
            raise ConfigError("pretrained=file needs a weights file: pick one in 'weights file' "
                              "(or choose pretrained none / imagenet)")
        data["pretrained"] = str(weights_file)
    return TrainConfig.from_dict(data)


def values_from_config(config: TrainConfig) -> tuple[dict[str, Any], str | None]:
    """Widget values of a TrainConfig and the weights file (when ``pretrained`` is a path)."""
    values: dict[str, Any] = {}
    weights = None
    for s in config.settings():
        if not s.visible:
            continue
        value = getattr(config, s.name)
        if value is None and s.nullable:
            value = s.none_value
        elif s.kind is bool and s.nullable:
            value = "true" if value else "false"
        elif s.examples and value not in (*s.examples, WEIGHTS_FILE_CHOICE):
            weights, value = value, WEIGHTS_FILE_CHOICE
        values[s.name] = value
    return values, weights


def backbone_choices() -> list[tuple[str, str]]:
    """``(label, name)`` for the backbone list: MIA's names first (marked), then the extras."""
    from ..learn.backbones import EXTRA_BACKBONES, MIA_BACKBONES

    return ([(f"{n}  (MIA)", n) for n in MIA_BACKBONES]
            + [(n, n) for n in EXTRA_BACKBONES if n not in MIA_BACKBONES])
