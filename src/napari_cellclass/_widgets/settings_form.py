"""The training settings form: one widget per TrainConfig field, generated from its declaration.

The basic settings are always shown; the others and the settings files (save / load JSON or
YAML) sit behind one check box. Widget kinds, limits, choices, labels and tooltips all come from
:func:`~.settings_spec.settings_spec`, which reads the one declaration in ``learn/config.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
    Widget,
)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCompleter

from ..core.errors import CellclassError
from .settings_spec import (
    WEIGHTS_FILE_CHOICE,
    SettingSpec,
    backbone_choices,
    config_from_values,
    settings_spec,
    values_from_config,
)

if TYPE_CHECKING:
    from ..learn import TrainConfig


def make_setting_widget(spec: SettingSpec) -> Widget:
    """The magicgui widget that edits one setting."""
    common: dict[str, Any] = {"label": spec.label or spec.name.replace("_", " "), "tooltip": spec.tooltip or None}
    if spec.name == "backbone":
        return _backbone_box(spec, common)
    if spec.kind == "choice":
        return ComboBox(choices=list(spec.choices), value=spec.default, **common)
    if spec.kind == "bool":
        return CheckBox(value=bool(spec.default), **common)
    if spec.kind == "int":
        return SpinBox(value=int(spec.default), min=int(spec.minimum), max=int(spec.maximum),
                       step=max(1, int(spec.step)), **common)
    if spec.kind == "float":
        w = FloatSpinBox(value=float(spec.default), min=spec.minimum, max=spec.maximum, step=spec.step, **common)
        w.native.setDecimals(spec.decimals)
        return w
    return LineEdit(value=str(spec.default), **common)


def _backbone_box(spec: SettingSpec, common: dict[str, Any]) -> ComboBox:
    """MIA's names first, type to search; any timm name can be set from a settings file."""
    choices = backbone_choices()
    w = ComboBox(choices=choices, value=spec.default, **common)
    box = w.native
    box.setEditable(True)
    box.setInsertPolicy(box.InsertPolicy.NoInsert)
    completer = QCompleter([c[1] for c in choices], box)
    completer.setFilterMode(Qt.MatchFlag.MatchContains)
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    box.setCompleter(completer)
    box.setToolTip("MIA's backbone names first; type to search. Any timm model name also works "
                   "(set it with Load settings).")
    return w


class SettingsForm(Container):
    """Every training setting, its weights file, and saving / loading settings files."""

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.settings: dict[str, Widget] = {}
        basic = Container(labels=True)
        self.advanced = Container(labels=True)
        for spec in settings_spec():
            w = make_setting_widget(spec)
            self.settings[spec.name] = w
            (basic if spec.basic else self.advanced).append(w)
            if spec.name == "pretrained":
                self.weights_file = FileEdit(label="weights file", mode="r",
                                             filter="Weights (*.safetensors *.pth *.pt *.bin)")
                self.weights_file.visible = False
                basic.append(self.weights_file)
        self.show_advanced = CheckBox(text="show all settings and settings files", value=False)
        self.settings_file = FileEdit(label="settings file", mode="w", filter="Settings (*.json *.yaml *.yml)")
        self.save_settings_button = PushButton(text="Save settings")
        self.load_settings_button = PushButton(text="Load settings")
        more = Container(widgets=[self.advanced, Container(widgets=[self.settings_file], labels=True),
                                  Container(widgets=[self.save_settings_button, self.load_settings_button],
                                            layout="horizontal", labels=False)], labels=False)
        more.visible = False
        self.extend([basic, self.show_advanced, more])
        self.margins = (0, 0, 0, 0)
        self.show_advanced.changed.connect(lambda v: setattr(more, "visible", bool(v)))
        self.settings["pretrained"].changed.connect(self._on_pretrained)
        self.save_settings_button.changed.connect(lambda _v: self._on_save_settings())
        self.load_settings_button.changed.connect(lambda _v: self._on_load_settings())

    def set_editable(self, editable: bool) -> None:
        """Lock the settings while a run uses them."""
        for w in self.settings.values():
            w.enabled = editable
        self.load_settings_button.enabled = editable

    # ------------------------------------------------------------------ values
    def values(self) -> dict[str, Any]:
        """The current widget values, by TrainConfig field name."""
        return {name: w.value for name, w in self.settings.items()}

    def config(self) -> TrainConfig:
        """The validated :class:`TrainConfig` of the current values (ConfigError when invalid)."""
        return config_from_values(self.values(), self.weights_file.value if self.weights_file.value else None)

    def set_config(self, config: TrainConfig) -> None:
        """Show a TrainConfig's values in the widgets."""
        values, weights = values_from_config(config)
        known = {c[1] for c in backbone_choices()}
        for name, value in values.items():
            w = self.settings.get(name)
            if w is None:
                continue
            if name == "backbone" and value not in known:
                w.set_choice(value, value)  # any timm model name
            w.value = value
        if weights:
            self.weights_file.value = weights

    def save_settings(self, path: str | Path) -> Path:
        """Write the current settings to a JSON or YAML file."""
        path = Path(path)
        self.config().save(path)
        return path

    def load_settings(self, path: str | Path) -> None:
        """Read settings from a JSON/YAML file (a model folder's ``config.json`` works too)."""
        from ..learn import TrainConfig

        self.set_config(TrainConfig.from_file(path))

    # ------------------------------------------------------------------ buttons
    def _on_pretrained(self, value: str) -> None:
        self.weights_file.visible = value == WEIGHTS_FILE_CHOICE

    def _on_save_settings(self) -> None:
        path = self.settings_file.value
        if not path or Path(path).is_dir():
            show_warning("pick a settings file (.json or .yaml) in 'settings file' first")
            return
        try:
            show_info(f"settings saved to {self.save_settings(path)}")
        except CellclassError as exc:
            show_error(f"cannot save the settings: {exc}")

    def _on_load_settings(self) -> None:
        path = self.settings_file.value
        if not path or not Path(path).is_file():
            show_warning("pick an existing settings file (.json or .yaml) in 'settings file' first")
            return
        try:
            self.load_settings(path)
            show_info(f"settings loaded from {path}")
        except CellclassError as exc:
            show_error(f"cannot load the settings: {exc}")
