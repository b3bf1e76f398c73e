"""The training dock widget: every engine setting, Train / Stop in a worker, live curves, models.

The widget is thin: the settings form (:mod:`~.settings_form`) edits a
:class:`~napari_cellclass.learn.TrainConfig`, the run and its curves live in
:class:`~.training_model.TrainingSession`. The engine trains in a child process
(:mod:`napari_cellclass.learn.process`), so the viewer's event loop never shares the GIL or a
core with the training loop; a napari generator worker iterates its event stream (batch
progress thinned to about ten a second) and hands each event to the GUI thread, where handlers
stay cheap: the progress bar moves at most ten times a second, the curves are repainted
(with Qt, about a millisecond) at epoch ends only, and text changes never relayout the dock. Widgets are only
ever created and updated on the main thread, from the worker's ``yielded`` signal.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    Container,
    Label,
    PushButton,
    Widget,
)
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from ..core.errors import CellclassError
from ..core.project import Project
from .compact import compact_dock
from .export_panel import ExportPanel
from .model_panel import ModelPanel, fixed_lines
from .napari_private import real_viewer
from .plots import TrainingPlots
from .session import session_for
from .settings_form import SettingsForm
from .training_model import (
    Failed,
    TrainingSession,
    choose_active_model,
    import_learning_libraries,
)
from .viewer_link import current_project

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from ..learn import TrainConfig

log = logging.getLogger(__name__)

#: Settings that apply to the current device for a quick first run (sample data on a CPU).
CPU_HINT = "CPU: small backbone, 96 px, batch 32 · on a GPU raise input size, batch and backbone"
#: Seconds between two progress-bar updates at most (the bar repaints the activity dock).
PROGRESS_INTERVAL = 0.1
#: Milliseconds a burst of label changes waits before the project summary is recounted.
REFRESH_DELAY_MS = 150


class TrainingWidget(Container):
    """Train a classifier on the project's labelled images and watch the curves grow.

    Parameters
    ----------
    viewer
        The napari viewer (injected by napari from the Plugins menu).
    project
        The project to train on (default: the labelling widget's project or the project of the
        image layers, looked up when Train is pressed).
    """

    def __init__(self, viewer: napari.viewer.Viewer, project: Project | str | Path | None = None) -> None:
        super().__init__(labels=False)
        self.viewer = real_viewer(viewer)
        self.shared = session_for(self.viewer)
        if project is not None:
            self.shared.use_project(project)
        self.session: TrainingSession | None = None
        self.worker: GeneratorWorker | None = None
        self._pbar: progress | None = None
        self._closed = False
        self.settings: dict[str, Widget] = {}
        self._build()
        self.shared.model_changed.connect(self._on_active_model)
        # label counts follow the labelling at most a few times a second (one refresh per burst)
        self._refresh_timer = QTimer()
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self._refresh_state)
        self.shared.project_changed.connect(self._on_shared_change)
        self.shared.labels_changed.connect(self._on_shared_change)
        self._refresh_state()

    # ================================================================== building
    def _build(self) -> None:
        self.project_label = Label(value="")
        self.form = SettingsForm()
        self.settings = self.form.settings  # by TrainConfig field name, for scripts and tests
        self.weights_file = self.form.weights_file
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop (keep best)")
        self.status = Label(value=CPU_HINT)
        fixed_lines(self.status, 3)
        self.plots = TrainingPlots()
        self.models = ModelPanel(self.shared)
        self.exports = ExportPanel(self.shared)
        self.active_label = self.models.active_label  # for scripts and tests

        def row(*widgets: Widget) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        self.extend([
            self.project_label, self.form,
            row(self.train_button, self.stop_button), self.status, self.plots, self.models, self.exports,
        ])
        compact_dock(self)  # rows scroll in a short dock; the window never outgrows the screen
        self.train_button.changed.connect(lambda _v: self.train())
        self.stop_button.changed.connect(lambda _v: self.stop())

    # ================================================================== settings
    def values(self) -> dict[str, Any]:
        """The current widget values, by TrainConfig field name."""
        return self.form.values()

    def config(self) -> TrainConfig:
        """The validated :class:`TrainConfig` of the current values (ConfigError when invalid)."""
        return self.form.config()

    def set_config(self, config: TrainConfig) -> None:
        """Show a TrainConfig's values in the widgets."""
        self.form.set_config(config)

    def save_settings(self, path: str | Path) -> Path:
        """Write the current settings to a JSON or YAML file."""
        return self.form.save_settings(path)

    def load_settings(self, path: str | Path) -> None:
        """Read settings from a JSON/YAML file (a model folder's ``config.json`` works too)."""
        self.form.load_settings(path)

    # ================================================================== project
    @property
    def project(self) -> Project | None:
        """The project trained on: the one given, else the viewer's."""
        return current_project(self.viewer)

    def set_project(self, project: Project | str | Path) -> None:
        self.shared.use_project(project)
        self.session = None
        self._refresh_state()

    def _session(self, project: Project) -> TrainingSession:
        if self.session is None or self.session.project is not project:
            old_runs = self.session.runs if self.session is not None else []
            self.session = TrainingSession(project)
            self.session.runs = old_runs  # keep earlier curves in the run list
        return self.session

    # ================================================================== training
    @property
    def running(self) -> bool:
        return self.worker is not None

    def train(self) -> GeneratorWorker | None:
        """Start training in a worker thread; returns the worker (None when it cannot start)."""
        from napari.qt.threading import create_worker

        if self.running:
            show_warning("training is already running; press Stop first")
            return None
        project = self.project
        if project is None:
            show_warning("open a project first (Labelling widget or File > Open Folder)")
            return None
        try:
            config = self.config()
        except CellclassError as exc:
            show_error(f"cannot train: {exc}")
            return None
        session = self._session(project)
        self.status.value = "loading the deep-learning libraries…"
        import_learning_libraries()  # never first imported in a worker thread (crashes)
        try:
            session.start(config)
        except CellclassError as exc:
            show_error(str(exc))
            return None
        self.plots.set_runs(session.runs)
        self._pbar = progress(total=session.total_steps, desc=f"Training {config.backbone}")
        self._pbar_n = 0
        self._pbar_time = 0.0
        self.status.value = f"starting: {config.backbone}, {config.epochs} epochs on {project.root.name}"
        worker = create_worker(session.run, config, _start_thread=False)
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self._refresh_state()
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop after the current batch; the best model so far is kept."""
        if self.session is not None and self.session.stop():
            self.status.value = "stopping after this batch (the best model is kept)…"
            self.stop_button.enabled = False

    def _on_event(self, event: Any) -> None:
        from ..learn import CheckpointSaved, EpochEnd, Finished, Log, Started, WarningEvent

        session = self.session
        if session is None:
            return
        session.handle(event)
        self._update_progress(force=isinstance(event, (EpochEnd, Finished, Started)))
        if isinstance(event, Log):
            self.status.value = event.message
        elif isinstance(event, WarningEvent):
            show_warning(event.message)
        elif isinstance(event, Started):
            self.status.value = (f"training on {event.n_train} images, validating on {event.n_val} "
                                 f"({event.device}, {event.precision}, {event.input_size} px)")
        elif isinstance(event, EpochEnd):
            acc = event.val.get("accuracy", float("nan"))
            self.status.value = (f"epoch {event.epoch}/{event.epochs}: val loss {event.val.get('loss', 0):.3f}, "
                                 f"val accuracy {acc:.3f}{' (best)' if event.is_best else ''}, "
                                 f"{event.images_per_second:.0f} img/s")
            self.plots.set_runs(session.runs)
        elif isinstance(event, CheckpointSaved) and event.kind == "best":
            self.active_label.value = f"best model so far: {Path(event.path).name} (epoch {event.epoch})"
        elif isinstance(event, Finished):
            self._on_finished(event)
        elif isinstance(event, Failed):
            self.status.value = f"training failed: {event.message}"
            show_error(f"Training failed: {event.message}")
            self.plots.set_runs(session.runs)

    def _update_progress(self, force: bool = False) -> None:
        """Move the progress bar to the session's progress (at most every PROGRESS_INTERVAL s)."""
        session, pbar = self.session, self._pbar
        if session is None or pbar is None:
            return
        now = time.monotonic()
        if not force and now - self._pbar_time < PROGRESS_INTERVAL:
            return
        self._pbar_time = now
        if pbar.total != session.total_steps:
            pbar.total = session.total_steps
        delta = session.done_steps - self._pbar_n
        if delta > 0:
            pbar.update(delta)
            self._pbar_n = session.done_steps

    def _on_finished(self, event: Any) -> None:
        assert self.session is not None
        self.plots.set_runs(self.session.runs)
        if event.model_dir is None:
            self.status.value = "stopped before the first epoch ended: no model was written"
            show_warning("Training stopped before the first epoch ended: no model was written. "
                         "Train again and let at least one epoch finish.")
            return
        best = event.best_metrics
        where = Path(event.model_dir)
        text = (f"best epoch {event.best_epoch}: val accuracy {best.get('accuracy', float('nan')):.3f}, "
                f"model in {where}")
        if event.cancelled:
            self.status.value = f"stopped; kept the {text}"
        else:
            self.status.value = f"done in {event.seconds:.0f} s; {text}"
        # the status line tells; a notification toast would stall the viewer (~100 ms on software GL)
        log.info("training %s: %s", "stopped" if event.cancelled else "done", text)
        try:
            choice = choose_active_model(where, self.shared.model)
        except CellclassError as exc:
            show_error(f"cannot use the new model: {exc}")
            return
        if choice.keep_active:
            self.status.value = f"{self.status.value}. Not made active: {choice.reason}"
            show_warning(f"The new model in {where} was not made active: {choice.reason}. "
                         "Load it in 'model folder' to use it anyway.")
            return
        self.shared.set_model(where)

    def _on_worker_finished(self) -> None:
        if self.session is not None:
            self.session.finish()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        if self._closed:
            return
        self.plots.set_runs(self.session.runs if self.session is not None else [], follow_last=False)
        self._refresh_state()

    # ================================================================== models
    def load_model(self, folder: str | Path) -> Path:
        """Make a model folder the active model of the project."""
        return self.models.load_model(folder)

    def save_model(self, dest: str | Path) -> Path:
        """Copy the active model folder to ``dest``."""
        return self.models.save_model(dest)

    def _on_shared_change(self, *_args: Any) -> None:
        if not self._closed:
            self._refresh_timer.start()

    def _on_active_model(self, _folder: Path | None) -> None:
        if not self._closed:
            self._refresh_state()

    # ================================================================== state
    def _refresh_state(self) -> None:
        running = self.running
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.form.set_editable(not running)
        self.models.load_model_button.enabled = not running
        project = self.project
        if project is None:
            self.project_label.value = "No project: open one in the Labelling widget"
            return
        counts = project.counts()
        self.project_label.value = (f"{project.root.name}: {project.n_labelled} labelled of "
                                    f"{len(project)} · " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if not running:
            self.models.show_active()

    def close(self) -> None:
        """Stop a run (its process keeps the best model and ends) and disconnect from the registry."""
        self.stop()
        self._closed = True
        worker = self.worker
        if worker is not None:  # the worker drains the stream and ends the process; nothing is shown
            worker.yielded.disconnect(self._on_event)
        self.shared.model_changed.disconnect(self._on_active_model)
        self.shared.project_changed.disconnect(self._on_shared_change)
        self.shared.labels_changed.disconnect(self._on_shared_change)
        self._refresh_timer.stop()
        super().close()
