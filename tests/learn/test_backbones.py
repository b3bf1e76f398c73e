"""The backbone registry: MIA names, timm pass-through, listing, command result."""
from __future__ import annotations

import json
import time

import pytest
import timm

from napari_cellclass.core.errors import CellclassError, ModelError
from napari_cellclass.learn.backbones import (
    EXTRA_BACKBONES,
    MIA_BACKBONES,
    backbones_command_result,
    backbones_human,
    list_backbones,
    parameter_count,
    resolve_backbone,
)

MIA_NAMES = [
    "densenet121", "densenet169", "densenet201", "efficientnetb0", "efficientnetb1", "efficientnetb2",
    "efficientnetb3", "efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7", "inceptionv3",
    "inceptionresnetv2", "mobilenet", "mobilenetv2", "nasnetlarge", "nasnetmobile", "resnet18", "resnet34",
    "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2", "resnext50", "resnext101",
    "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152", "seresnext50", "seresnext101",
    "senet154", "vgg16", "vgg19", "xception",
]
INEXACT = {"nasnetmobile", "resnet50v2", "resnet101v2", "resnet152v2"}


def test_registry_covers_every_mia_backbone_in_order():
    assert list(MIA_BACKBONES) == MIA_NAMES


@pytest.mark.parametrize("name", MIA_NAMES)
def test_every_mia_alias_resolves_to_a_timm_model(name):
    info = resolve_backbone(name)
    assert info.name == name
    assert info.source == "timm"
    assert timm.is_model(info.timm_name), info.timm_name
    assert info.exact == (name not in INEXACT)
    if not info.exact:
        assert info.note, f"{name} is inexact but says nothing about it"
    assert info.family


def test_default_input_sizes_follow_the_pretrained_weights():
    sizes = {n: resolve_backbone(n).default_input_size for n in
             ("resnet50", "inceptionv3", "inceptionresnetv2", "xception", "nasnetlarge",
              "efficientnetb0", "efficientnetb3", "efficientnetb7", "alexnet")}
    assert sizes == {"resnet50": 224, "inceptionv3": 299, "inceptionresnetv2": 299,
                     "xception": 299, "nasnetlarge": 331, "efficientnetb0": 224,
                     "efficientnetb3": 300, "efficientnetb7": 600, "alexnet": 224}


def test_names_are_case_insensitive_and_timm_names_pass_through():
    assert resolve_backbone("  ResNet50 ").timm_name == "resnet50"
    assert resolve_backbone("EfficientNetB0").timm_name == "tf_efficientnet_b0"
    info = resolve_backbone("mobilenetv3_small_100")
    assert (info.timm_name, info.source, info.exact) == ("mobilenetv3_small_100", "timm", True)
    assert info.family == "mobilenetv3"
    assert resolve_backbone("resnet18.a1_in1k").timm_name == "resnet18.a1_in1k"


def test_alexnet_comes_from_torchvision():
    info = resolve_backbone("AlexNet")
    assert (info.source, info.timm_name, info.exact) == ("torchvision", "alexnet", True)


def test_missing_imagenet_weights_are_flagged():
    assert resolve_backbone("resnet152v2").imagenet is False
    assert resolve_backbone("resnet50v2").imagenet is True
    assert all(resolve_backbone(n).imagenet for n in MIA_NAMES if n != "resnet152v2")


@pytest.mark.parametrize("bad, hint", [("resnet5O", "resnet50"), ("densnet121", "densenet121"),
                                       ("efficientnet-b0", "efficientnetb0")])
def test_unknown_name_is_one_line_error_with_suggestions(bad, hint):
    with pytest.raises(ModelError) as err:
        resolve_backbone(bad)
    msg = str(err.value)
    assert isinstance(err.value, CellclassError)
    assert "\n" not in msg and "unknown backbone" in msg and hint in msg


def test_empty_name_is_refused():
    with pytest.raises(ModelError):
        resolve_backbone("  ")


def test_listing_puts_mia_first_and_marks_inexact_ones():
    rows = list_backbones(params=False)
    names = [r["name"] for r in rows]
    assert names[: len(MIA_NAMES)] == MIA_NAMES
    assert names[len(MIA_NAMES):] == list(EXTRA_BACKBONES)
    assert {r["name"] for r in rows if not r["exact"]} == INEXACT
    assert all(r["mia"] == (r["name"] in MIA_NAMES) for r in rows)
    assert "params_m" not in rows[0]


def test_parameter_counts_are_right_and_cheap():
    start = time.perf_counter()
    rows = list_backbones(params=True)
    first = time.perf_counter() - start
    counts = {r["name"]: r["params_m"] for r in rows}
    # published sizes with a 1000-way classifier
    assert counts["resnet50"] == pytest.approx(25.56, abs=0.05)
    assert counts["vgg16"] == pytest.approx(138.36, abs=0.05)
    assert counts["alexnet"] == pytest.approx(61.10, abs=0.05)
    assert counts["efficientnetb0"] == pytest.approx(5.29, abs=0.05)
    assert counts["mobilenetv2"] == pytest.approx(3.50, abs=0.05)
    assert counts["nasnetlarge"] == pytest.approx(88.75, abs=0.1)
    assert first < 60  # ~10 s on 2 busy CPU cores; built on the meta device
    start = time.perf_counter()
    list_backbones(params=True)
    assert time.perf_counter() - start < 1.0  # cached
    assert parameter_count("ResNet50") == counts["resnet50"]


def test_command_result_is_json_and_human_table_lists_all():
    result = backbones_command_result()
    again = json.loads(json.dumps(result))
    assert again["ok"] is True
    assert [b["name"] for b in again["backbones"]][:3] == MIA_NAMES[:3]
    text = backbones_human(result)
    for name in MIA_NAMES + ["alexnet"]:
        assert name in text
    assert "no ImageNet weights" in text
