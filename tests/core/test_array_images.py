"""In-memory images (a script's arrays, napari layers) saved into a project as TIFF files."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass.core.array_images import save_array_image
from napari_cellclass.core.errors import ProjectError
from napari_cellclass.core.project import Project
from napari_cellclass.core.transfer import save_array_image as old_path


def test_save_array_image_writes_a_project_tiff(tmp_path):
    project = Project.open(tmp_path)
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 1] = 200
    two = np.stack([np.zeros((5, 6)), np.ones((5, 6))], axis=-1)
    i = save_array_image(project, rgb, "cell: 1/2")
    j = save_array_image(project, two, "two", channel_axis=2)
    assert i == "added_images/cell_1_2.tif" and i in project and j in project
    assert project.read_image(i).pixels.shape == (3, 5, 6) and project.read_image(i).pixels[1].max() == 200
    assert project.read_image(j).pixels.shape == (2, 5, 6) and project.read_image(j).pixels[1].min() == 1
    with pytest.raises(ProjectError, match="4-D"):
        save_array_image(project, np.zeros((2, 2, 2, 2)), "4d")


def test_the_old_import_path_still_works():
    assert old_path is save_array_image
