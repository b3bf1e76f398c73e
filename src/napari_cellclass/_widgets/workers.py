"""One way for every dock to run slow work in a napari worker thread (never in the GUI thread).

A :class:`DockJob` runs one generator at a time: its items reach the dock's handler in the GUI
thread, the dock's start buttons are disabled (and its stop buttons enabled) while it runs, and
a second start while running only says so. Widgets are never created in the worker.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_warning

if TYPE_CHECKING:
    from magicgui.widgets import Widget
    from napari.qt.threading import GeneratorWorker


class DockJob:
    """The background job of a dock.

    Parameters
    ----------
    what
        What the job does, for messages ("a prediction", "an evaluation").
    start_buttons, stop_buttons
        Disabled, respectively enabled, while the job runs.
    """

    def __init__(self, what: str, start_buttons: Sequence[Widget] = (),
                 stop_buttons: Sequence[Widget] = ()) -> None:
        self.what = what
        self.worker: GeneratorWorker | None = None
        self._start_buttons = list(start_buttons)
        self._stop_buttons = list(stop_buttons)
        self._on_done: Callable[[], None] | None = None
        self._show(running=False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def ready_for(self, project: Any, model: Any) -> bool:
        """True when a project is open with an active model and the job is idle (else says why)."""
        if project is None or model is None:
            show_warning("no active model: train one or load a model folder in the Training widget")
            return False
        if self.running:
            show_warning(f"{self.what} is already running")
            return False
        return True

    def start(self, steps: Callable[..., Iterator[Any]], *args: Any, on_item: Callable[[Any], None],
              on_done: Callable[[], None] | None = None,
              progress: dict[str, Any] | None = None) -> GeneratorWorker | None:
        """Run ``steps(*args)`` in a worker; ``on_item`` gets each yielded item in the GUI thread.

        Returns the worker, or None (with a message) when the job is already running.
        """
        from napari.qt.threading import create_worker

        if self.running:
            show_warning(f"{self.what} is already running")
            return None
        kwargs: dict[str, Any] = {"_start_thread": False}
        if progress is not None:
            kwargs["_progress"] = progress
        worker = create_worker(steps, *args, **kwargs)
        worker.yielded.connect(on_item)
        worker.finished.connect(self._finished)
        self.worker, self._on_done = worker, on_done
        self._show(running=True)
        worker.start()
        return worker

    def _finished(self) -> None:
        self.worker = None
        self._show(running=False)
        if self._on_done is not None:
            self._on_done()

    def _show(self, running: bool) -> None:
        for button in self._start_buttons:
            button.enabled = not running
        for button in self._stop_buttons:
            button.enabled = running


def with_progress(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Run ``call(*args, progress=..., **kwargs)`` in a thread; yields its ``(done, total)`` pairs, then its result.

    For a worker: a library call that reports progress by callback becomes a generator the
    dock's :class:`DockJob` can run. Its exception is raised here, after the progress so far.
    """
    import queue
    import threading

    pairs: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = call(*args, progress=lambda done, total: pairs.put((done, total)), **kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again in the worker below
            box["error"] = exc
        finally:
            pairs.put(None)

    threading.Thread(target=work, name="cellclass-job", daemon=True).start()
    while (item := pairs.get()) is not None:
        yield item
    if "error" in box:
        raise box["error"]
    yield box["result"]


def guarded_steps(call: Callable[..., Any], args: tuple, kwargs: dict) -> Iterator[Any]:
    """A job for :meth:`DockJob.start`: :func:`with_progress` of ``call``, an exception becoming one
    :class:`~.training_model.Failed` line (the dock shows it) instead of a traceback."""
    from .training_model import Failed, user_message

    try:
        yield from with_progress(call, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - shown to the user as one line
        yield Failed(user_message(exc))


class JobProgress:
    """A napari progress bar fed with a job's ``(done, total)`` pairs (in the GUI thread)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def start(self, desc: str, total: int = 0) -> None:
        """A new bar (the previous one closed)."""
        from napari.utils import progress

        self.close()
        self.bar, self.done = progress(total=total, desc=desc), 0

    def update(self, done: int, total: int | None = None) -> None:
        """Advance to ``done`` (and, when given, a new ``total``)."""
        if self.bar is None:
            return
        if total is not None and total != self.bar.total:
            self.bar.total = total
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        """Close the bar (the job ended)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

