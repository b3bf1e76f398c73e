"""napari finds the plugin (editable and wheel installs) and the npe2 manifest validates."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_one_manifest_inside_the_package():
    """The manifest is one real file where npe2's entry point looks for it (no tracked copy)."""
    manifest = ROOT / "src" / "napari_cellclass" / "napari.yaml"
    assert manifest.is_file() and not manifest.is_symlink()
    assert not (ROOT / "napari.yaml").exists()


def test_npe2_validate_cli():
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    assert npe2, "npe2 command not installed"
    out = subprocess.run([npe2, "validate", "napari-cellclass"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_plugin_manager_sees_commands_reader_and_sample():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    mf = pm.get_manifest("napari-cellclass")
    ids = {c.id for c in mf.contributions.commands}
    assert {"napari-cellclass.get_reader", "napari-cellclass.sample_u2os"} <= ids
    assert mf.contributions.readers and mf.contributions.readers[0].accepts_directories
    assert [s.key for s in mf.contributions.sample_data] == ["u2os"]


@pytest.mark.slow
def test_wheel_contains_manifest_and_napari_finds_it(tmp_path):
    """Build a real wheel, install it into a separate folder and let npe2 discover it there."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("napari_cellclass-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        manifest = z.read("napari_cellclass/napari.yaml").decode()
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert manifest == (ROOT / "src" / "napari_cellclass" / "napari.yaml").read_text()  # the one manifest
    assert "napari_cellclass:napari.yaml" in entry_points
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                          str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    code = ("import sys; sys.path.insert(0, sys.argv[1]);\n"
            "from npe2 import PluginManager; pm = PluginManager(); pm.discover()\n"
            "mf = pm.get_manifest('napari-cellclass'); import napari_cellclass\n"
            "print(mf.display_name); print(napari_cellclass.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    name, module_file = out.stdout.strip().splitlines()[-2:]
    assert name == "napari cellclass"
    assert module_file.startswith(str(target))
