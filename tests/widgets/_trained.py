"""A sample project with a tiny trained model, shared by the metrics and prediction widget tests."""
from __future__ import annotations

from pathlib import Path

TINY = dict(backbone="mobilenetv3_small_050", input_size=32, batch_size=8, device="cpu", epochs=1,
            schedule="none", aug_brightness=0.0, aug_contrast=0.0)


def trained_sample(folder: Path):
    """``(project, model folder)``: the 24-image sample and a one-epoch model trained on it."""
    from napari_cellclass.core.sample import make_sample_project
    from napari_cellclass.learn import TrainConfig, train

    project = make_sample_project(folder / "sample", n=24, size=48)
    result = train(project, TrainConfig(**TINY))
    assert result.model_dir is not None
    return project, result.model_dir
