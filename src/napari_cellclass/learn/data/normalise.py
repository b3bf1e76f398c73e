"""Per-channel normalisation ``(x - mean) / std``: ImageNet statistics or the training split's own."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .cache import ImageStore


@dataclass(frozen=True)
class Normalisation:
    """How pixels become network input: intensity scaling, then ``(x - mean) / std`` per channel."""

    scaling: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # 'imagenet' or 'dataset'

    def to_json(self) -> dict[str, Any]:
        """As saved in a model's ``config.json``."""
        return {"scaling": self.scaling, "mean": list(self.mean), "std": list(self.std), "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalisation:
        """From a model's ``config.json`` entry."""
        return cls(str(data["scaling"]), tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["std"]), str(data.get("source", "dataset")))

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as ``(1, C, 1, 1)`` float32 tensors on ``device``."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return mean, std


def choose_normalisation(store: ImageStore, train_index: np.ndarray, scaling: str,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Normalisation:
    """ImageNet statistics when given (pretrained RGB stems), else the training split's own."""
    if mean is not None and std is not None and len(mean) == (store.in_chans or 0):
        return Normalisation(scaling, tuple(float(v) for v in mean), tuple(float(v) for v in std), "imagenet")
    m, s = store.channel_stats(train_index)
    return Normalisation(scaling, m, s, "dataset")

