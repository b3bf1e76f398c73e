"""Model folders are written so that a reader (load_model, --resume) sees the old complete state or
the new one, never a mix; a full disk is one line and leaves the previous state; settings that
cannot be saved are refused before training."""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os

import pytest
import torch

from napari_cellclass.core.errors import ConfigError, ModelFolderError, TrainingError
from napari_cellclass.learn import EpochEnd, load_model, run_training, train
from napari_cellclass.learn import checkpoint as ckpt
from napari_cellclass.learn.config import TrainConfig
from napari_cellclass.learn.models import build_model

META = {"backbone": "mobilenetv3_small_050", "in_chans": 1, "input_size": 32, "multi_label": False,
        "normalisation": {"scaling": "dtype", "mean": [0.5], "std": [0.25], "source": "dataset"},
        "train_config": {"head": "pool", "dropout": 0.2}}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = build_model("mobilenetv3_small_050", 2, in_chans=1)
    return model


def _meta(epoch: int) -> dict:
    return {**META, "classes": ["a", "b"], "best_epoch": epoch}


def _same(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    a, b = model.state_dict(), other.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


class _Kill(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even except-Exception handlers)."""


def _kill_at(monkeypatch, n: int) -> None:
    """Let ``n`` calls of os.replace happen, then "kill" the process at the next one."""
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        if calls["n"] >= n:
            raise _Kill
        calls["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("survive", [0, 1, 2, 3])
def test_a_kill_between_the_writes_leaves_the_old_or_the_new_model(tmp_path, monkeypatch, survive):
    folder = tmp_path / "m"
    old, new = _model(1), _model(2)
    ckpt.save_model_folder(folder, old, _meta(1))
    with monkeypatch.context() as mp:
        _kill_at(mp, survive)
        with contextlib.suppress(_Kill):
            ckpt.save_model_folder(folder, new, _meta(2))
    loaded = load_model(folder)
    epoch = loaded.config["best_epoch"]
    assert _same(loaded.model, old if epoch == 1 else new), f"weights do not belong to epoch {epoch}"
    # the next save completes or drops what the killed one left
    ckpt.save_model_folder(folder, _model(3), _meta(3))
    loaded = load_model(folder)
    assert loaded.config["best_epoch"] == 3 and _same(loaded.model, _model(3))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_mixed_weights_and_config_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ckpt.save_model_folder(a, _model(1), _meta(1))
    ckpt.save_model_folder(b, _model(2), _meta(2))
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(ModelFolderError, match="do not belong to config.json"):
        load_model(a)


def _optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.eval()  # running statistics untouched; the weights take one step
    model(torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))).sum().backward()
    opt.step()
    return opt


@pytest.mark.parametrize("survive", [0, 1, 2, 3])
def test_a_kill_between_the_state_writes_never_resumes_on_the_wrong_weights(tmp_path, monkeypatch, survive):
    folder = tmp_path / "m"
    old, new = _model(1), _model(2)
    ckpt.save_training_state(folder, old, _optimizer(old), {"epoch": 1})
    with monkeypatch.context() as mp:
        _kill_at(mp, survive)
        with contextlib.suppress(_Kill):
            ckpt.save_training_state(folder, new, _optimizer(new), {"epoch": 2})
    data, tensors = ckpt.read_training_state(folder)
    expected = old if data["epoch"] == 1 else new
    for k, v in expected.state_dict().items():
        assert torch.equal(tensors["model." + k], v), f"state of epoch {data['epoch']} has other weights"


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_on_a_new_folder_is_one_line_and_leaves_nothing(tiny_sample, fast_config, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(ModelFolderError, match="free some disk space") as info:
        train(tiny_sample, fast_config(epochs=1), tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "m").exists()


def test_a_full_disk_keeps_the_previous_model(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    old = _model(1)
    ckpt.save_model_folder(folder, old, _meta(1))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(ModelFolderError, match="free some disk space"):
        ckpt.save_model_folder(folder, _model(2), _meta(2))
    with pytest.raises(ModelFolderError, match="free some disk space"):
        ckpt.save_training_state(folder, old, _optimizer(old), {"epoch": 2})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert _same(load_model(folder).model, _model(1))


def test_safetensors_error_is_one_line(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def broken(*_a, **_k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save", broken)
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(ModelFolderError, match="free some disk space") as info:
        ckpt.save_model_folder(tmp_path / "m", _model(1), _meta(1))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_dates_in_extra_become_iso_strings_and_unsavable_values_are_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("extra: {when: 2020-01-01, at: 2020-01-01 10:00:00, tags: [a, b]}\n")
    cfg = TrainConfig.from_file(path)
    assert cfg.extra["when"] == "2020-01-01" and cfg.extra["at"].startswith("2020-01-01T10:00")
    json.dumps(cfg.to_dict())
    with pytest.raises(ConfigError, match=r"extra\.thing"):
        TrainConfig(extra={"thing": object()})
    with pytest.raises(ConfigError, match="extra"):
        TrainConfig(extra={"x": float("nan")})
    assert TrainConfig(extra={"d": dt.date(2021, 2, 3)}).extra == {"d": "2021-02-03"}


def test_settings_that_cannot_be_saved_fail_before_the_first_epoch(tiny_sample, fast_config, tmp_path,
                                                                 monkeypatch):
    from napari_cellclass.learn.engine import Trainer

    original = Trainer._meta
    monkeypatch.setattr(Trainer, "_meta", lambda self: {**original(self), "odd": object()})
    seen = []
    with pytest.raises(TrainingError, match="cannot be saved"):
        for ev in run_training(tiny_sample, fast_config(epochs=1), tmp_path / "m"):
            seen.append(ev)
    assert not any(isinstance(e, EpochEnd) for e in seen)
    assert not (tmp_path / "m").exists()


def test_yaml_dates_train_end_to_end(tiny_sample, tmp_path, capsys):
    from napari_cellclass.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("extra: {when: 2020-01-01}\nepochs: 1\nbackbone: mobilenetv3_small_050\ninput_size: 32\n"
                   "batch_size: 8\ndevice: cpu\n")
    code = main(["train", str(tiny_sample.root), "--config", str(cfg), "--out", str(tmp_path / "m"), "--json"])
    assert code == 0, capsys.readouterr().err
    assert load_model(tmp_path / "m").config["train_config"]["extra"] == {"when": "2020-01-01"}


def _no_epoch(monkeypatch):
    """Fail the test when an epoch starts (an unwritable model folder must be found before)."""
    from napari_cellclass.learn.engine import Trainer

    def boom(self, epoch):
        raise AssertionError("an epoch ran before the model folder was found unwritable")
        yield

    monkeypatch.setattr(Trainer, "train_epoch_events", boom)


def test_an_existing_file_as_out_is_one_line(tiny_sample, tmp_path, capsys, monkeypatch):
    from napari_cellclass.cli import main

    _no_epoch(monkeypatch)
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code = main(["train", str(tiny_sample.root), "--epochs", "1", "--device", "cpu", "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Errno" not in err
    assert str(target) in err and "not a folder" in err and "--out" in err
    assert target.read_text() == "keep me"
    code = main(["train", str(tiny_sample.root), "--epochs", "1", "--device", "cpu", "--out", str(target / "m")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Errno" not in err and "--out" in err


def test_an_unwritable_out_folder_fails_before_the_first_epoch(tiny_sample, fast_config, tmp_path, monkeypatch):
    _no_epoch(monkeypatch)
    out = tmp_path / "m"
    real_open = os.open

    def read_only(path, flags, *a, **k):  # tests run as root: chmod cannot make a folder read-only
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == str(out):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ModelFolderError, match="permission denied") as info:
        train(tiny_sample, fast_config(epochs=2), out)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()  # the folder made for the check is removed again


def test_a_read_only_project_fails_before_the_first_epoch(tiny_sample, tmp_path, capsys, monkeypatch):
    from napari_cellclass.cli import main

    _no_epoch(monkeypatch)
    root = tiny_sample.root
    real_mkdir = os.mkdir

    def read_only(path, *a, **k):
        if os.path.abspath(path).startswith(str(root) + os.sep):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only)
    models = root / "cellclass_models"
    had_models = models.exists()
    code = main(["train", str(root), "--backbone", "mobilenetv3_small_050", "--input-size", "32", "--epochs", "2",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cellclass_models" in err
    assert "cannot save the model" in err and "--out" in err
    assert models.exists() == had_models


def test_a_model_folder_never_goes_into_a_label_or_cache_folder(tiny_sample, fast_config, monkeypatch):
    _no_epoch(monkeypatch)
    labels = next(tiny_sample.root.rglob("cellclass_labels"))
    for out in (labels / "m", tiny_sample.root / "cellclass_cache" / "m"):
        with pytest.raises(ModelFolderError, match="choose another --out") as info:
            train(tiny_sample, fast_config(epochs=1), out)
        assert str(out) in str(info.value) and not out.exists()


def test_another_ranks_write_probe_does_not_make_the_folder_taken(tmp_path):
    """Under torchrun rank 0 probes the model folder while the other ranks check that it is empty."""
    from napari_cellclass.learn.builders import open_out_dir, probe_out_dir
    from napari_cellclass.learn.config import TrainConfig

    out = tmp_path / "m"
    out.mkdir()
    (out / ".cellclass-probe-0123456789ab").write_bytes(b"")
    assert open_out_dir(out, TrainConfig(), resume=False) is None
    assert open_out_dir(tmp_path / "vanished", TrainConfig(), resume=False) is None
    probe_out_dir(out)
    (out / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match="not a model folder"):
        open_out_dir(out, TrainConfig(), resume=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_non_finite_tensors_are_found_in_every_float_type(dtype):
    from napari_cellclass.learn.weights_io import non_finite_tensors

    clean = torch.linspace(-3e4, 3e4, 1000).to(dtype)
    bad = {k: clean.clone() for k in ("nan", "inf", "-inf")}
    bad["nan"][500] = float("nan")
    bad["inf"][0] = float("inf")
    bad["-inf"][-1] = float("-inf")
    tensors = {"ok": clean, "empty": torch.zeros(0, dtype=dtype), "ints": torch.arange(5), **bad}
    assert non_finite_tensors(tensors) == ["nan", "inf", "-inf"]


def test_a_snapshot_is_written_without_a_second_copy(tmp_path, monkeypatch):
    """The background writer does no torch work on a snapshot (it is private already): no clone."""
    from safetensors.torch import load_file

    from napari_cellclass.learn.weights_io import snapshot_tensors, tensor_writer

    live = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    before = {k: v.clone() for k, v in live.items()}
    snap = snapshot_tensors(live)
    live["w"].add_(1)  # later optimizer steps do not reach the snapshot
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: clones.append(1) or real_clone(self, *a, **k))
    writer = tensor_writer(snap, {})
    with open(tmp_path / "s.safetensors", "wb") as fh:
        writer(fh)
    assert clones == []
    back = load_file(tmp_path / "s.safetensors")
    assert all(torch.equal(back[k], before[k]) for k in before)
    plain = {"w": torch.randn(4)}
    writer = tensor_writer(plain, {})  # a plain dict is copied when the writer is made
    assert clones == [1]
    plain["w"].zero_()
    with open(tmp_path / "p.safetensors", "wb") as fh:
        writer(fh)
    assert load_file(tmp_path / "p.safetensors")["w"].abs().sum() > 0
