"""The floors: core and learn never import Qt or napari; the plain package import stays light."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _loaded_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    import json

    return set(json.loads(out.stdout.strip().splitlines()[-1]))


GUI_PREFIXES = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "magicgui", "vispy", "superqt")


def _gui(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in GUI_PREFIXES)


def test_core_imports_no_gui_and_no_torch():
    mods = _loaded_after("import napari_cellclass, napari_cellclass.core, napari_cellclass.core.sample, "
                         "napari_cellclass.core.transfer, napari_cellclass.cli")
    assert _gui(mods) == []
    assert "torch" not in mods  # the project model and the CLI start without loading torch


def test_learn_imports_no_gui():
    mods = _loaded_after("import napari_cellclass.learn")
    assert _gui(mods) == []
    assert "torch" in mods  # sanity: the check really imported the learn floor
