"""The learning floor: models, data pipeline, training (torch + timm; no Qt, no napari)."""
from __future__ import annotations

from .backbones import BackboneInfo, backbones_command_result, list_backbones, resolve_backbone
from .models import (
    CellClassifier,
    backbone_parameters,
    build_model,
    data_config,
    head_parameters,
    set_backbone_trainable,
)
from .pretrained import LoadReport

__all__ = [
    "BackboneInfo", "CellClassifier", "LoadReport", "backbone_parameters",
    "backbones_command_result", "build_model", "data_config", "head_parameters",
    "list_backbones", "resolve_backbone", "set_backbone_trainable",
]
