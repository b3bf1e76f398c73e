"""The training engine: event order, cancelling, resuming, determinism, losses, multi-label."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_cellclass.core.errors import TrainingError
from napari_cellclass.learn import (
    BatchProgress,
    CancelToken,
    CheckpointSaved,
    EpochEnd,
    Finished,
    Log,
    Started,
    load_model,
    predict,
    run_training,
    train,
)
from napari_cellclass.learn.engine import Trainer


def _events(project, cfg, out, **kw):
    return list(run_training(project, cfg, out, **kw))


def test_event_order_and_model_folder(tiny_sample, fast_config, tmp_path):
    evs = _events(tiny_sample, fast_config(epochs=2), tmp_path / "m")
    kinds = [type(e).__name__ for e in evs]
    assert isinstance(evs[0], Log) and isinstance(evs[-1], Finished)
    start = kinds.index("Started")
    assert all(e.phase == "cache" for e in evs[:start] if isinstance(e, BatchProgress))
    epoch_ends = [e for e in evs if isinstance(e, EpochEnd)]
    assert [e.epoch for e in epoch_ends] == [1, 2]
    # each epoch: train batches, then val batches, then EpochEnd, then checkpoints
    first_end = kinds.index("EpochEnd")
    phases = [e.phase for e in evs[start:first_end] if isinstance(e, BatchProgress)]
    assert phases == sorted(phases, key=lambda p: p != "train") and "val" in phases
    # written in the background while the next epoch trains: announced once on disk, best before last
    saved = [e for e in evs[first_end + 1:] if isinstance(e, CheckpointSaved)]
    assert [(e.epoch, e.kind) for e in saved[:2]] == [(1, "best"), (1, "last")]
    end = epoch_ends[0]
    assert list(end.train)[:3] == ["loss", "n", "accuracy"] and "confusion_matrix" in end.val
    assert end.is_best and end.monitor == "balanced_accuracy"  # the default: honest on imbalanced classes
    fin = evs[-1]
    assert not fin.cancelled and fin.epochs_run == 2 and len(fin.history) == 2
    model = load_model(fin.model_dir)
    assert model.classes == tiny_sample.class_names and model.in_chans == 2 and model.input_size == 32


def test_cancel_mid_training_keeps_a_loadable_best_model(tiny_sample, fast_config, tmp_path):
    token = CancelToken()
    seen = []
    for ev in run_training(tiny_sample, fast_config(epochs=5), tmp_path / "m", cancel=token):
        seen.append(ev)
        if isinstance(ev, BatchProgress) and ev.phase == "train" and ev.epoch == 2:
            token.cancel()
    fin = seen[-1]
    assert isinstance(fin, Finished) and fin.cancelled
    assert fin.best_epoch == 1 and fin.epochs_run == 1
    assert not any(isinstance(e, EpochEnd) and e.epoch >= 2 for e in seen)
    model = load_model(fin.model_dir)
    assert model.config["best_epoch"] == 1 and model.config["cancelled"] is True


def test_cancel_before_the_first_epoch_writes_nothing(tiny_sample, fast_config, tmp_path):
    token = CancelToken()
    token.cancel()
    fin = _events(tiny_sample, fast_config(), tmp_path / "m", cancel=token)[-1]
    assert fin.cancelled and fin.model_dir is None and not (tmp_path / "m" / "model.safetensors").exists()


def _last_weights(folder):
    return {k: v for k, v in load_file(folder / "checkpoint" / "last.safetensors").items() if k.startswith("model.")}


def test_resume_repeats_an_uninterrupted_run_exactly(tiny_sample, fast_config, tmp_path):
    cfg = fast_config(epochs=3, schedule="cosine")
    _events(tiny_sample, cfg, tmp_path / "full")
    token = CancelToken()
    for ev in run_training(tiny_sample, cfg, tmp_path / "part", cancel=token):
        if isinstance(ev, BatchProgress) and ev.phase == "train" and ev.epoch == 2 and ev.batch == 1:
            token.cancel()
    resumed = _events(tiny_sample, cfg, tmp_path / "part", resume=True)
    started = next(e for e in resumed if isinstance(e, Started))
    assert started.start_epoch == 2
    assert [e.epoch for e in resumed if isinstance(e, EpochEnd)] == [2, 3]
    a, b = _last_weights(tmp_path / "full"), _last_weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert len(load_model(tmp_path / "part").config["history"]) == 3


def test_same_seed_same_weights_other_seed_differs(tiny_sample, fast_config, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _events(tiny_sample, fast_config(epochs=1, seed=seed), tmp_path / name)
    wa, wb, wc = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("loss,optimizer,schedule", [("ce", "sgd", "onecycle"), ("focal", "adam", "plateau"),
                                                     ("kl", "adamw", "none")])
def test_each_loss_optimizer_and_schedule_trains(tiny_sample, fast_config, tmp_path, loss, optimizer, schedule):
    cfg = fast_config(epochs=2, loss=loss, optimizer=optimizer, schedule=schedule, grad_clip=1.0,
                      class_weights="balanced", balanced_sampler=True, label_smoothing=0.1)
    result = train(tiny_sample, cfg, tmp_path / "m")
    losses = [h["train"]["loss"] for h in result.history]
    assert all(np.isfinite(losses)) and result.model_dir is not None


def test_head_then_all_freezes_then_lowers_backbone_lr(tiny_sample, fast_config, tmp_path):
    cfg = fast_config(epochs=2, fine_tune="head-then-all", freeze_epochs=1, backbone_lr_factor=0.1, schedule="none")
    tr = Trainer(tiny_sample, cfg, tmp_path / "m")
    list(tr.setup())
    before = {k: v.clone() for k, v in tr.model.backbone.state_dict().items()}
    tr.train_one_epoch(1)
    after = tr.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics kept
    tr.train_one_epoch(2)
    assert not all(torch.equal(before[k], tr.model.backbone.state_dict()[k]) for k in before)
    lrs = {g["name"]: g["lr"] for g in tr.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])


def test_head_only_never_changes_the_backbone(tiny_sample, fast_config, tmp_path):
    tr = Trainer(tiny_sample, fast_config(fine_tune="head"), tmp_path / "m")
    list(tr.setup())
    before = {k: v.clone() for k, v in tr.model.backbone.state_dict().items()}
    tr.train_one_epoch(1)
    tr.recalibrate_batch_norm(1)
    assert all(torch.equal(before[k], tr.model.backbone.state_dict()[k]) for k in before)
    assert [g["name"] for g in tr.optimizer.param_groups] == ["head"]


def test_early_stopping_and_ties(tiny_sample, fast_config, tmp_path, monkeypatch):
    # validation that never gets better after epoch 1 (same accuracy, same loss)
    scores = iter([(0.5, 1.0), (0.5, 1.0), (0.5, 1.0), (0.5, 1.0)])

    def fixed(self, subset, epoch):
        acc, loss = next(scores)
        return {"loss": loss, "n": 1, "accuracy": acc, "balanced_accuracy": acc}
        yield  # a generator, like the real one

    monkeypatch.setattr(Trainer, "validate_events", fixed)
    result = train(tiny_sample, fast_config(epochs=6, early_stopping=2), tmp_path / "m")
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_equal_accuracy_with_lower_loss_is_better(tiny_sample, fast_config, tmp_path, monkeypatch):
    scores = iter([(1.0, 0.3), (1.0, 0.1), (1.0, 0.2)])

    def fixed(self, subset, epoch):
        acc, loss = next(scores)
        return {"loss": loss, "n": 1, "accuracy": acc, "balanced_accuracy": acc}
        yield

    monkeypatch.setattr(Trainer, "validate_events", fixed)
    assert train(tiny_sample, fast_config(epochs=3), tmp_path / "m").best_epoch == 2


def test_multi_label_training(tmp_path, fast_config):
    from napari_cellclass.core.project import Project
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "s", n=24, seed=2, size=64, labelled_fraction=1.0)
    p = Project.open(p.root)
    p.set_multi_label(True)
    p.add_class("crowded")
    ids = p.labelled_ids()
    p.toggle(ids[::2], "crowded")
    result = train(p, fast_config(epochs=2, loss="bce"), tmp_path / "m")
    m = result.best_metrics
    assert {"f1_micro", "f1_macro", "exact_match"} <= set(m) and "crowded" in m["per_class"]
    trained = load_model(result.model_dir)
    assert trained.multi_label
    # per-class decision thresholds chosen on validation, used by predict
    chosen = trained.calibration["thresholds"]
    assert set(chosen) == set(trained.classes) and all(0 < t < 1 for t in chosen.values())
    res = predict(trained, p, all_images=True, write=False, device="cpu")
    t = np.array([chosen[c] for c in res.classes])
    assert res.predicted() == [tuple(c for c, keep in zip(res.classes, row >= t, strict=True) if keep)
                               for row in res.probabilities]


def test_unreadable_image_is_skipped_with_a_warning(tmp_path, fast_config):
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "s", n=16, seed=4, size=64, labelled_fraction=1.0)
    victim = p.labelled_ids()[0]
    p.path(victim).write_bytes(b"broken")
    result = train(p, fast_config(epochs=1), tmp_path / "m")
    assert any(victim in w for w in result.warnings)
    assert victim in load_model(result.model_dir).config["split"]["skipped"]


def test_clear_errors_for_unusable_projects(tmp_path, fast_config, tiny_sample):
    from napari_cellclass.core.project import Project

    (tmp_path / "empty").mkdir()
    empty = Project.open(tmp_path / "empty")
    with pytest.raises(TrainingError, match="at least two classes"):
        train(empty, fast_config(), tmp_path / "m")
    empty.add_class("a")
    empty.add_class("b")
    with pytest.raises(TrainingError, match="no labelled images"):
        train(empty, fast_config(), tmp_path / "m")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(TrainingError, match="not a model folder"):
        train(tiny_sample, fast_config(), tmp_path / "other")


def test_an_existing_model_is_never_overwritten_without_resume(tiny_sample, fast_config, tmp_path):
    from napari_cellclass.learn.engine import default_out_dir

    first = train(tiny_sample, fast_config(epochs=1), tmp_path / "m")
    weights = (first.model_dir / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="already holds a model; pass --resume"):
        train(tiny_sample, fast_config(epochs=1, seed=9), tmp_path / "m")
    assert (first.model_dir / "model.safetensors").read_bytes() == weights
    a = default_out_dir(tiny_sample, "resnet18")
    a.mkdir(parents=True)
    b = default_out_dir(tiny_sample, "resnet18")
    assert b != a and not b.exists()  # two runs started in the same second get two folders


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_are_fused_on_the_cpu(tiny_sample, fast_config, tmp_path, optimizer):
    tr = Trainer(tiny_sample, fast_config(optimizer=optimizer), tmp_path / "m")
    list(tr.setup())
    assert tr.optimizer.defaults.get("fused") is True  # one kernel per step, not a loop over the tensors
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train_one_epoch(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))


def test_denormals_are_flushed_on_the_cpu_during_training_epochs_only(tiny_sample, fast_config, tmp_path):
    def flushed():
        return float(torch.tensor([1e-39]) * 1.0) == 0.0

    assert not flushed()
    during = []
    for ev in run_training(tiny_sample, fast_config(epochs=1), tmp_path / "m"):
        if isinstance(ev, BatchProgress) and ev.phase == "train":
            during.append(flushed())
    assert during and all(during)
    assert not flushed()  # torch's default again after the run
    tr = Trainer(tiny_sample, fast_config(epochs=1), tmp_path / "m2")
    list(tr.setup())
    tr.train_one_epoch(1)
    assert not flushed()
