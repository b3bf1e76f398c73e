"""Saliency maps: Grad-CAM looks where the class is decided, maps come at the image's size, the explain command."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("captum")

H, W = 48, 40  # the images; the model sees 32 x 32
N_IMAGES, N_LABELLED = 104, 72


def quadrant_image(rng: np.random.Generator, spot: bool) -> np.ndarray:
    """Noise, a bright bar outside the top-left quadrant (both classes) and, for 'spot', a blob inside it."""
    yy, xx = np.mgrid[:H, :W]
    img = rng.normal(40, 12, (H, W))
    where = rng.integers(3)  # bottom-left, top-right or bottom-right
    y0 = rng.integers(2, H // 2 - 4) if where == 1 else rng.integers(H // 2 + 2, H - 4)
    x0 = rng.integers(2, W - 14) if where == 0 else rng.integers(W // 2 + 1, W - 13)
    img[y0:y0 + 2, x0:x0 + 12] += 100
    if spot:
        cy, cx = rng.uniform(7, H / 2 - 7), rng.uniform(6, W / 2 - 6)
        img += 170 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5 ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def quadrant(tmp_path_factory):
    """``(project, model folder, {id: class}, held-out ids)``: only a blob in the top-left quadrant makes 'spot'."""
    import tifffile

    from napari_cellclass.core.project import Project
    from napari_cellclass.learn import TrainConfig, train

    root = tmp_path_factory.mktemp("saliency") / "quadrant"
    root.mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    for i in range(N_IMAGES):
        iid = f"img{i:03d}.tif"
        truth[iid] = "spot" if i % 2 == 0 else "none"
        tifffile.imwrite(root / iid, quadrant_image(rng, truth[iid] == "spot"))
    project = Project.open(root, fsync=False)
    project.add_classes(["spot", "none"])
    ids = list(truth)
    for iid in ids[:N_LABELLED]:
        project.assign(iid, truth[iid])
    result = train(project, TrainConfig(backbone="test_resnet", input_size=32, batch_size=16, epochs=8, lr=3e-3,
                                        device="cpu", seed=0, aug_brightness=0.0, aug_contrast=0.0, schedule="none",
                                        warmup_epochs=0, train_percent=85))
    return project, result.model_dir, truth, ids[N_LABELLED:]


def top_left_share(m: np.ndarray) -> float:
    return float(m[:H // 2, :W // 2].sum() / max(float(m.sum()), 1e-12))


def test_gradcam_looks_at_the_quadrant_that_decides(quadrant):
    from napari_cellclass import explain

    project, model, truth, held_out = quadrant
    maps = explain(model, project, ids=held_out, device="cpu")
    spots = [s for s in maps if truth[s.image_id] == "spot" and s.predicted == "spot"]
    assert len(spots) >= 12  # the model learned the task (16 held-out spot images)
    shares = [top_left_share(s.map) for s in spots]
    assert np.mean(shares) >= 0.6, shares
    assert {s.layer for s in spots} == {"layer2"}  # test_resnet's 4 x 4 stage at 32 px
    # the measure cannot be passed by showing the image: its brightness mostly lies elsewhere
    brightness = [top_left_share(project.read_image(s.image_id).pixels[0].astype(float)) for s in spots]
    assert np.mean(brightness) < 0.4
    # integrated gradients also light up the noise everywhere: its strongest 5 % of pixels lie in the quadrant
    ig = explain(model, project, ids=[s.image_id for s in spots], method="integrated-gradients", device="cpu")
    assert np.mean([top_left_share(s.map >= np.quantile(s.map, 0.95)) for s in ig]) >= 0.6  # uniform: 0.25


def test_maps_come_at_the_image_size_with_the_predicted_class(quadrant):
    from napari_cellclass import explain, predict

    project, model, _truth, held_out = quadrant
    ids = held_out[:3]
    probs = predict(model, project, ids=ids, write=False, device="cpu")
    for method in ("gradcam", "integrated-gradients"):
        maps = explain(model, project, ids=ids, method=method, device="cpu")
        assert [s.image_id for s in maps] == ids
        for k, s in enumerate(maps):
            assert s.map.shape == (H, W) and s.map.dtype == np.float32
            assert np.isfinite(s.map).all() and s.map.min() >= 0.0 and s.map.max() <= 1.0
            assert s.map.max() > 0.5  # scaled to its peak, not left tiny
            assert s.explained == s.predicted == probs.top_class[k]
            assert s.probability == pytest.approx(float(probs.confidence[k]), abs=1e-4)


def test_chosen_class_multi_label_and_bad_input(quadrant):
    from napari_cellclass.core.errors import ConfigError, ProjectError
    from napari_cellclass.learn import TrainedModel, explain, load_model

    project, model, _truth, held_out = quadrant
    maps = explain(model, project, ids=held_out[:2], class_name="none", device="cpu")
    assert [s.explained for s in maps] == ["none", "none"]
    trained = load_model(model)
    multi = TrainedModel(trained.model, trained.path, {**trained.config, "multi_label": True})
    m = explain(multi, project, ids=[maps[0].image_id], class_name="spot", device="cpu")[0]
    logit = trained.model(torch_input(project, maps[0].image_id, trained)).detach()[0, 0]
    assert m.explained == "spot" and m.probability == pytest.approx(float(logit.sigmoid()), abs=1e-4)
    with pytest.raises(ConfigError) as bad:
        explain(model, project, ids=held_out[:1], class_name="mitotic", device="cpu")
    assert "'mitotic'" in str(bad.value) and "spot, none" in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(ConfigError, match="--method"):
        explain(model, project, ids=held_out[:1], method="lime", device="cpu")
    with pytest.raises(ProjectError, match="nope.tif"):
        explain(model, project, ids=["nope.tif"], device="cpu")


def torch_input(project, image_id, trained):
    """The model's input for one image, prepared as for prediction."""
    import torch

    from napari_cellclass.learn.data.pixels import prepare_pixels

    row = prepare_pixels(project.read_image(image_id).pixels, trained.input_size, trained.normalisation.scaling)
    mean, std = trained.normalisation.tensors(torch.device("cpu"))
    return (torch.from_numpy(row[None]).float() - mean) / std


def test_target_layer_of_each_backbone_kind():
    import torch

    from napari_cellclass.core.errors import ModelError
    from napari_cellclass.learn.models import build_model
    from napari_cellclass.learn.saliency import find_target_layer, integrated_gradient_maps

    alexnet, _ = build_model("alexnet", 2)
    assert find_target_layer(alexnet, 224, 3)[0] == "features.10"  # the last convolution (13 x 13)
    assert find_target_layer(alexnet, 64, 3)[0] == "features.3"  # the deepest one still 4 x 4 or more
    resnet, _ = build_model("test_resnet", 2, in_chans=1)
    assert find_target_layer(resnet, 128, 1)[0] == "layer4"  # the last stage when it is big enough
    vit, _ = build_model("test_vit", 2)
    vit.eval()
    size = vit.backbone.pretrained_cfg["input_size"][-1]
    with pytest.raises(ModelError, match="integrated-gradients") as err:
        find_target_layer(vit, size, 3)
    assert "\n" not in str(err.value)
    m = integrated_gradient_maps(vit, torch.rand(1, 3, size, size), torch.tensor([1]), torch.zeros(1, 3, 1, 1))
    assert m.shape == (1, 1, size, size) and torch.isfinite(m).all()


def test_file_names_stay_in_the_output_folder():
    from napari_cellclass.learn.saliency_files import file_stem

    assert file_stem("a/b.tif", "gradcam", "mitotic") == "a__b_gradcam_mitotic"
    assert file_stem("../../etc/x y.png", "gradcam", "a/b") == "etc__x_y_gradcam_a_b"
    assert "/" not in file_stem("/abs/../c.tif", "integrated-gradients", "..")


def test_explain_command_writes_tiffs_and_overlays(quadrant, tmp_path, capsys):
    import tifffile
    from PIL import Image

    from napari_cellclass.cli import main

    project, model, _truth, held_out = quadrant
    out = tmp_path / "maps"
    ids = held_out[:2]
    args = ["explain", str(project.root), "--model", str(model), "--ids", *ids, "--out", str(out), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["n"] == 2 and result["method"] == "gradcam" and result["skipped"] == []
    assert [i["image_id"] for i in result["images"]] == ids
    assert len(result["files"]) == 4 and all(f.startswith(str(out)) for f in result["files"])
    for item in result["images"]:
        assert item["tiff"].endswith(f"_gradcam_{item['class']}.tif")
        m = tifffile.imread(item["tiff"])
        assert m.dtype == np.float32 and m.shape == (H, W) and m.min() >= 0 and m.max() <= 1
        with Image.open(item["png"]) as png:
            assert png.mode == "RGB" and png.size == (W, H)
    assert main(args) == 0  # a rerun replaces its own files
    capsys.readouterr()
    tifffile.imwrite(result["images"][0]["tiff"], np.zeros((H, W), np.float32))  # a user's image by that name
    assert main(args) == 2 and "existing image" in capsys.readouterr().err
    assert not tifffile.imread(result["images"][0]["tiff"]).any()  # kept

    assert main([*args[:-1], "--class", "mitotic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'mitotic'" in err and "Traceback" not in err
    inside = ["explain", str(project.root), "--model", str(model), "--ids", ids[0], "--out",
              str(project.root / "maps")]
    assert main(inside) == 2
    assert "inside the project" in capsys.readouterr().err
    assert not (project.root / "maps").exists()
