"""The labelling dock's part that helps label: suggest what to label next, find likely mistakes.

Both run in a worker (:func:`~.workers.with_progress` over :func:`napari_cellclass.learn.suggest`
and :func:`napari_cellclass.learn.check_labels`); the results become the session's marks, which
the canvas (gold / red corners) and the gallery (``★ rank`` / ``→ class`` badges, the
"suggested" and "likely mistakes" filters) show. The canvas ("Show: suggested") and the gallery then
list them in their order with the first selected, so F2 walks them in that order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox
from napari.utils.notifications import show_error, show_warning

from ..core.strategies import AUTO_MIN_PER_CLASS, STRATEGIES
from .labelling_model import FILTER_MISTAKES, FILTER_SUGGESTED
from .training_model import Failed, import_learning_libraries
from .workers import DockJob, JobProgress, guarded_steps

if TYPE_CHECKING:
    from .labelling import LabellingWidget



class CurationPanel(Container):
    """"Suggest N" and "Check labels" with their status line."""

    def __init__(self, dock: LabellingWidget) -> None:
        super().__init__(labels=False)
        self.dock = dock
        self.shared = dock.shared
        self.n = SpinBox(value=20, min=1, max=100_000, tooltip="how many images to suggest")
        self.strategy = ComboBox(choices=STRATEGIES, value="auto",
                                 tooltip="auto: typical images first, the model's least certain once every class "
                                         f"has {AUTO_MIN_PER_CLASS} labels and a model exists")
        self.suggest_button = PushButton(text="Suggest 20")
        self.suggest_button.tooltip = "which unlabelled images would teach the model most"
        self.check_button = PushButton(text="Check labels")
        self.check_button.tooltip = "find labelled images whose label is probably wrong (cross-validation + cleanlab)"
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.job = DockJob("a suggestion or label check", start_buttons=[self.suggest_button, self.check_button])
        self.bar = JobProgress()
        self.extend([Container(widgets=[self.suggest_button, self.n, self.strategy], layout="horizontal",
                               labels=False),
                      Container(widgets=[self.check_button], layout="horizontal", labels=False), self.status])
        self.n.changed.connect(lambda v: setattr(self.suggest_button, "text", f"Suggest {v}"))
        self.suggest_button.changed.connect(self.suggest)
        self.check_button.changed.connect(self.check_labels)

    def suggest(self, *_: Any) -> Any:
        """Suggest N images to label next (in a worker); returns the worker or None."""
        project = self._ready()
        if project is None:
            return None
        from ..learn.suggest import suggest

        model = str(self.shared.model) if self.shared.model is not None else None
        self.status.value = f"choosing {self.n.value} images to label…"
        return self._start(suggest, project, model=model, n=int(self.n.value), strategy=str(self.strategy.value))

    def check_labels(self, *_: Any) -> Any:
        """Look for likely labelling mistakes (in a worker); returns the worker or None."""
        project = self._ready()
        if project is None:
            return None
        from ..learn.label_check import check_labels

        self.status.value = f"checking {project.n_labelled} labels…"
        return self._start(check_labels, project)

    def _ready(self) -> Any:
        """The open project with the libraries loaded, or None (and why) when none is open or a job runs."""
        if self.shared.project is None:
            show_warning("open a project first")
            return None
        if self.job.running:
            show_warning(f"{self.job.what} is already running")
            return None
        _import_libraries()
        return self.shared.project

    def _start(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        self.bar.start("reading images")
        return self.job.start(guarded_steps, call, args, kwargs, on_item=self._on_item, on_done=self.bar.close)

    def _on_item(self, item: Any) -> None:
        from ..learn.label_check import LabelCheckResult
        from ..learn.suggest import SuggestResult

        if isinstance(item, tuple):
            self.bar.update(*item)
        elif isinstance(item, Failed):
            self.status.value = f"failed: {item.message}"
            show_error(item.message)
        elif isinstance(item, SuggestResult):
            self.shared.set_suggestions([s.to_dict() for s in item.suggestions])
            self.status.value = (f"{len(item.suggestions)} suggested ({item.strategy}); F2 walks them in order"
                                 if item.suggestions else "nothing to suggest: every image is labelled")
            self._walk(FILTER_SUGGESTED, item.ids, "suggested")
        elif isinstance(item, LabelCheckResult):
            self.shared.set_mistakes([i.to_dict() for i in item.issues])
            self.status.value = (f"{len(item.issues)} likely mistake(s) among {item.checked} labels "
                                 f"(out-of-fold accuracy {item.oof_accuracy:.2f}); F1/F2 relabel")
            self._walk(FILTER_MISTAKES, [i.image_id for i in item.issues], "likely mistakes")

    def _walk(self, filter_name: str, ids: list[str], title: str) -> None:
        """Show the marked images from the first, in their order, on the canvas ("Show") and in the gallery."""
        if not ids:
            return
        gallery = self.shared.gallery
        if gallery is not None:
            gallery.show_filter(filter_name)
        self.dock.show_filter(filter_name)
        if title and not self.dock.shows_image(ids[0]):  # the filter is not offered (e.g. no page yet)
            self.shared.show_images(ids, title, select=ids[0])


def _import_libraries() -> None:
    """torch, scikit-learn and cleanlab imported in the main thread (never first in a worker)."""
    import_learning_libraries()
    import cleanlab.filter  # noqa: F401
    import cleanlab.rank  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401


