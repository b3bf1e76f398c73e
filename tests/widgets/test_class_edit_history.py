"""Renaming or removing a class keeps the undo history usable, and the confirmation says what happens."""
from __future__ import annotations

from .conftest import press


def test_undo_after_rename_restores_the_renamed_label(open_widget):
    viewer, w, project = open_widget(n=3)
    ids = project.image_ids
    press(viewer, "F2")  # ids[0] -> alpha
    press(viewer, "F4")
    press(viewer, "F2")  # ids[1] -> beta
    w.class_choice.value = "alpha"
    w.class_name.value = "mitotic"
    w.rename_button.clicked.emit()
    assert project.labels(ids[0]) == ("mitotic",)
    press(viewer, "Z", ctrl=True)
    assert project.labels(ids[1]) == ()
    press(viewer, "Z", ctrl=True)
    assert project.labels(ids[0]) == ()
    press(viewer, "Z", ctrl=True)  # nothing more: no ghost of the old name comes back
    assert project.class_names == ("mitotic", "beta")


def test_remove_confirmation_says_it_cannot_be_undone(open_widget):
    viewer, w, project = open_widget(n=3)
    ids = project.image_ids
    press(viewer, "F1")  # ids[0] -> alpha
    press(viewer, "F4")
    press(viewer, "F1")  # ids[0] -> beta: undoing this step would bring alpha back
    w.select_image(ids[1])
    press(viewer, "F3")
    press(viewer, "F1")  # ids[1] -> alpha
    asked: list[str] = []
    w.confirm = lambda q: asked.append(q) or True
    w.class_choice.value = "alpha"
    w.remove_button.clicked.emit()
    assert asked and "cannot be undone" in asked[0] and "without 'alpha'" in asked[0]
    assert project.class_names == ("beta",) and project.labels(ids[0]) == ("beta",)
    assert project.labels(ids[1]) == ()
    press(viewer, "Z", ctrl=True)  # undoes ids[1]'s step: it stays unlabelled
    assert project.labels(ids[1]) == ()
    press(viewer, "Z", ctrl=True)  # the step stays undoable; alpha does not come back
    assert project.class_names == ("beta",) and project.labels(ids[0]) == ()


def test_removing_the_shown_class_updates_the_panels_and_f1_uses_the_class_shown(open_widget):
    viewer, w, project = open_widget(n=6)
    ids = project.image_ids
    project.assign(list(ids[:2]), "beta")
    w.image_filter.value = "beta"
    w.class_choice.value = "beta"
    w.remove_button.clicked.emit()  # the fixture answers yes
    assert project.class_names == ("alpha",)
    assert w.class_choice.choices == ("alpha",) and w.class_choice.value == "alpha"
    assert w.image_filter.value == "all images" and w.page_label.value.startswith("page 1 / 1 (6 images)")
    w.select_image(ids[3])
    press(viewer, "F1")
    assert project.labels(ids[3]) == (w.class_choice.value,) == ("alpha",)
