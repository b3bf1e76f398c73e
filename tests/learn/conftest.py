"""Fixtures for the training tests: tiny projects and fast settings (CPU, seconds per run)."""
from __future__ import annotations

import pytest

FAST = dict(backbone="mobilenetv3_small_050", input_size=32, batch_size=8, epochs=2, lr=3e-3,
            device="cpu", seed=0)


@pytest.fixture
def fast_config():
    """A factory of quick CPU settings (tiny MobileNetV3 at 32 px)."""
    from napari_cellclass.learn.config import TrainConfig

    def make(**changes):
        return TrainConfig(**{**FAST, **changes})

    return make


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory):
    """A 40-image, 64 px sample project (24 labelled). Tests must not change its labels."""
    from napari_cellclass.core.sample import make_sample_project

    return make_sample_project(tmp_path_factory.mktemp("tiny") / "sample", n=40, seed=5, size=64)
