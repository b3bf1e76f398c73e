"""Splits that cannot leak: train --group-by records its groups; crossing groups and near-duplicates are warned."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellclass.cli import main
from napari_cellclass.core.duplicates import METHOD
from napari_cellclass.core.project import Project
from napari_cellclass.core.splits import SPLIT_NAME, write_split_file

REGEX = r"(?P<plate>plate[0-9])/(?P<well>[A-P][0-9]{2})"
FAST_ARGS = ["--backbone", "mobilenetv3_small_050", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
             "--device", "cpu"]


@pytest.fixture
def wells(tmp_path):
    """36 distinct 24 x 24 images ``plate1/B02_f1.tif`` ... (2 plates x 6 wells x 3 fields); a well's class
    cycles a, b, c."""
    import tifffile

    root = tmp_path / "screen"
    rng = np.random.default_rng(0)
    labels = {}
    for p in (1, 2):
        for w in range(6):
            for f in range(3):
                iid = f"plate{p}/{'BCDEFG'[w]}{w + 2:02d}_f{f + 1}.tif"
                (root / iid).parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(root / iid, rng.integers(0, 255, (24, 24), dtype=np.uint8))
                labels[iid] = ("abc"[(w + p) % 3],)
    project = Project.open(root)
    project.add_classes(["a", "b", "c"])
    project.apply_labels(labels, description="test labels")
    return project


def _group(iid: str) -> str:
    return iid.rsplit("_", 1)[0]


def test_train_group_by_keeps_groups_apart_and_records_them(wells, tmp_path, capsys):
    model = tmp_path / "model"
    code = main(["train", str(wells.root), "--group-by", REGEX, *FAST_ARGS, "--out", str(model), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert not [w for w in result["warnings"] if "near-duplicate" in w]  # distinct images
    cfg = json.loads((model / "config.json").read_text())
    split = cfg["split"]
    assert cfg["train_config"]["group_by"] == REGEX
    assert split["source"] == "group" and split["group_by"] == REGEX and split["near_duplicates"] == 0
    homes = {name: {_group(i) for i in ids} for name, ids in split["ids"].items()}
    assert split["groups"] == {name: len(g) for name, g in homes.items()}
    assert split["groups"]["train"] + split["groups"]["val"] == 12 and split["groups"]["val"] >= 3
    assert not homes["train"] & homes["val"] and split["groups_spanning_splits"] == 0
    from napari_cellclass.learn import load_model

    load_model(model)  # the model folder checks accept the group record


@pytest.mark.parametrize("value, pattern", [("(?P<well>B0", "not a valid regular expression"),
                                            ("column:donor", "cellclass_groups.csv, which does not exist")])
def test_bad_group_by_on_the_command_line_is_one_line(wells, tmp_path, capsys, value, pattern):
    code = main(["train", str(wells.root), "--group-by", value, *FAST_ARGS, "--out", str(tmp_path / "m")])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and pattern in err and "Traceback" not in err


def test_predefined_split_across_groups_and_a_copied_image_are_warned(wells, fast_config, tmp_path):
    import tifffile

    from napari_cellclass.learn.engine import Trainer
    from napari_cellclass.learn.events import WarningEvent

    ids = wells.labelled_ids()
    val_wells = ("plate1/C03", "plate2/D04", "plate2/B02", "plate1/G07")
    assignment = {i: "val" if _group(i) in val_wells else "train" for i in ids}
    assignment["plate1/B02_f3.tif"] = "val"  # plate1/B02: 2 images in train, 1 in val
    write_split_file(wells.root / SPLIT_NAME, assignment)
    # a validation image that is a slightly noised copy of a training image
    original = tifffile.imread(wells.path("plate1/E05_f1.tif")).astype(np.float64)
    noise = np.random.default_rng(1).normal(0, 0.005 * 255, original.shape)
    tifffile.imwrite(wells.path("plate2/D04_f2.tif"), np.clip(np.round(original + noise), 0, 255).astype(np.uint8))

    tr = Trainer(wells, fast_config(group_by=REGEX, split="predefined"), tmp_path / "m")
    warnings = [ev.message for ev in tr.setup() if isinstance(ev, WarningEvent)]
    crossing = [w for w in warnings if "span splits" in w]
    assert len(crossing) == 1
    assert crossing[0].startswith("group 'plate1/B02' has images in train (2) and val (1), e.g. plate1/B02_f1.tif")
    assert "1 group(s) of group_by" in crossing[0] and "predefined split" in crossing[0]
    dup = [w for w in warnings if "near-duplicate" in w]
    assert len(dup) == 1 and METHOD in dup[0]
    assert "1 held-out image(s) (1 val)" in dup[0]
    assert "'plate2/D04_f2.tif' (val) ~ 'plate1/E05_f1.tif' (train" in dup[0]
    split = tr._meta()["split"]
    assert split["source"] == "predefined" and split["groups_spanning_splits"] == 1 and split["near_duplicates"] == 1
    tr.built.images.store.close()


def test_near_duplicates_on_the_sample_data(tiny_sample):
    """Distinct sample images are not near-duplicates; a copy with 0.5 % noise in validation is found."""
    from napari_cellclass.learn.builders import duplicate_leaks
    from napari_cellclass.learn.data import load_store

    ids = tiny_sample.image_ids
    pix = [tiny_sample.read_image(i).pixels for i in ids]
    spread = float(pix[3].max()) - float(pix[3].min())
    noisy = pix[3] + np.random.default_rng(2).normal(0, 0.005 * spread, pix[3].shape)
    copy = np.clip(np.round(noisy), 0, 65535).astype(pix[3].dtype)
    store = load_store([*pix, copy], 32, keys=[*ids, "copy"])
    half = len(ids) // 2
    split = {"train": ids[:half], "val": ids[half:], "test": []}
    index = {k: np.array([store.keys.index(i) for i in v], dtype=np.int64) for k, v in split.items()}
    assert duplicate_leaks(store, split, index) == (0, None)
    split["val"] = [*split["val"], "copy"]
    index["val"] = np.append(index["val"], len(ids))
    n, note = duplicate_leaks(store, split, index)
    assert n == 1 and f"'copy' (val) ~ '{ids[3]}' (train" in note


def test_near_duplicate_search_keeps_its_memory_small_on_large_splits():
    import tracemalloc

    from napari_cellclass.core.duplicates import near_duplicates

    rng = np.random.default_rng(0)
    train = rng.normal(size=(80_000, 256)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    held = rng.normal(size=(1_000, 256)).astype(np.float32)
    held /= np.linalg.norm(held, axis=1, keepdims=True)
    held[[3, 500]] = train[[70_000, 12]] + 0.001  # two near-copies
    tracemalloc.start()
    pairs = near_duplicates(held, train)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sorted(zip(pairs.a.tolist(), pairs.b.tolist(), strict=True)) == [(3, 70_000), (500, 12)]
    assert peak < 200 * 2**20  # all at once: 1,000 x 80,000 floats = 305 MiB and a mask of 76 MiB
    small = near_duplicates(held, train, chunk=7)
    assert small.a.tolist() == pairs.a.tolist() and small.b.tolist() == pairs.b.tolist()
