"""Counts and page labels follow what the user does (no stale text between docks)."""
from __future__ import annotations

from .conftest import press, write_project


def test_training_dock_counts_follow_labelling(open_widget, qtbot):
    from napari_cellclass._widgets.training import TrainingWidget

    viewer, w, project = open_widget(n=5)
    training = TrainingWidget(viewer)
    viewer.window.add_dock_widget(training, name="Training")
    assert "0 labelled of 5" in training.project_label.value
    press(viewer, "F2")
    press(viewer, "F2")
    qtbot.waitUntil(lambda: "2 labelled of 5" in training.project_label.value, timeout=2000)
    assert "alpha 2" in training.project_label.value
    training.close()


def test_training_dock_made_first_shows_the_project_opened_later(make_napari_viewer, tmp_path, qtbot):
    from napari_cellclass._widgets.labelling import LabellingWidget
    from napari_cellclass._widgets.training import TrainingWidget

    viewer = make_napari_viewer()
    training = TrainingWidget(viewer)
    assert "No project" in training.project_label.value
    project = write_project(tmp_path / "later", n=3)
    labelling = LabellingWidget(viewer, project)
    qtbot.waitUntil(lambda: "later: 0 labelled of 3" in training.project_label.value, timeout=2000)
    training.close()
    labelling.close()


def test_page_label_names_a_shown_list_then_returns_to_pages(open_widget):
    viewer, w, project = open_widget(n=10, page_size=4)
    ids = project.image_ids
    w.show_images([ids[7], ids[2]], "true alpha / predicted beta")
    assert w.page_label.value.startswith("true alpha / predicted beta: 2 images")
    assert [lyr.metadata["cellclass"]["image_id"] for lyr in viewer.layers] == [ids[7], ids[2]]
    w.next_page()
    assert w.pager.page_ids == ids[3:7]
    assert w.page_label.value.startswith("page 2 / 3")
