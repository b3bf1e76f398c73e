"""Declaring a setting once: dataclass field metadata in magicgui's ``UiField`` vocabulary, and its checks.

A field made with :func:`setting` carries everything the command line, the widget and the
validation need, as a plain dict (no magicgui or Qt import here):

- magicgui ``UiField`` names: ``description`` (help text and tooltip), ``enum`` (allowed
  values), ``minimum`` / ``maximum`` / ``exclusive_minimum`` / ``exclusive_maximum``,
  ``nullable`` (None allowed), ``min_length`` (text may not be empty), ``visible`` (shown in
  the widget), ``title`` (label, default the name with spaces);
- hints of this project: ``step`` (widget step), ``none_value`` (the widget / command-line
  value that stands for None), ``basic`` (position in the widget's main section), ``cli``
  (a flag of ``napari-cellclass train``), ``metavar``, ``examples`` (well-known values of a
  free text), ``value_aliases`` (old names accepted for a value), ``auto`` (the yes/no setting
  that the value ``"auto"`` turns on, the setting itself keeping its default: ``lr="auto"``).

:func:`settings_of` reads them back as :class:`Setting` objects; :meth:`Setting.check` is the
validation of one value.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError

__all__ = ["Setting", "setting", "settings_of"]

_KINDS = (bool, int, float, str, dict)


def setting(default: Any, description: str, *, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field declaring one setting: its default, help text and ``meta`` (see the module doc).

    ``factory`` replaces ``default`` for mutable defaults (``factory=dict``).
    """
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise TypeError(f"unknown setting metadata {sorted(unknown)}; known: {sorted(_META_KEYS)}")
    data = {"description": description, **meta}
    if factory is not None:
        return field(default_factory=factory, metadata=data)
    return field(default=default, metadata=data)


@dataclass(frozen=True)
class Setting:
    """One declared setting, as read from its field (see :func:`setting`)."""

    name: str
    kind: type                      # bool, int, float, str or dict (None removed from the annotation)
    default: Any
    description: str
    nullable: bool = False
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int = 0
    visible: bool = True
    title: str | None = None
    step: float | None = None
    none_value: Any = None
    basic: int | None = None
    cli: bool = False
    metavar: str | None = None
    examples: tuple[str, ...] = ()
    value_aliases: Mapping[str, str] = field(default_factory=dict)
    auto: str | None = None

    @property
    def label(self) -> str:
        """The widget label: ``title``, else the name with spaces."""
        return self.title or self.name.replace("_", " ")

    @property
    def flag(self) -> str:
        """The command-line flag (``--batch-size``)."""
        return "--" + self.name.replace("_", "-")

    @property
    def lower(self) -> float | None:
        """The lower limit, inclusive or not (see :attr:`lower_open`)."""
        return self.exclusive_minimum if self.exclusive_minimum is not None else self.minimum

    @property
    def upper(self) -> float | None:
        """The upper limit, inclusive or not (see :attr:`upper_open`)."""
        return self.exclusive_maximum if self.exclusive_maximum is not None else self.maximum

    @property
    def lower_open(self) -> bool:
        """Whether the lower limit itself is refused."""
        return self.exclusive_minimum is not None

    @property
    def upper_open(self) -> bool:
        """Whether the upper limit itself is refused."""
        return self.exclusive_maximum is not None

    def allows(self, value: Any) -> bool:
        """Whether :meth:`check` accepts ``value``."""
        try:
            self.check(value)
        except ConfigError:
            return False
        return True

    def check(self, value: Any) -> Any:
        """``value`` checked and normalised (aliases resolved, numbers of a float setting as float).

        Raises
        ------
        ConfigError
            One line naming the setting and the values it allows.
        """
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and value in self.value_aliases:
            value = self.value_aliases[value]
        if self.enum:
            if isinstance(value, str) and value in self.enum:
                return value
            raise self._refuse(value, f"use one of {', '.join(self.enum)}")
        checker = _CHECKS[self.kind]
        return checker(self, value)

    def _refuse(self, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{self.name}={value!r} is not allowed; {allowed}")

    def _check_bool(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._refuse(value, "use true, false or null" if self.nullable else "use true or false")
        return value

    def _check_int(self, value: Any) -> int:
        lo, hi = self.lower, self.upper
        ok = isinstance(value, int) and not isinstance(value, bool) and self._in_range(value)
        if not ok:
            raise self._refuse(value, f"use a whole number from {_bound(lo, self.lower_open, 1)} to "
                                      f"{_bound(hi, self.upper_open, -1)}")
        return value

    def _check_float(self, value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not self._in_range(value):
            lb, hb = ("(" if self.lower_open else "["), (")" if self.upper_open else "]")
            raise self._refuse(value, f"use a number in {lb}{self.lower}, {self.upper}{hb}")
        return float(value)

    def _check_str(self, value: Any) -> str:
        if not isinstance(value, str) or len(value.strip()) < self.min_length:
            raise self._refuse(value, f"{self.name} is {self.description}")
        return value

    def _check_dict(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{self.name} must be a mapping")
        return plain_value(value, self.name)

    def _in_range(self, value: float) -> bool:
        lo, hi = self.lower, self.upper
        if lo is not None and (value <= lo if self.lower_open else value < lo):
            return False
        return not (hi is not None and (value >= hi if self.upper_open else value > hi))


_CHECKS = {bool: Setting._check_bool, int: Setting._check_int, float: Setting._check_float,
           str: Setting._check_str, dict: Setting._check_dict}
_META_KEYS = {f.name for f in dataclasses.fields(Setting)} - {"name", "kind", "default", "description"}


def _bound(limit: float | None, open_: bool, inward: int) -> str:
    """A whole-number limit as text (an open one moved inward by one)."""
    if limit is None:
        return "any"
    return str(int(limit) + (inward if open_ else 0))


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The :class:`Setting` of every field of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, nullable = _kind(hints[f.name], f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        meta = dict(f.metadata)
        for key in ("enum", "examples"):
            if key in meta:
                meta[key] = tuple(meta[key])
        meta["nullable"] = bool(meta.get("nullable", nullable))
        out.append(Setting(f.name, kind, default, str(meta.pop("description", "")), **meta))
    return tuple(out)


def _kind(hint: Any, name: str) -> tuple[type, bool]:
    """``(kind, nullable)`` of a field annotation such as ``int | None`` or ``dict[str, Any]``."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    nullable = type(None) in args
    rest = [typing.get_origin(a) or a for a in args if a is not type(None)]
    if len(rest) != 1 or rest[0] not in _KINDS:
        raise TypeError(f"setting {name}: type {hint!r} is not one of bool, int, float, str, dict (or | None)")
    return rest[0], nullable


def plain_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (dates and times become ISO-8601 text); ConfigError otherwise.

    The settings are saved in the model's ``config.json``: a value JSON cannot hold would
    otherwise only fail after the first epoch.
    """
    if isinstance(value, (_dt.date, _dt.time)):  # YAML reads 2020-01-01 as a date
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} cannot be saved with the model; use a finite number or text")
        return value
    if isinstance(value, dict):
        return {str(k): plain_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where}={value!r} cannot be saved with the model ({type(value).__name__}); "
                      "use text, numbers, lists or mappings")
