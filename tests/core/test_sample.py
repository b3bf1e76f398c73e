"""The synthetic U2OS sample: reproducible, 2-channel 16-bit, partly labelled, texture not brightness."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.sample import _blur, ground_truth, make_sample_project


def test_sample_layout_and_labels(sample_project):
    p = sample_project
    assert len(p.image_ids) == 24
    assert p.class_names == ("negative control", "positive control")
    img = p.read_image(p.image_ids[0])
    assert img.pixels.shape == (2, 128, 128) and img.pixels.dtype == np.uint16
    assert img.channel_names == ("Hoechst", "arrestin-GFP")
    assert p.counts() == {"negative control": 7, "positive control": 7}
    truth = ground_truth(p.root)
    assert all(truth[i] == p.label(i) for i in p.labelled_ids())
    assert not p.can_undo


def test_sample_is_reproducible(tmp_path):
    a = make_sample_project(tmp_path / "a", n=6, seed=5)
    b = make_sample_project(tmp_path / "b", n=6, seed=5)
    c = make_sample_project(tmp_path / "c", n=6, seed=6)
    for iid in a.image_ids:
        np.testing.assert_array_equal(a.read_image(iid).pixels, b.read_image(iid).pixels)
    assert a.labelled_ids() == b.labelled_ids()
    assert any(not np.array_equal(a.read_image(i).pixels, c.read_image(i).pixels) for i in a.image_ids)


def test_sample_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(ProjectError, match="not empty"):
        make_sample_project(tmp_path, n=4)


def test_mean_brightness_does_not_separate_classes_but_texture_does(shared_sample):
    """A brightness threshold is near chance; a simple texture statistic is not."""
    truth = ground_truth(shared_sample.root)
    ids = list(shared_sample.image_ids)
    y = np.array([truth[i] == "positive control" for i in ids])
    mean_gfp, texture = [], []
    for i in ids:
        gfp = _blur(shared_sample.read_image(i).pixels[1].astype(np.float64) - 100, 1.0)
        mean_gfp.append(gfp.mean())
        cell = gfp > 0.3 * np.percentile(gfp, 99)
        texture.append(np.percentile(gfp[cell], 99) / np.median(gfp[cell]))  # spots vs. diffuse

    def best_threshold_accuracy(x):
        x = np.asarray(x)
        return max(max(np.mean((x > t) == y), np.mean((x <= t) == y)) for t in np.unique(x))

    assert best_threshold_accuracy(mean_gfp) < 0.75
    assert best_threshold_accuracy(texture) > 0.85
