"""Building models: every backbone trains a step, heads, freezing, channels, data config."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_cellclass.core.errors import ModelError, WeightsError
from napari_cellclass.learn.backbones import EXTRA_BACKBONES, MIA_BACKBONES
from napari_cellclass.learn.models import (
    CellClassifier,
    backbone_parameters,
    build_model,
    data_config,
    head_parameters,
    set_backbone_trainable,
)

# smallest input each net accepts (inception stems need 75 px, AlexNet 63 px)
MIN_SIZE = {"inceptionv3": 75, "inceptionresnetv2": 75, "alexnet": 64}
# more than ~3 s for build + one step at the small size on 2 CPU cores
SLOW = {"efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7", "inceptionv3",
        "inceptionresnetv2", "nasnetlarge", "senet154", "seresnet152", "densenet201",
        "vgg16", "vgg19", "convnext_tiny"}


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in MIA_BACKBONES + EXTRA_BACKBONES])
def test_every_backbone_builds_and_trains_one_step(name):
    torch.manual_seed(0)
    model, report = build_model(name, num_classes=3)
    assert isinstance(model, CellClassifier)
    assert (report.mapped_by, report.loaded) == ("none", 0)
    size = MIN_SIZE.get(name, 32)
    x = torch.randn(2, 3, size, size)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    stem = next(p for p in model.backbone.parameters() if p.ndim == 4)
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert model.head.fc.weight.grad.abs().sum() > 0


def test_pool_head_is_pooling_dropout_linear_only():
    alex, _ = build_model("alexnet", 4)
    assert alex.num_features == 256
    assert not any(isinstance(m, nn.Linear) for m in alex.backbone.modules())
    model, _ = build_model("vgg16", 4, dropout=0.3)
    # MIA: no fully connected layers, even for VGG: the head sees the pooled conv5 features
    assert model.num_features == 512
    assert not any(isinstance(m, (nn.Linear,)) for m in model.backbone.modules())
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.3
    assert model.head.fc.in_features == 512 and model.head.fc.out_features == 4


@pytest.mark.parametrize("name", ["alexnet", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_classic_head_keeps_fc6_fc7_and_replaces_the_last_layer(name):
    model, _ = build_model(name, num_classes=6, head="classic")
    assert model.num_features == 4096
    assert model.head.fc.out_features == 6 and model.head.fc.in_features == 4096
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 6)


def test_classic_head_is_refused_for_other_backbones():
    with pytest.raises(ModelError, match="classic"):
        build_model("resnet18", 3, head="classic")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_classes": 0}, "num_classes"), ({"num_classes": 2.5}, "num_classes"),
    ({"in_chans": 0}, "in_chans"), ({"head": "mlp"}, "head"), ({"dropout": 1.0}, "dropout"),
    ({"pretrained": 3}, "pretrained"), ({"keep_classifier": True}, "keep_classifier"),
])
def test_bad_settings_are_one_line_errors(kwargs, fragment):
    args = {"backbone": "resnet18", "num_classes": 3} | kwargs
    with pytest.raises(ModelError) as err:
        build_model(**args)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("in_chans", [1, 2, 4, 5])
def test_any_channel_count_runs(in_chans):
    model, _ = build_model("resnet18", 2, in_chans=in_chans)
    assert model.backbone.conv1.weight.shape[1] == in_chans
    assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 2)
    alex, _ = build_model("alexnet", 2, in_chans=in_chans)
    assert alex(torch.randn(1, in_chans, 64, 64)).shape == (1, 2)


def test_parameter_groups_partition_the_model():
    model, _ = build_model("resnet18", 3)
    back, head = backbone_parameters(model), head_parameters(model)
    ids = {id(p) for p in back} | {id(p) for p in head}
    assert len(ids) == len(back) + len(head) == len(list(model.parameters()))
    assert [p.shape for p in head] == [torch.Size([3, 512]), torch.Size([3])]


def test_frozen_backbone_gets_no_gradient_and_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 3)
    set_backbone_trainable(model, False)
    model.train()
    assert model.training and model.head.training
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = bns[0].running_mean.clone()
    loss = model(torch.randn(4, 3, 32, 32) * 3 + 1).sum()
    loss.backward()
    assert torch.equal(bns[0].running_mean, before)
    assert all(p.grad is None for p in backbone_parameters(model))
    assert all(p.grad is not None for p in head_parameters(model))
    set_backbone_trainable(model, True)
    model.train()
    assert all(bn.training for bn in bns)
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    assert not model.head.training


def test_build_kwargs_rebuild_the_same_architecture():
    model, _ = build_model("EfficientNetB0", 5, in_chans=2, dropout=0.1)
    kwargs = model.build_kwargs
    assert kwargs == {"backbone": "efficientnetb0", "num_classes": 5, "in_chans": 2,
                      "head": "pool", "dropout": 0.1}
    again, _ = build_model(**kwargs)
    again.load_state_dict(model.state_dict(), strict=True)
    model.eval(), again.eval()
    x = torch.randn(1, 2, 32, 32)
    assert torch.allclose(model(x), again(x))


def test_imagenet_download_failure_names_the_fix(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # as here: no network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        build_model("resnet18", 3, pretrained="imagenet")
    except WeightsError as exc:
        msg = str(exc)
        assert "\n" not in msg and "pretrained='/path/to/" in msg and "resnet18" in msg
    else:  # weights already in the local cache of this computer: a real load
        pass


def test_imagenet_is_refused_where_timm_has_no_weights():
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_model("resnet152v2", 3, pretrained="imagenet")


def test_data_config_per_backbone():
    assert data_config("efficientnet_lite0", True, 3) == {
        "input_size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic", "crop_pct": 0.875}
    inc = data_config("inceptionv3", True, 3)
    assert inc["input_size"] == 299 and inc["mean"] == (0.5, 0.5, 0.5)
    assert data_config("xception", True, 3)["input_size"] == 299
    assert data_config("nasnetlarge", True, 3)["input_size"] == 331
    assert data_config("alexnet", True, 3)["mean"] == (0.485, 0.456, 0.406)
    for args in (("resnet50", False, 3), ("resnet50", True, 1), ("resnet50", True, 4)):
        cfg = data_config(*args)
        assert cfg["mean"] is None and cfg["std"] is None  # use the dataset's statistics
