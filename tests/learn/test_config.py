"""TrainConfig: defaults, JSON/YAML round trip, one-line errors naming the field."""
from __future__ import annotations

import json

import pytest

from napari_cellclass.core.errors import ConfigError
from napari_cellclass.learn.config import TrainConfig


def test_round_trip_json_and_yaml(tmp_path):
    cfg = TrainConfig(backbone="resnet18", loss="focal", focal_gamma=1.5, schedule="onecycle", epochs=3,
                      input_size=None, aug_affine_degrees=15.0, fine_tune="head-then-all", extra={"note": "x"})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for name in ("c.json", "c.yaml"):
        cfg.save(tmp_path / name)
        assert TrainConfig.from_file(tmp_path / name) == cfg


def test_partial_file_and_dashes(tmp_path):
    (tmp_path / "c.yml").write_text("epochs: 5\nbatch-size: 4\noptimizer: sgd\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yml")
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.backbone) == (5, 4, "sgd", TrainConfig().backbone)


@pytest.mark.parametrize("field,value,words", [
    ("optimizer", "rmsprop", ["optimizer", "sgd, adam, adamw"]),
    ("loss", "mse", ["loss", "ce, focal, kl, bce"]),
    ("schedule", "step", ["schedule", "plateau"]),
    ("epochs", 0, ["epochs", "1"]),
    ("lr", -1.0, ["lr"]),
    ("batch_size", 2.5, ["batch_size", "whole number"]),
    ("fine_tune", "some", ["fine_tune", "head-then-all"]),
    ("device", "tpu", ["device", "cuda"]),
    ("monitor", "auc", ["monitor", "balanced_accuracy"]),
    ("aug_flips", "yes", ["aug_flips", "true or false"]),
    ("train_percent", 120.0, ["train_percent"]),
])
def test_bad_values_give_one_line_naming_field(field, value, words):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_unknown_key_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting.*epoch_count"):
        TrainConfig.from_dict({"epoch_count": 3})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        TrainConfig.from_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_split_fractions_and_monitor():
    cfg = TrainConfig(train_percent=70, test_percent=10)
    assert cfg.val_fraction == pytest.approx(0.2) and cfg.test_fraction == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="must be 100"):
        TrainConfig(train_percent=70, val_percent=20, test_percent=20)
    assert TrainConfig().monitor_for(False) == ("balanced_accuracy", "max")
    assert TrainConfig().monitor_for(True) == ("f1_macro", "max")
    assert TrainConfig(monitor="loss").monitor_for(False) == ("loss", "min")
    assert TrainConfig(fine_tune="none").fine_tune == "full"


def test_automatic_defaults_resolve_from_the_settings():
    assert TrainConfig().fine_tune_mode == "full"  # random weights: train everything
    assert TrainConfig(pretrained="imagenet").fine_tune_mode == "head-then-all"
    assert TrainConfig(pretrained="imagenet", fine_tune="head").fine_tune_mode == "head"
    cfg = TrainConfig.from_dict({"lr": "auto"})
    assert cfg.lr_find and cfg.lr == TrainConfig().lr
    assert not TrainConfig(lr=0.01).lr_find
    with pytest.raises(ConfigError, match="lr="):
        TrainConfig(lr="fast")


def test_model_config_json_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"format": "napari-cellclass/model", "train_config": TrainConfig(epochs=7).to_dict()}))
    assert TrainConfig.from_file(path).epochs == 7


def _from_file_within(path, seconds=10.0):
    """``TrainConfig.from_file(path)`` run in a thread: (result or exception); fails the test if it hangs."""
    import threading

    box: list = []

    def read():
        try:
            box.append(TrainConfig.from_file(path))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():  # unblock the reader of a FIFO so the thread ends
        import os

        with open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "w") as fh:
            fh.write("{}")
        pytest.fail(f"reading {path} hangs")
    return box[0]


def test_config_files_are_read_bounded(tmp_path):
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text('{"extra": {"x": "' + "a" * (9 * 2 ** 20) + '"}}')
    for path, words in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                        (tmp_path, "not a regular file"), (big, "too large")):
        err = _from_file_within(path)
        assert isinstance(err, ConfigError), err
        assert words in str(err) and str(path) in str(err) and "\n" not in str(err)
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"epochs": 4}')
    assert _from_file_within(tmp_path / "bom.json").epochs == 4
    (tmp_path / "latin.yaml").write_bytes(b"extra: {note: caf\xe9}\n")
    assert isinstance(_from_file_within(tmp_path / "latin.yaml"), ConfigError)


def test_train_config_fifo_is_one_line(tmp_path, capsys):
    from napari_cellclass.cli import main

    from ._fifo import fifo_with_late_writer

    fifo = fifo_with_late_writer(tmp_path / "cfg.yaml", "epochs: x\n")
    code = main(["train", str(tmp_path), "--config", str(fifo)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a regular file" in err


def test_a_yaml_anchor_inside_itself_is_one_line(tmp_path):
    (tmp_path / "rec.yaml").write_text("extra: &a {x: *a}\n")
    with pytest.raises(ConfigError, match="refers to itself") as info:
        TrainConfig.from_file(tmp_path / "rec.yaml")
    assert "\n" not in str(info.value) and "rec.yaml" in str(info.value)
