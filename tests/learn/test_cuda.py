"""The GPU path on a CUDA device: bf16 autocast and channels-last training, GPU against CPU
prediction, and the out-of-memory message. Marked ``cuda`` (``pytest -m cuda``); skipped without CUDA.

Runs on a bare CUDA machine (``benchmarks/gpu_check.sh``): torch, timm, tifffile, safetensors
and this package only, no napari and no pytest plugins.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from napari_cellclass.core.errors import DeviceMemoryError
from napari_cellclass.core.sample import make_sample_project
from napari_cellclass.learn import load_model, predict, train
from napari_cellclass.learn.engine import Trainer
from napari_cellclass.learn.steps import train_step

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _drain(gen):
    for _ in gen:
        pass


def _weights(model):
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def test_bf16_channels_last_training_steps(tiny_sample, fast_config, tmp_path):
    cfg = fast_config(device="cuda", precision="bf16", backbone="resnet18", input_size=64, batch_size=8, lr=1e-3)
    tr = Trainer(tiny_sample, cfg, tmp_path / "m")
    _drain(tr.setup())
    assert tr.device.type == "cuda" and tr.precision == "bf16" and tr.channels_last
    conv = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = _weights(tr.model)
    seen = []
    hook = conv.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
    losses = [float(tr.train_one_epoch(e)["loss"]) for e in (1, 2, 3)]
    hook.remove()
    assert all(np.isfinite(losses)), losses
    assert seen and all(out == torch.bfloat16 for _, out in seen), seen[:3]  # autocast ran the convolutions in bf16
    after = _weights(tr.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    assert all(torch.isfinite(v).all() for v in after.values())
    val = tr.validate("val")
    assert np.isfinite(val["loss"]) and 0 <= val["accuracy"] <= 1


def test_gpu_and_cpu_predictions_agree(tiny_sample, fast_config, tmp_path):
    res = train(tiny_sample, fast_config(epochs=3, input_size=64, device="cpu"), tmp_path / "m")
    cpu = predict(res.model_dir, tiny_sample, all_images=True, write=False, device="cpu")
    gpu = predict(res.model_dir, tiny_sample, all_images=True, write=False, device="cuda")
    assert gpu.ids == cpu.ids and len(cpu.ids) == len(tiny_sample.image_ids)
    # the model was trained in fp32; on CUDA prediction runs in bf16 autocast (8 bits of mantissa)
    diff = np.abs(gpu.probabilities - cpu.probabilities)
    assert diff.max() < 0.05, float(diff.max())
    confident = np.sort(cpu.probabilities, axis=1)[:, -1] - np.sort(cpu.probabilities, axis=1)[:, -2] > 0.1
    assert confident.any()
    assert np.array_equal(gpu.top_index[confident], cpu.top_index[confident])
    trained = load_model(res.model_dir)
    assert trained.config["precision"] == "fp32"


def _step_bytes(tr, batch):
    """Peak bytes allocated by one training step at ``batch`` images."""
    shape = (batch, tr.in_chans, tr.input_size, tr.input_size)
    x = torch.rand(shape, device="cuda")
    y = tr.targets_dev["train"][torch.arange(batch, device="cuda") % len(tr.ids["train"])]
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device="cuda")
    train_step(tr.built, tr.model, tr.cfg, x, y, gen, schedule=False)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), x, y, gen


def test_out_of_memory_names_a_batch_size_that_fits(tmp_path):
    from napari_cellclass.learn.config import TrainConfig

    project = make_sample_project(tmp_path / "p", n=120, seed=4, labelled_fraction=1.0, size=64)
    cfg = TrainConfig(backbone="resnet18", input_size=192, batch_size=64, epochs=1, device="cuda",
                      precision="bf16", seed=0, bn_recalibrate=0)
    tr = Trainer(project, cfg, tmp_path / "m")
    _drain(tr.setup())
    assert len(tr.ids["train"]) >= 64
    small, *_ = _step_bytes(tr, 4)
    big, *_ = _step_bytes(tr, 12)
    per_image = (big - small) / 8
    assert per_image > 0
    base = small - 4 * per_image
    # room for about 20 images: 64 and 32 cannot fit, 16 can
    limit = base + 20 * per_image
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(limit / total)
    try:
        with pytest.raises(DeviceMemoryError) as info:
            tr.train_one_epoch(1)
        message = str(info.value)
        assert "\n" not in message and "batch size 64" in message, message
        found = re.search(r"--batch-size (\d+)", message)
        assert found, message
        fits = int(found.group(1))
        # halving from 64: 32 needs more than the limit, 16 fits with room for 4 images; 8 allows for
        # allocator rounding. A probe that still held the failed step's tensors would find far less.
        assert fits in (8, 16), message
        # the batch size it names does fit: a whole training step under the same limit
        torch.cuda.empty_cache()
        _step_bytes(tr, fits)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
