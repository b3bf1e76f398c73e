"""The floors: imports only go down (core -> learn -> cli / _widgets), read from the source.

Every import statement counts, also those inside functions (lazy imports), so a floor cannot
reach up even on a rarely used path. A second check imports the floors and looks at what
Python actually loaded.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import napari_cellclass

PACKAGE = Path(napari_cellclass.__file__).parent
GUI = {"PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "magicgui", "vispy", "superqt", "psygnal",
       "npe2", "pytestqt"}
TORCH = {"torch", "torchvision", "timm", "safetensors", "sklearn", "onnxruntime"}
#: What each floor must never import: other floors above it, and heavy or GUI libraries.
FORBIDDEN = {
    "core": {"napari_cellclass.learn", "napari_cellclass.cli", "napari_cellclass._widgets"} | GUI | TORCH,
    "learn": {"napari_cellclass.cli", "napari_cellclass._widgets"} | GUI,
    "cli": {"napari_cellclass._widgets"} | GUI,
    "_widgets": {"napari_cellclass.cli"},
}
#: The only third-party libraries the core floor may use.
CORE_THIRD_PARTY = {"numpy", "tifffile", "imagecodecs", "PIL"}  # imagecodecs: libtiff, tifffile's codecs


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in a file (relative ones resolved)."""
    package = ["napari_cellclass", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out.append((node.lineno, name))
            if not node.module:  # ``from .. import x``: x may be a module
                out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return out


def _floor_files(floor: str) -> list[Path]:
    return sorted((PACKAGE / floor).rglob("*.py"))


def _breaks(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_no_import_reaches_up_or_into_gui(floor):
    bad = [f"{path.relative_to(PACKAGE)}:{line} imports {name}"
           for path in _floor_files(floor) for line, name in _imports(path)
           if _breaks(name, FORBIDDEN[floor])]
    assert bad == []


def test_core_uses_only_numpy_and_image_readers():
    stdlib = set(sys.stdlib_module_names)
    bad = [f"{path.relative_to(PACKAGE)}:{line} imports {name}"
           for path in _floor_files("core") for line, name in _imports(path)
           if name.split(".")[0] not in stdlib | CORE_THIRD_PARTY | {"napari_cellclass", "__future__"}]
    assert bad == []


def test_the_check_sees_lazy_and_relative_imports():
    """A check of the checker: imports inside functions are found and resolved."""
    source = "def f():\n    from .._widgets import launch\n    from . import learn_cmds\n    import napari\n"
    names = {n for _, n in _imports(PACKAGE / "cli" / "probe.py", source)}
    assert {"napari_cellclass._widgets", "napari_cellclass.cli.learn_cmds", "napari"} <= names
    assert _breaks("napari_cellclass._widgets", FORBIDDEN["cli"])


def _loaded_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    import json

    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_and_cli_start_without_gui_or_torch():
    mods = _loaded_after("import napari_cellclass, napari_cellclass.core, napari_cellclass.core.sample, "
                         "napari_cellclass.core.transfer, napari_cellclass.cli")
    assert sorted(m for m in mods if m.split(".")[0] in GUI) == []
    assert "torch" not in mods  # the project model and the CLI start without loading torch


def test_learn_imports_no_gui():
    mods = _loaded_after("import napari_cellclass.learn")
    assert sorted(m for m in mods if m.split(".")[0] in GUI) == []
    assert "torch" in mods  # sanity: the check really imported the learn floor
