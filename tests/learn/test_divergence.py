"""A diverged run (NaN/inf) is never marked best nor saved, and NaN never reaches predictions."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from napari_cellclass.core.errors import CellclassError, ModelFolderError, TrainingError
from napari_cellclass.core.predictions import (
    Prediction,
    filter_by_confidence,
    meets_confidence,
    read_predictions_csv,
    write_predictions,
)
from napari_cellclass.learn import EpochEnd, WarningEvent, load_model, predict, run_training, train
from napari_cellclass.learn import checkpoint as ckpt
from napari_cellclass.learn.engine import Trainer


def _poison_from(epoch_from: int, monkeypatch) -> None:
    """Make the weights NaN at the end of training epochs >= ``epoch_from`` (as lr=10 does)."""
    original = Trainer.train_epoch_events

    def poisoned(self, epoch):
        metrics = yield from original(self, epoch)
        if epoch >= epoch_from:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(Trainer, "train_epoch_events", poisoned)


def _all_finite(folder) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values()
               if t.is_floating_point())


def test_a_diverged_epoch_is_not_best_and_the_last_good_model_is_kept(tiny_sample, fast_config, tmp_path,
                                                                      monkeypatch):
    _poison_from(2, monkeypatch)
    events = list(run_training(tiny_sample, fast_config(epochs=3), tmp_path / "m"))
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.is_best for e in ends] == [True, False]  # epoch 2 diverged: the run stops there
    assert any(isinstance(e, WarningEvent) and "diverged" in e.message and "learning rate" in e.message
               for e in events)
    fin = events[-1]
    assert fin.best_epoch == 1 and fin.model_dir == str(tmp_path / "m")
    assert _all_finite(tmp_path / "m")
    state = json.loads((tmp_path / "m" / "checkpoint" / "last.json").read_text())
    assert state["epoch"] == 1  # the resume state is never a diverged one
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "m" / "checkpoint" / "last.safetensors").values()
               if t.is_floating_point())
    assert load_model(tmp_path / "m").config["best_epoch"] == 1


def test_divergence_in_the_first_epoch_saves_nothing_and_says_lower_the_lr(tiny_sample, fast_config, tmp_path,
                                                                         monkeypatch):
    _poison_from(1, monkeypatch)
    with pytest.raises(TrainingError, match="lower learning rate") as info:
        train(tiny_sample, fast_config(epochs=2, lr=0.5), tmp_path / "m")
    assert "\n" not in str(info.value) and "lr=0.05" in str(info.value)
    assert not (tmp_path / "m").exists()


def test_a_nan_validation_loss_is_never_best(tiny_sample, fast_config, tmp_path, monkeypatch):
    def nan_loss(self, subset, epoch):
        return {"loss": math.nan, "n": 4, "accuracy": 0.75, "balanced_accuracy": 0.75}
        yield

    monkeypatch.setattr(Trainer, "validate_events", nan_loss)
    with pytest.raises(TrainingError, match="diverged"):
        train(tiny_sample, fast_config(epochs=1), tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("loss", [5e4, 1e30])
def test_a_huge_finite_loss_counts_as_divergence(tiny_sample, fast_config, tmp_path, monkeypatch, loss):
    """A loss a thousand times that of guessing (lr far too high, fp16 overflow) is not a model to keep."""
    original = Trainer.train_epoch_events

    def exploded(self, epoch):
        metrics = yield from original(self, epoch)
        return {**metrics, "loss": loss} if epoch >= 2 else metrics

    monkeypatch.setattr(Trainer, "train_epoch_events", exploded)
    events = list(run_training(tiny_sample, fast_config(epochs=3), tmp_path / "m"))
    assert [e.is_best for e in events if isinstance(e, EpochEnd)] == [True, False]
    assert any(isinstance(e, WarningEvent) and "diverged" in e.message and "learning rate" in e.message
               for e in events)
    assert json.loads((tmp_path / "m" / "checkpoint" / "last.json").read_text())["epoch"] == 1


def test_non_finite_weights_are_never_written(tmp_path):
    from napari_cellclass.learn.models import build_model

    model, _ = build_model("mobilenetv3_small_050", 2, in_chans=1)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ModelFolderError, match="non-finite"):
        ckpt.save_weights(tmp_path / "m", model)
    assert not (tmp_path / "m" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def model_dir(tiny_sample, tmp_path_factory):
    from napari_cellclass.learn.config import TrainConfig

    from .conftest import FAST

    out = tmp_path_factory.mktemp("div") / "m"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 1}), out)
    return out


def test_a_model_folder_with_non_finite_weights_is_refused(model_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(model_dir, d)
    with safe_open(str(d / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    state = load_file(d / "model.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, d / "model.safetensors", metadata=meta)
    with pytest.raises(ModelFolderError, match="non-finite") as info:
        load_model(d)
    assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("std", [[0.0, 1.0], [-1.0, 1.0], ["nan", 1.0]])
def test_normalisation_with_zero_negative_or_nan_std_is_refused(model_dir, tmp_path, std):
    d = tmp_path / "copy"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["normalisation"]["std"] = [float(v) for v in std]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match=r"config\.json.*std"):
        load_model(d)


def test_predict_refuses_non_finite_outputs(model_dir, tiny_sample, tmp_path):
    trained = load_model(model_dir)
    head = trained.model.head.fc
    with torch.no_grad():
        head.bias.fill_(float("inf"))
        head.bias[0] = -float("inf")  # softmax of inf logits: NaN
    before = (tiny_sample.root / "cellclass_predictions.csv").read_bytes() \
        if (tiny_sample.root / "cellclass_predictions.csv").exists() else None
    with pytest.raises(CellclassError, match="non-finite") as info:
        predict(trained, tiny_sample, csv=tmp_path / "p.csv")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "p.csv").exists()
    after = (tiny_sample.root / "cellclass_predictions.csv").read_bytes() \
        if (tiny_sample.root / "cellclass_predictions.csv").exists() else None
    assert before == after


def test_nan_never_passes_a_confidence_filter(tmp_path):
    nan = Prediction("a.tif", ("x",), float("nan"), {"x": float("nan"), "y": float("nan")})
    good = Prediction("b.tif", ("x",), 0.995, {"x": 0.995, "y": 0.005})
    assert not meets_confidence(nan, 0.0) and not meets_confidence(nan, 0.99)
    assert meets_confidence(good, 0.99)
    assert [p.image_id for p in filter_by_confidence([nan, good], 0.99)] == ["b.tif"]
    assert filter_by_confidence({"a.tif": nan}, 0.0) == []
    # stored NaN (an older file, an edit) is skipped and reported when read, never returned
    path = tmp_path / "preds.csv"
    path.write_text("image_id,predicted,confidence,p:x,p:y,model,timestamp\n"
                    "a.tif,x,nan,nan,nan,m,t\nb.tif,x,0.995,0.995,0.005,m,t\n", encoding="utf-8")
    problems: list[str] = []
    assert list(read_predictions_csv(path, problems=problems)) == ["b.tif"]
    assert len(problems) == 1 and "a.tif" in problems[0]
    with pytest.raises(CellclassError, match="non-finite"):
        write_predictions(tmp_path, [nan])
    assert np.isfinite([p.confidence for p in read_predictions_csv(path).values()]).all()


def test_an_infinite_training_loss_stops_the_run(tiny_sample, fast_config, tmp_path, monkeypatch):
    from napari_cellclass.learn import losses

    real = losses.build_loss

    def exploding(*a, **k):
        base = real(*a, **k)

        class Boom(torch.nn.Module):
            def forward(self, logits, y):
                out = base(logits, y)
                return out * float("inf") if armed and not torch.is_inference_mode_enabled() else out

        return Boom()

    armed = False
    monkeypatch.setattr("napari_cellclass.learn.builders.build_loss", exploding)
    events = []
    for ev in run_training(tiny_sample, fast_config(epochs=3), tmp_path / "m"):
        events.append(ev)
        armed = armed or isinstance(ev, EpochEnd)  # the training loss explodes from epoch 2 on
    warning = next(e for e in events if isinstance(e, WarningEvent) and "diverged" in e.message)
    assert "training loss inf" in warning.message and "epoch 2" in warning.message
    assert events[-1].best_epoch == 1 and _all_finite(tmp_path / "m")
