"""The Export part of the Training dock in a real viewer (Xvfb): a click writes a checked export."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.core")

from napari_cellclass._widgets.export_panel import _import_libraries  # noqa: E402

_import_libraries()  # before any OpenGL context, in the main thread

from napari_cellclass._widgets.session import session_for  # noqa: E402
from napari_cellclass._widgets.training import TrainingWidget  # noqa: E402

from ._trained import trained_sample  # noqa: E402


@pytest.mark.slow
def test_export_button_writes_a_zoo_package_beside_the_model_and_reports_the_check(qtbot, make_napari_viewer,
                                                                                  tmp_path):
    project, model = trained_sample(tmp_path)
    viewer = make_napari_viewer(show=True)
    dock = TrainingWidget(viewer, project)
    viewer.window.add_dock_widget(dock, name="Training")
    part = dock.exports
    part.button.native.click()  # no active model yet: nothing starts
    assert not part.job.running and part.last is None

    session_for(viewer).set_model(model)
    part.format.value = "bioimageio"
    part.button.native.click()
    assert part.job.running and not part.button.enabled  # one export at a time
    qtbot.waitUntil(lambda: not part.job.running, timeout=180_000)
    target = project.root / "cellclass_exports" / f"{model.name}.bioimageio.zip"  # models' own folder is off limits
    assert part.last is not None and part.last.path == target and target.is_file()
    assert "bioimageio.core's test passed" in part.status.value and part.button.enabled
    assert part.status.tooltip == str(target)

    from bioimageio.core import test_model

    assert test_model(target, devices=["cpu"]).status == "passed"

    # ONNX to a chosen file; an image of the project as target is refused in the status line, untouched
    victim = project.path(project.image_ids[0])
    before = victim.read_bytes()
    part.format.value = "onnx"
    part.target.value = str(victim)
    part.button.native.click()
    qtbot.waitUntil(lambda: not part.job.running, timeout=120_000)
    assert part.status.value.startswith("export failed:") and "choose another file" in part.status.value
    assert victim.read_bytes() == before
    part.target.value = str(tmp_path / "net.onnx")
    part.button.native.click()
    qtbot.waitUntil(lambda: not part.job.running, timeout=120_000)
    assert (tmp_path / "net.onnx").is_file() and part.last.parity["onnx"] <= 1e-4
