"""Training in a child process: same events, cancel keeps the best model, errors cross over."""
from __future__ import annotations

import multiprocessing as mp

import pytest

pytest.importorskip("torch")

from napari_cellclass.core.errors import TrainingError  # noqa: E402
from napari_cellclass.learn import (  # noqa: E402
    BatchProgress,
    CancelToken,
    CheckpointSaved,
    EpochEnd,
    Finished,
    Log,
    Started,
    load_model,
)
from napari_cellclass.learn.process import _error_from_child, run_training_in_process  # noqa: E402


def _no_children_left() -> bool:
    return not [p for p in mp.active_children() if p.name == "cellclass-training"]


def test_events_arrive_in_order(tiny_sample, fast_config, tmp_path):
    evs = list(run_training_in_process(tiny_sample.root, fast_config(epochs=2), tmp_path / "m", num_threads=1))
    kinds = [type(e).__name__ for e in evs]
    assert isinstance(evs[0], Log) and isinstance(evs[-1], Finished)
    start = kinds.index("Started")
    assert isinstance(evs[start], Started) and evs[start].classes == tiny_sample.class_names
    assert all(e.phase == "cache" for e in evs[:start] if isinstance(e, BatchProgress))
    assert [e.epoch for e in evs if isinstance(e, EpochEnd)] == [1, 2]
    first_end = kinds.index("EpochEnd")
    # written in the background while the next epoch trains: announced once on disk, best before last
    saved = [e for e in evs[first_end + 1:] if isinstance(e, CheckpointSaved)]
    assert [(e.epoch, e.kind) for e in saved[:2]] == [(1, "best"), (1, "last")]
    train_batches = [e.batch for e in evs[start:first_end] if isinstance(e, BatchProgress) and e.phase == "train"]
    assert train_batches == list(range(1, len(train_batches) + 1))
    fin = evs[-1]
    assert not fin.cancelled and fin.epochs_run == 2 and len(fin.history) == 2
    assert load_model(fin.model_dir).classes == tiny_sample.class_names
    assert _no_children_left()


def test_cancel_stops_the_child_and_keeps_a_loadable_best_model(tiny_sample, fast_config, tmp_path):
    token = CancelToken()
    seen = []
    for ev in run_training_in_process(tiny_sample.root, fast_config(epochs=30), tmp_path / "m", token,
                                      num_threads=1):
        seen.append(ev)
        if isinstance(ev, BatchProgress) and ev.phase == "train" and ev.epoch == 2:
            token.cancel()
    fin = seen[-1]
    assert isinstance(fin, Finished) and fin.cancelled
    assert 1 <= fin.epochs_run < 30 and fin.best_epoch is not None and fin.best_epoch <= fin.epochs_run
    model = load_model(fin.model_dir)
    assert model.config["cancelled"] is True and model.config["best_epoch"] == fin.best_epoch
    assert _no_children_left()


def test_an_error_in_the_child_is_raised_with_its_type_and_message(tmp_path, fast_config):
    from napari_cellclass.core.sample import make_sample_project

    project = make_sample_project(tmp_path / "one", n=12, size=48)
    project.clear(project.ids_with_class("positive control"))  # one class left: the engine refuses
    with pytest.raises(TrainingError) as info:
        list(run_training_in_process(project.root, fast_config(), tmp_path / "m", num_threads=1))
    assert type(info.value) is TrainingError
    assert "at least two classes" in str(info.value) and "\n" not in str(info.value)
    assert "Traceback" in str(info.value.__cause__)  # the child's traceback, for the log
    assert _no_children_left()


def test_closing_the_stream_early_ends_the_child(tiny_sample, fast_config, tmp_path):
    stream = run_training_in_process(tiny_sample.root, fast_config(epochs=30), tmp_path / "m", num_threads=1)
    for ev in stream:
        if isinstance(ev, BatchProgress) and ev.phase == "train":
            break
    stream.close()
    assert _no_children_left()


def test_rebuilt_errors():
    from napari_cellclass.core.errors import DeviceMemoryError

    exc = _error_from_child("napari_cellclass.core.errors", "DeviceMemoryError", "use batch 8", "tb")
    assert type(exc) is DeviceMemoryError and str(exc) == "use batch 8"
    assert type(_error_from_child("builtins", "MemoryError", "", "tb")) is MemoryError
    other = _error_from_child("somewhere.else", "Odd", "boom", "tb")  # never imported
    assert type(other) is RuntimeError and "boom" in str(other)


def test_a_script_without_a_main_guard_trains_in_a_child(tmp_path):
    """A plain script (no ``if __name__ == "__main__":``) is not run again by the training process."""
    import subprocess
    import sys
    import textwrap

    from napari_cellclass.core.sample import make_sample_project

    project = make_sample_project(tmp_path / "p", n=12, seed=4, size=48, labelled_fraction=1.0)
    script = tmp_path / "train_script.py"
    runs = tmp_path / "runs.txt"
    script.write_text(textwrap.dedent(f"""
        from napari_cellclass.learn import Finished, TrainConfig
        from napari_cellclass.learn.process import run_training_in_process

        with open({str(runs)!r}, "a") as fh:
            fh.write("run\\n")
        cfg = TrainConfig(backbone="mobilenetv3_small_050", input_size=32, batch_size=8, epochs=1, device="cpu")
        for ev in run_training_in_process({str(project.root)!r}, cfg, {str(tmp_path / "m")!r}, num_threads=1):
            if isinstance(ev, Finished):
                print("finished", ev.model_dir)
    """))
    proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"finished {tmp_path / 'm'}" in proc.stdout
    assert runs.read_text() == "run\n"  # the script's top level ran once, in the parent only
    assert load_model(tmp_path / "m").classes == project.class_names
