"""Stratified random splits: proportions, determinism, every class represented."""
from __future__ import annotations

import pytest

from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.splits import stratified_split


def _data():
    ids = [f"img{i:03d}" for i in range(100)]
    labels = [("a",) if i < 70 else ("b",) if i < 95 else ("rare",) for i in range(100)]
    return ids, labels


def test_stratified_proportions_and_coverage():
    ids, labels = _data()
    s = stratified_split(ids, labels, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert len(s.train) + len(s.val) + len(s.test) == 100
    assert not set(s.train) & set(s.val) and not set(s.val) & set(s.test)
    lab = dict(zip(ids, labels, strict=True))
    assert sum(lab[i] == ("a",) for i in s.val) == 14
    assert sum(lab[i] == ("b",) for i in s.val) == 5
    for part in (s.train, s.val, s.test):  # the rare class (5 images) is in every subset
        assert any(lab[i] == ("rare",) for i in part)


def test_same_seed_same_split_other_seed_other_split():
    ids, labels = _data()
    a = stratified_split(ids, labels, seed=7)
    assert a == stratified_split(list(reversed(ids)), list(reversed(labels)), seed=7) or \
        set(a.val) == set(stratified_split(list(reversed(ids)), list(reversed(labels)), seed=7).val)
    assert a == stratified_split(ids, labels, seed=7)
    assert a.val != stratified_split(ids, labels, seed=8).val


def test_tiny_classes_keep_a_training_image():
    s = stratified_split(["x", "y", "z"], [("a",), ("b",), ("b",)], val_fraction=0.5, seed=0)
    assert "x" in s.train
    assert len([i for i in s.val if i in ("y", "z")]) == 1


def test_bad_fractions():
    with pytest.raises(ProjectError, match="fractions"):
        stratified_split(["a"], [("x",)], val_fraction=0.6, test_fraction=0.5)
