"""The per-viewer session, driven without a viewer: one project, its label changes, the active model."""
from __future__ import annotations

from napari_cellclass._widgets.session import CellclassSession

from .conftest import write_project


def test_session_relays_project_labels_and_model(tmp_path):
    session = CellclassSession()
    seen: list[tuple[str, object]] = []
    session.project_changed.connect(lambda p: seen.append(("project", p)))
    session.labels_changed.connect(lambda ids: seen.append(("labels", ids)))
    session.model_changed.connect(lambda m: seen.append(("model", m)))

    project = write_project(tmp_path / "p", n=2)
    assert session.use_project(project.root) is not project  # a folder opens a new project object
    first = session.project
    assert session.use_project(str(project.root)) is first  # the same folder: the same object
    session.set_model(tmp_path / "model")
    first.assign(first.image_ids[0], "alpha")
    assert ("labels", (first.image_ids[0],)) in seen
    assert ("model", tmp_path / "model") in seen

    seen.clear()
    session.set_project(project)  # another project: the model is reset, the old one is not relayed
    assert seen[:2] == [("project", project), ("model", None)] and session.model is None
    first.assign(first.image_ids[1], "alpha")
    assert not any(kind == "labels" for kind, _ in seen)


def test_show_images_goes_to_the_registered_page_view():
    session = CellclassSession()
    assert session.show_images(["a"], "t") is False

    class View:
        shown: list = []

        def show_images(self, ids, title="", select=None):
            self.shown.append((list(ids), title, select))

    view = View()
    session.register_page_view(view)
    assert session.show_images(["a", "b"], "cell") is True and view.shown == [(["a", "b"], "cell", None)]
    assert session.show_images(["a", "b"], "g", select="b") and view.shown[-1] == (["a", "b"], "g", "b")
