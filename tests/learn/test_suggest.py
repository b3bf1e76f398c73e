"""Suggestions: the ranking functions on arrays, the cached features, and `suggest` from the CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_cellclass.cli import main
from napari_cellclass.learn.suggest import rank_typical, rank_uncertain, uncertainty


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from napari_cellclass.core.sample import make_sample_project

    return make_sample_project(tmp_path_factory.mktemp("suggest") / "p", n=40, seed=3, size=64)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_uncertainty_scores():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    assert uncertainty(p, "margin") == pytest.approx([1.0, 0.0, 0.7])
    ent = uncertainty(p, "entropy")
    assert ent[1] == pytest.approx(0, abs=1e-6) and ent[0] == pytest.approx(np.log(2) / np.log(3))
    multi = uncertainty(np.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.0]]), "margin", multi_label=True)
    assert multi == pytest.approx([1.0, 0.0, 0.25])


def test_uncertain_picks_are_diverse():
    """The 10 most uncertain images lie in one group: a batch of 2 takes one from each group."""
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 0.05, (50, 8)) + 5, rng.normal(0, 0.05, (50, 8)) - 5])
    feats[:, 1] += np.r_[np.zeros(50), np.ones(50)] * 10  # distinct directions after L2 normalisation
    scores = np.r_[np.linspace(0.95, 1.0, 10), np.full(40, 0.1), np.linspace(0.94, 0.5, 50)]
    picks = rank_uncertain(scores, feats, 2)
    assert len(picks) == 2 and {int(p >= 50) for p in picks} == {0, 1}
    assert list(picks) == [9, 50]  # each group's most uncertain, most uncertain first
    assert list(rank_uncertain(scores, None, 3)) == [9, 8, 7]


def test_typical_picks_cover_unlabelled_groups_biggest_first():
    rng = np.random.default_rng(1)
    centres = np.eye(6)[:3] * 10
    sizes = (60, 30, 10)
    feats = np.concatenate([c + rng.normal(0, 0.3, (s, 6)) for c, s in zip(centres, sizes, strict=True)])
    group = np.repeat([0, 1, 2], sizes)
    labelled = np.zeros(len(feats), bool)
    rows, got_sizes, covered = rank_typical(feats, labelled, 3)
    assert list(group[rows]) == [0, 1, 2] and list(got_sizes) == [60, 30, 10] and not covered.any()
    # the pick of a group is near its centre (typical), not an outlier (features are compared by direction)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for r in rows:
        members = unit[group == group[r]]
        dist = np.linalg.norm(members - members.mean(0), axis=1)
        assert np.linalg.norm(unit[r] - members.mean(0)) <= np.quantile(dist, 0.5)
    labelled[group == 0] = True  # the big group is labelled: the others come first
    rows, _, covered = rank_typical(feats, labelled, 2)
    assert set(group[rows]) == {1, 2} and not covered.any()


def test_suggest_cli_json(project, capsys):
    code, out, err = _run(capsys, "suggest", str(project.root), "--n", "5", "--json", "--device", "cpu")
    assert code == 0, err
    res = json.loads(out)
    items = res["suggestions"]
    assert res["strategy"] == "typical" and len(items) == 5  # no model yet: cold start
    assert set(items[0]) == {"image_id", "score", "reason"}
    ids = [s["image_id"] for s in items]
    assert len(set(ids)) == 5 and set(ids) <= set(project.unlabelled_ids())
    scores = [s["score"] for s in items]
    assert scores == sorted(scores, reverse=True)
    code, again, _ = _run(capsys, "suggest", str(project.root), "--n", "5", "--json", "--device", "cpu")
    assert json.loads(again)["suggestions"] == items  # same seed, same picks (features from the cache)
    code, out, _ = _run(capsys, "suggest", str(project.root), "--n", "500", "--strategy", "random", "--json")
    assert len(json.loads(out)["suggestions"]) == len(project.unlabelled_ids())


def test_margin_without_a_model_is_one_line(project, capsys):
    code, out, err = _run(capsys, "suggest", str(project.root), "--strategy", "margin")
    assert code == 2 and "needs a model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "suggest", str(project.root), "--n", "0")
    assert code == 2 and "--n" in err


def test_features_are_cached_and_follow_changed_images(project, monkeypatch):
    from napari_cellclass.learn import embeddings

    ids = project.image_ids[:6]
    first = embeddings.embed(project, ids, embeddings.Embedder.imagenet(), device="cpu")
    calls = []
    real = embeddings._compute

    def counting(project_, todo, *args, **kw):
        calls.append(list(todo))
        return real(project_, todo, *args, **kw)

    monkeypatch.setattr(embeddings, "_compute", counting)
    again = embeddings.embed(project, ids, embeddings.Embedder.imagenet(), device="cpu")
    assert calls == [] and np.allclose(again.features, first.features, atol=1e-2)
    path = project.path(ids[2])
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    embeddings.embed(project, ids, embeddings.Embedder.imagenet(), device="cpu")
    assert calls == [[ids[2]]]


def test_margin_with_a_model_names_the_top_classes(project, fast_config, tmp_path):
    from napari_cellclass.learn import train
    from napari_cellclass.learn.suggest import suggest

    model = train(project, fast_config(epochs=1), tmp_path / "m").model_dir
    res = suggest(project, model=model, n=4, strategy="auto", device="cpu")
    assert res.strategy == "margin"  # a model and 3+ labels per class
    assert len(res.suggestions) == 4 and all(" vs " in s.reason for s in res.suggestions)
    ent = suggest(project, model=model, n=4, strategy="entropy", device="cpu")
    assert all(0 <= s.score <= 1 for s in ent.suggestions)


def test_a_plain_folder_gets_suggestions_and_no_cache_folder(tmp_path):
    from PIL import Image

    from napari_cellclass.learn.suggest import suggest

    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"cell{k}.png")
    res = suggest(tmp_path, n=2, device="cpu")
    assert len(res.ids) == 2 and set(res.ids) <= {f"cell{k}.png" for k in range(4)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"cell{k}.png" for k in range(4)]  # nothing written
