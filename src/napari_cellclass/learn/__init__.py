"""The learning floor: models, data pipeline, training (torch + timm; no Qt, no napari).

>>> from napari_cellclass.learn import TrainConfig, train, predict, evaluate, load_model
>>> result = train("my_project", TrainConfig(epochs=10))          # doctest: +SKIP
>>> predict(result.model_dir, "my_project").top_class[:3]          # doctest: +SKIP
>>> evaluate(result.model_dir, "my_project")["metrics"]["accuracy"]  # doctest: +SKIP
"""
from __future__ import annotations

from .backbones import BackboneInfo, backbones_command_result, list_backbones, resolve_backbone
from .checkpoint import TrainedModel, load_model
from .config import TrainConfig
from .device import resolve_device
from .engine import Trainer, TrainResult, run_training, train
from .evaluate import evaluate
from .events import (
    BatchProgress,
    CancelToken,
    CheckpointSaved,
    EpochEnd,
    Event,
    Finished,
    Log,
    Started,
    WarningEvent,
)
from .export import ExportResult, export_model
from .label_check import LabelCheckResult, LabelIssue, check_labels
from .models import (
    CellClassifier,
    backbone_parameters,
    build_model,
    data_config,
    head_parameters,
    set_backbone_trainable,
)
from .predict import PredictionResult, predict
from .pretrained import LoadReport
from .saliency import ExplainResult, Saliency, explain
from .suggest import Suggestion, SuggestResult, suggest

__all__ = [
    "BackboneInfo", "CellClassifier", "LoadReport", "backbone_parameters",
    "backbones_command_result", "build_model", "data_config", "head_parameters",
    "list_backbones", "resolve_backbone", "set_backbone_trainable",
    "TrainConfig", "train", "run_training", "Trainer", "TrainResult", "resolve_device",
    "predict", "PredictionResult", "evaluate", "load_model", "TrainedModel",
    "Event", "Log", "WarningEvent", "Started", "BatchProgress", "EpochEnd", "CheckpointSaved", "Finished",
    "CancelToken", "suggest", "Suggestion", "SuggestResult", "check_labels", "LabelCheckResult", "LabelIssue",
    "explain", "Saliency", "ExplainResult", "export_model", "ExportResult",
]
