"""The training dock widget in a real viewer (Xvfb): train, stop, errors, settings, models."""
from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from napari_cellclass._widgets.session import session_for  # noqa: E402
from napari_cellclass._widgets.training import TrainingWidget  # noqa: E402
from napari_cellclass.core.errors import ConfigError  # noqa: E402
from napari_cellclass.core.sample import make_sample_project  # noqa: E402
from napari_cellclass.learn import TrainConfig  # noqa: E402

TINY = dict(backbone="mobilenetv3_small_050", input_size=32, batch_size=8, device="cpu", epochs=2,
            schedule="none", aug_brightness=0.0, aug_contrast=0.0)


@pytest.fixture
def sample(tmp_path):
    return make_sample_project(tmp_path / "sample", n=24, size=48)


@pytest.fixture
def trainer(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer, sample)
    viewer.window.add_dock_widget(widget, name="Training")
    widget.set_config(TrainConfig(**TINY))
    return viewer, widget


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_train_fills_plots_and_writes_model(qtbot, trainer, sample, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QApplication, QWidget

    viewer, w = trainer
    main = threading.main_thread()
    off_main: list[str] = []
    original = QWidget.__init__

    def spy(self, *args, **kwargs):
        if threading.current_thread() is not main:
            off_main.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(QWidget, "__init__", spy)
    assert w.train() is not None
    assert not w.train_button.enabled and w.stop_button.enabled
    wait_idle(qtbot, w)
    monkeypatch.setattr(QWidget, "__init__", original)

    run = w.session.runs[-1]
    assert run.status == "done" and run.epochs == [1, 2]
    assert len(w.plots.points("val_loss")) == 2 and len(w.plots.points("train_accuracy")) == 2
    assert run.best_epoch in (1, 2)
    labels = w.plots.legend("loss")  # the curves are painted with Qt (no matplotlib axes)
    assert any(t.startswith("best") for t in labels)
    model = session_for(viewer).model
    assert model is not None and (model / "model.safetensors").exists()
    assert model.name in w.active_label.value
    assert w.train_button.enabled and not w.stop_button.enabled
    # no widget was made in the worker thread, and every widget lives in the GUI thread
    assert off_main == []
    app = QApplication.instance()
    assert all(x.thread() is app.thread() for x in QApplication.allWidgets())

    # re-training keeps the first run in the run list
    w.settings["epochs"].value = 1
    w.train()
    wait_idle(qtbot, w)
    assert len(w.session.runs) == 2 and len(w.plots.run_choice.choices) == 2
    assert w.session.runs[0].epochs == [1, 2]


def test_stop_keeps_best_model(qtbot, trainer, sample):
    from napari_cellclass.learn import BatchProgress, EpochEnd, load_model

    viewer, w = trainer
    w.settings["epochs"].value = 30
    seen = {"epochs": 0}
    worker = w.train()

    def on_event(ev):
        if isinstance(ev, EpochEnd):
            seen["epochs"] += 1
        if isinstance(ev, BatchProgress) and seen["epochs"] >= 1:
            w.stop()

    worker.yielded.connect(on_event)
    wait_idle(qtbot, w)
    run = w.session.runs[-1]
    assert run.status == "cancelled" and 1 <= len(run.epochs) < 30
    model = session_for(viewer).model
    trained = load_model(model)
    assert trained.classes == ("negative control", "positive control")
    assert "stopped" in w.status.value
    assert w.train_button.enabled  # usable again


def test_forced_error_leaves_widget_usable(qtbot, trainer, sample, notifications):
    viewer, w = trainer
    sample.clear(sample.ids_with_class("positive control"))  # one class left: the engine refuses
    w.train()
    wait_idle(qtbot, w)
    errors = [m for sev, m in notifications if "error" in sev.lower()]
    assert errors and errors[-1].startswith("Training failed") and "at least two classes" in errors[-1]
    assert w.session.runs[-1].status == "failed"
    assert w.train_button.enabled and not w.stop_button.enabled
    # a bad setting is refused before a worker starts
    w.settings["train_percent"].value = 100.0
    w.settings["test_percent"].value = 10.0
    assert w.train() is None
    assert "exceed 100" in [m for sev, m in notifications][-1]


def test_settings_round_trip_and_model_folder(qtbot, trainer, sample, tmp_path):
    viewer, w = trainer
    w.settings["lr"].value = 0.0005
    w.settings["aug_affine_degrees"].value = 15.0
    path = w.save_settings(tmp_path / "settings.json")
    data = json.loads(path.read_text())
    assert data["lr"] == pytest.approx(0.0005) and data["backbone"] == "mobilenetv3_small_050"
    w.settings["lr"].value = 0.01
    w.load_settings(path)
    assert w.settings["lr"].value == pytest.approx(0.0005)
    assert w.config().aug_affine_degrees == 15.0
    # every engine setting has a widget
    names = set(TrainConfig().to_dict()) - {"extra"}
    assert names <= set(w.settings)
    # group_by: a text field whose value reaches the config; a bad regex is refused in one line
    assert w.settings["group_by"].value == "" and "named group" in w.settings["group_by"].tooltip
    w.settings["group_by"].value = "(?P<well>[A-P][0-9]{2})"
    assert w.config().group_by == "(?P<well>[A-P][0-9]{2})"
    w.settings["group_by"].value = "[A-P][0-9]{2}"
    with pytest.raises(ConfigError, match="has no named group"):
        w.config()
    w.settings["group_by"].value = ""
    # the backbone list starts with MIA's names
    first = w.settings["backbone"].choices[0]
    assert first == "densenet121"
    from napari_cellclass.core.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="not a napari-cellclass model folder"):
        w.load_model(tmp_path)
