"""Accepting predictions labels only unlabelled images; human labels are never replaced."""
from __future__ import annotations

from napari_cellclass.core.predictions import Prediction

from .conftest import write_project


def _panel(make_napari_viewer, project, answers):
    from napari_cellclass._widgets.predict_panel import PredictionsWidget

    viewer = make_napari_viewer()
    asked: list[str] = []

    def confirm(question: str) -> bool:
        asked.append(question)
        return answers.pop(0)

    return PredictionsWidget(viewer, project, confirm=confirm), asked


def test_accept_all_above_is_one_undo_step_and_asks_first(make_napari_viewer, tmp_path):
    project = write_project(tmp_path / "p", n=12)
    ids = project.image_ids
    project.assign(ids[0], "alpha")
    preds = {i: Prediction(i, ("beta" if k % 2 else "alpha",), 0.95,
                           {"alpha": 0.05, "beta": 0.95}, "m") for k, i in enumerate(ids)}
    panel, asked = _panel(make_napari_viewer, project, [False, True])
    panel.predictions = preds
    assert panel.accept_above(0.9) == []  # the user said no
    assert len(asked) == 1 and "11" in asked[0] and project.labelled_ids() == [ids[0]]
    changed = panel.accept_above(0.9)
    assert len(changed) == 11 and len(asked) == 2
    assert {project.labels(i)[0] for i in changed} == {"alpha", "beta"}  # two classes, one step
    assert sorted(project.undo()) == sorted(changed)
    assert project.labelled_ids() == [ids[0]]


def test_a_handful_is_accepted_without_asking(make_napari_viewer, tmp_path):
    project = write_project(tmp_path / "p", n=3)
    preds = {i: Prediction(i, ("beta",), 0.95, {"alpha": 0.05, "beta": 0.95}, "m") for i in project.image_ids}
    panel, asked = _panel(make_napari_viewer, project, [])
    panel.predictions = preds
    assert len(panel.accept_above(0.9)) == 3 and asked == []
