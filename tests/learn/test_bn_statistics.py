"""Batch-norm statistics for evaluation: averaged over the second half of each epoch's training
batches (default), a precise-BN pass after the epoch, or PyTorch's running average."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellclass.learn.engine import Trainer
from napari_cellclass.learn.steps import trainable_batch_norms


def _setup(project, cfg, out):
    tr = Trainer(project, cfg, out)
    list(tr.setup())
    return tr


def test_epoch_statistics_are_the_average_of_the_second_half_of_the_batches(tiny_sample, fast_config, tmp_path):
    tr = _setup(tiny_sample, fast_config(batch_size=4, bn_statistics="epoch"), tmp_path / "m")
    bn = trainable_batch_norms(tr.model)[0]
    momentum = bn.momentum
    seen = []

    def record(mod, inp, out):
        x = inp[0].detach().double()
        if mod.training:
            seen.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)))

    hook = bn.register_forward_hook(record)
    tr.train_one_epoch(1)
    hook.remove()
    n = len(seen)
    assert n >= 3
    half = seen[n // 2:]
    assert bn.momentum == momentum and int(bn.num_batches_tracked) == len(half)
    mean = torch.stack([m for m, _ in half]).mean(0)
    var = torch.stack([v for _, v in half]).mean(0)
    assert torch.allclose(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bn.running_var.double(), var, rtol=1e-4, atol=1e-5)


def test_running_statistics_keep_pytorchs_average(tiny_sample, fast_config, tmp_path):
    tr = _setup(tiny_sample, fast_config(batch_size=4, bn_statistics="running"), tmp_path / "m")
    bn = trainable_batch_norms(tr.model)[0]
    steps = tr.steps_per_epoch
    tr.train_one_epoch(1)
    assert int(bn.num_batches_tracked) == steps  # never reset
    before = bn.running_mean.clone()
    tr.recalibrate_batch_norm(1)
    assert torch.equal(before, bn.running_mean)


@pytest.mark.parametrize("mode", ["epoch", "pass"])
def test_only_the_pass_mode_runs_the_extra_forward_pass(tiny_sample, fast_config, tmp_path, mode):
    tr = _setup(tiny_sample, fast_config(bn_statistics=mode, batch_size=4), tmp_path / "m")
    assert tr.steps_per_epoch >= 4
    tr.train_one_epoch(1)
    calls = []
    hook = tr.model.register_forward_hook(lambda *a: calls.append(1))
    tr.recalibrate_batch_norm(1)
    hook.remove()
    assert bool(calls) == (mode == "pass")


def test_a_cancelled_epoch_restores_the_momentum(tiny_sample, fast_config, tmp_path):
    from napari_cellclass.learn import steps

    tr = _setup(tiny_sample, fast_config(batch_size=4), tmp_path / "m")
    bns = trainable_batch_norms(tr.model)
    momenta = [m.momentum for m in bns]
    gen = tr.train_epoch_events(1)
    with pytest.raises(steps.Cancelled):
        for i, _ev in enumerate(gen):
            if i == tr.steps_per_epoch - 2:  # past the middle: statistics reset, momentum None
                assert all(m.momentum is None for m in bns)
                tr.cancel.cancel()
    assert [m.momentum for m in bns] == momenta
    assert all(np.isfinite(m.running_mean.numpy()).all() for m in bns)


def test_an_epoch_of_fewer_than_4_batches_gets_the_pass(tiny_sample, fast_config, tmp_path):
    # averaging one or two batches (e.g. 8 + 3 images) left the last layers' statistics so noisy
    # that the validation loss of a 24-image project blew up to 810
    tr = _setup(tiny_sample, fast_config(batch_size=8), tmp_path / "m")
    assert tr.steps_per_epoch < 4
    bn = trainable_batch_norms(tr.model)[0]
    tr.train_one_epoch(1)
    assert int(bn.num_batches_tracked) == tr.steps_per_epoch  # no averaging: PyTorch's running statistics
    calls = []
    hook = tr.model.register_forward_hook(lambda *a: calls.append(1))
    tr.recalibrate_batch_norm(1)
    hook.remove()
    assert calls and int(bn.num_batches_tracked) == len(calls)
