"""Checkpoints written in the background while training goes on: announced once on disk, copied when
submitted, written by one thread in order, their errors raised in the training thread."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from napari_cellclass.core.errors import ModelFolderError
from napari_cellclass.learn import CheckpointSaved, run_training
from napari_cellclass.learn import checkpoint as ckpt
from napari_cellclass.learn.engine import Trainer


def test_each_checkpoint_is_on_disk_when_announced_and_written_by_the_save_thread(tiny_sample, fast_config,
                                                                                   tmp_path, monkeypatch):
    threads = []
    real = ckpt.save_pair

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_pair", spy)
    out = tmp_path / "m"
    seen = []
    for ev in run_training(tiny_sample, fast_config(epochs=3), out):
        if isinstance(ev, CheckpointSaved):
            seen.append((ev.epoch, ev.kind))
            if ev.kind == "best":
                assert json.loads((out / "config.json").read_text())["best_epoch"] == ev.epoch
            else:
                assert json.loads((out / "checkpoint" / "last.json").read_text())["epoch"] == ev.epoch
    lasts = [e for e, kind in seen if kind == "last"]
    assert lasts[0] == 1 and lasts[-1] == 3 and lasts == sorted(set(lasts))  # paced: some epochs may be skipped
    assert threads and all(name.startswith("cellclass-save") for name in threads)


def test_a_write_holds_the_state_of_its_epoch_not_a_later_one(tiny_sample, fast_config, tmp_path):
    tr = Trainer(tiny_sample, fast_config(epochs=2), tmp_path / "m")
    list(tr.setup())
    tr.train_one_epoch(1)
    tr.record.end_epoch(1, 0.1, 1.0, {"loss": 1.0}, {"loss": 1.0, "accuracy": 0.5}, 0.5, True)
    weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for i, s in
               enumerate(tr.optimizer.state.values())}
    best, state = tr.best_writer(), tr.state_writer(1)
    tr.train_one_epoch(2)  # changes the weights, the optimizer's moments and the history
    tr.record.end_epoch(2, 0.1, 1.0, {"loss": 1.0}, {"loss": 1.0, "accuracy": 0.5}, 0.5, False)
    best()
    state()
    saved = load_file(tr.out_dir / "model.safetensors")
    assert all(torch.equal(saved[k], weights[k]) for k in weights)
    assert not all(torch.equal(saved[k], v) for k, v in tr.model.state_dict().items())
    config = json.loads((tr.out_dir / "config.json").read_text())
    assert len(config["history"]) == 1
    last = load_file(tr.out_dir / "checkpoint" / "last.safetensors")
    assert all(torch.equal(last[f"model.{k}"], weights[k]) for k in weights)
    exp_avg = [m["exp_avg"] for m in moments.values()]
    keys = sorted((k for k in last if k.startswith("optim.") and k.endswith(".exp_avg")),
                  key=lambda k: int(k.split(".")[1]))
    saved_avg = [last[k] for k in keys]
    assert len(saved_avg) == len(exp_avg) and all(torch.equal(a, b) for a, b in zip(saved_avg, exp_avg, strict=True))
    assert json.loads((tr.out_dir / "checkpoint" / "last.json").read_text())["epoch"] == 1


def test_a_failed_background_write_stops_the_run_with_its_error(tiny_sample, fast_config, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise ModelFolderError(f"{tmp_path / 'm'}: cannot save the model (no space left on device); free some disk")

    monkeypatch.setattr(ckpt, "save_pair", full)
    with pytest.raises(ModelFolderError, match="no space left"):
        list(run_training(tiny_sample, fast_config(epochs=3), tmp_path / "m"))
    assert not [t for t in threading.enumerate() if t.name.startswith("cellclass-save")]


def test_writes_are_paced_and_the_newest_offer_wins():
    saves = ckpt.BackgroundSaves(share=0.5)
    gate = threading.Event()
    written = []

    def writer(name, block=False, seconds=0.0):
        def write():
            if block:
                gate.wait(5)
            time.sleep(seconds)
            written.append(name)
        return write

    saves.offer("last", writer("last 1", block=True), "e1")
    assert list(saves.done()) == []  # starts it
    saves.offer("last", writer("last 2"), "e2")  # waits: a write is running
    saves.offer("best", writer("best 3"), "b3")
    saves.offer("last", writer("last 3"), "e3")  # replaces "last 2", never written
    assert list(saves.done()) == []  # "last 1" still running
    gate.set()
    assert list(saves.flush()) == ["e1", "b3", "e3"]
    assert written == ["last 1", "best 3", "last 3"]
    # after a write of d seconds the next one waits about d * (1 / share - 1)
    saves.offer("last", writer("last 4", seconds=0.3), "e4")
    assert list(saves.flush()) == ["e4"]
    saves.offer("last", writer("last 5"), "e5")
    assert list(saves.done()) == [] and written[-1] == "last 4"  # not due for about 0.3 s
    time.sleep(0.4)
    assert list(saves.done()) == []  # due now: started
    assert list(saves.flush()) == ["e5"] and written[-1] == "last 5"
    saves.close()
