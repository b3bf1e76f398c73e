"""The label check: out-of-fold probabilities, cleanlab's ranking, and `check-labels` from the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellclass.cli import main
from napari_cellclass.learn.label_check import out_of_fold_probabilities, rank_issues


def test_flipped_labels_rank_first_on_separable_features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    centres = rng.normal(0, 1, (3, 32))
    feats = centres[y] + rng.normal(0, 0.3, (120, 32))
    noisy = y.copy()
    flipped = rng.choice(120, 12, replace=False)
    noisy[flipped] = (noisy[flipped] + 1) % 3
    probs = out_of_fold_probabilities(feats, noisy, 3, folds=5)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(1), 1)
    flagged, scores = rank_issues(noisy, probs)
    assert set(flagged[:12]) == set(flipped)  # every flipped label, and first
    assert list(scores[flagged]) == sorted(scores[flagged], reverse=True)


def test_check_labels_cli_finds_flipped_labels(tmp_path, capsys):
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "p", n=60, seed=4, labelled_fraction=1.0)
    ids = p.labelled_ids()
    flipped = ids[3], ids[17], ids[40]
    for i in flipped:
        p.set_labels(i, [c for c in p.class_names if c != p.label(i)][:1])
    code = main(["check-labels", str(p.root), "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    issues = res["issues"]
    assert res["checked"] == 60 and set(issues[0]) == {"image_id", "given", "suggested", "score"}
    found = {i["image_id"]: i for i in issues}
    assert set(flipped) <= set(found)
    for i in flipped:
        assert found[i]["given"] == p.label(i) and found[i]["suggested"] != p.label(i)
    scores = [i["score"] for i in issues]
    assert scores == sorted(scores, reverse=True)


def test_check_labels_refuses_too_few_labels_in_one_line(tmp_path, capsys):
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "p", n=12, seed=1, size=64, labelled_fraction=0.0)
    p.set_labels(p.image_ids[0], [p.class_names[0]])
    p.set_labels(p.image_ids[1], [p.class_names[1]])
    p.set_labels(p.image_ids[2], [p.class_names[1]])
    code = main(["check-labels", str(p.root)])
    err = capsys.readouterr().err
    assert code == 2 and "one labelled image" in err and len(err.strip().splitlines()) == 1
    assert main(["check-labels", str(p.root), "--folds", "1"]) == 2
    assert "--folds" in capsys.readouterr().err


@pytest.mark.parametrize("multi", [True])
def test_multi_label_check(multi):
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, (90, 3))
    feats = targets * 3 + rng.normal(0, 0.4, (90, 3))
    noisy = targets.copy()
    noisy[5] = 1 - noisy[5]
    probs = out_of_fold_probabilities(feats, noisy, 3, folds=3, multi_label=multi)
    flagged, _ = rank_issues([list(np.flatnonzero(r)) for r in noisy], probs, multi_label=multi)
    assert 5 in flagged[:3]


def test_a_class_nobody_labelled_takes_no_part(tmp_path, capsys):
    from napari_cellclass.core.sample import make_sample_project

    p = make_sample_project(tmp_path / "p", n=30, seed=2, size=64, labelled_fraction=1.0)
    p.add_class("empty")
    assert main(["check-labels", str(p.root), "--json", "--device", "cpu", "--folds", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checked"] == 30 and all(i["suggested"] != "empty" for i in res["issues"])
