"""Shared fixtures: small projects written to temporary folders (never the working directory)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CELLCLASS_SAMPLE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "cellclass-test-sample"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker its own sample folder and napari settings file
    _worker = os.environ["PYTEST_XDIST_WORKER"]
    os.environ["CELLCLASS_SAMPLE_DIR"] = str(Path(os.environ["CELLCLASS_SAMPLE_DIR"]) / _worker)
    if os.environ.get("NAPARI_CONFIG"):
        _cfg = Path(os.environ["NAPARI_CONFIG"])
        os.environ["NAPARI_CONFIG"] = str(_cfg.with_name(f"{_cfg.stem}-{_worker}{_cfg.suffix}"))


@pytest.fixture
def sample_project(tmp_path):
    """A small sample project (24 images, 60 % labelled), fresh for each test."""
    from napari_cellclass.core.sample import make_sample_project

    return make_sample_project(tmp_path / "sample", n=24, seed=1)


@pytest.fixture(scope="session")
def shared_sample(tmp_path_factory):
    """A 120-image sample project shared by read-only tests (do not label in it)."""
    from napari_cellclass.core.sample import make_sample_project

    return make_sample_project(tmp_path_factory.mktemp("shared") / "sample", n=120, seed=3)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A folder of six 8-bit grayscale PNGs in two subfolders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("a", "b"):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / sub / f"img{i}.png")
    return tmp_path / "imgs"
