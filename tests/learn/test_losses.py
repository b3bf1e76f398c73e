"""Losses: reference values, class weights, smoothing, and the name-to-loss mapping."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cellclass.core.errors import ConfigError
from napari_cellclass.learn.losses import balanced_class_weights, build_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_cross_entropy_with_smoothing_and_weights(batch):
    logits, y = batch
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = build_loss("ce", class_weights=w.numpy(), label_smoothing=0.1)(logits, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y, weight=w, label_smoothing=0.1).item())


def test_focal_reduces_to_ce_at_gamma_zero_and_downweights_easy_examples(batch):
    logits, y = batch
    ce = F.cross_entropy(logits, y).item()
    assert build_loss("focal", focal_gamma=0.0)(logits, y).item() == pytest.approx(ce, rel=1e-5)
    focal = build_loss("focal", focal_gamma=2.0)(logits, y).item()
    assert 0 < focal < ce
    # reference: -(1-p_t)^2 log p_t
    p_t = torch.softmax(logits, 1)[torch.arange(16), y]
    assert focal == pytest.approx((-(1 - p_t) ** 2 * torch.log(p_t)).mean().item(), rel=1e-5)


def test_kl_equals_ce_for_hard_targets_and_is_zero_at_the_target(batch):
    logits, y = batch
    assert build_loss("kl")(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    q = torch.tensor([[0.9, 0.05, 0.05]])
    assert build_loss("kl", label_smoothing=0.15)(torch.log(q), torch.tensor([0])).item() == pytest.approx(0, abs=1e-6)


def test_bce_for_multi_label_with_positive_weights():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = build_loss("bce", multi_label=True, class_weights=[1.0, 3.0])(logits, t)
    ref = F.binary_cross_entropy_with_logits(logits, t, pos_weight=torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx(ref.item())


def test_loss_names_checked_against_the_task():
    with pytest.raises(ConfigError, match="multi-label"):
        build_loss("bce", multi_label=False)
    with pytest.raises(ConfigError, match="single-label"):
        build_loss("focal", multi_label=True)


def test_balanced_weights_like_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 1, 1, 2])
    w = balanced_class_weights(y, 3)
    assert w == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=y))
    assert balanced_class_weights(np.array([0, 0, 1]), 3)[2] == 1.0  # absent class
    ml = balanced_class_weights(np.array([[1, 0], [1, 1], [1, 0], [0, 0]]), 2, multi_label=True)
    assert ml == pytest.approx([1 / 3, 3.0])
