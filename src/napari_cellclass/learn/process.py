"""Run the training engine in a child process and relay its events (no Qt, no napari).

A viewer's event loop and a training loop in one process share the GIL, so even a training
*thread* stalls the viewer. :func:`run_training_in_process` starts the engine in a fresh
process (``spawn``: nothing of the caller's state, Qt or OpenGL is inherited) and yields the
same typed events as :func:`~napari_cellclass.learn.run_training`::

    for event in run_training_in_process("my_project", TrainConfig(epochs=5), cancel=token):
        ...

- The events travel through a multiprocessing queue (our own frozen dataclasses, pickled
  between our own processes; no user file is ever unpickled).
- ``cancel`` (a :class:`CancelToken`) is mirrored into a multiprocessing event that the child's
  token reads between batches, so Stop keeps the best model exactly as in-thread training.
- An exception in the child is raised again in the caller as the same
  :class:`~napari_cellclass.core.errors.CellclassError` subclass (or built-in exception) with
  the same message; the child's traceback is attached as its ``__cause__``.
- The child ends with the iteration: closing the iterator early, or the caller exiting,
  terminates it; a child whose parent died exits by itself.
- The child does not import the caller's main script (``spawn`` normally runs it again as
  ``__mp_main__``): everything it needs lives in this package, so a plain script or a napari
  script without ``if __name__ == "__main__":`` trains too, and its top level runs once.
"""
from __future__ import annotations

import atexit
import builtins
import importlib
import logging
import multiprocessing as mp
import os
import queue
import threading
import traceback
import weakref
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import CellclassError
from .events import CancelToken, Event

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)

#: Seconds between checks of the caller's cancel token and of the child's health.
POLL_SECONDS = 0.05
#: Seconds a stopped or abandoned child gets to end by itself before it is terminated.
GRACE_SECONDS = 10.0

_CHILDREN: weakref.WeakSet[BaseProcess] = weakref.WeakSet()
#: The name of the training process; only processes of this name start without the caller's main.
CHILD_NAME = "cellclass-training"


def _use_clean_main() -> None:
    """Make spawned processes named :data:`CHILD_NAME` start without importing the caller's ``__main__``.

    ``multiprocessing`` tells a spawned child to run the parent's main script (or module) again
    so that objects defined there can be unpickled. The training child needs none (its target
    and arguments are this package's own), and running the script again is what breaks a
    script without a ``__main__`` guard (it would start training again inside the child). The
    preparation data of our child alone is filtered; other processes are untouched. Idempotent.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_cellclass_clean_main", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if name == CHILD_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._cellclass_clean_main = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


class ChildCancelToken(CancelToken):
    """A :class:`CancelToken` backed by a multiprocessing event (set by the parent)."""

    def __init__(self, event: Any) -> None:
        self._event = event


class RemoteTraceback(Exception):
    """The traceback of an exception raised in the training process (attached as ``__cause__``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainingProcessError(CellclassError):
    """The training process ended without reporting a result (killed, crashed, out of memory)."""


# ---------------------------------------------------------------------------- child side
def _child_main(project_folder: str, config: TrainConfig, out_dir: str | None, events: Any,
                cancel: Any, num_threads: int | None, resume: bool, nice: int) -> None:
    """The child process: train and put ``('event', e)``, then ``('error', ...)`` or ``('done',)``."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    parent = mp.parent_process()
    if parent is not None:  # exit when the parent dies without stopping us
        def watch() -> None:
            parent.join()
            os._exit(3)

        threading.Thread(target=watch, name="cellclass-parent-watch", daemon=True).start()
    try:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        from .engine import run_training

        for event in run_training(project_folder, config, out_dir, cancel=ChildCancelToken(cancel),
                                  resume=resume):
            events.put(("event", event))
        events.put(("done",))
    except BaseException as exc:  # noqa: BLE001 - relayed to the parent, which raises it again
        cls = type(exc)
        events.put(("error", cls.__module__, cls.__qualname__, str(exc), traceback.format_exc()))
    finally:
        events.close()
        events.join_thread()  # everything is flushed before the process ends


# ---------------------------------------------------------------------------- parent side
def _error_from_child(module: str, qualname: str, message: str, text: str) -> BaseException:
    """The exception the child raised, rebuilt as its own class where that is safe."""
    cls: Any = None
    try:
        if module == "builtins":
            cls = getattr(builtins, qualname, None)
        elif module.startswith("napari_cellclass."):
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = None
    exc: BaseException | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(message)
        except TypeError:  # a constructor that needs more than the message
            exc = None
    if exc is None:
        exc = RuntimeError(f"{qualname}: {message}" if message else qualname)
    exc.__cause__ = RemoteTraceback(text)
    return exc


def default_num_threads(device: str, leave_free: int = 1) -> int | None:
    """Torch threads for a CPU run that leaves ``leave_free`` cores to other work (a viewer).

    None for runs that do not train on the CPU (the child then keeps torch's default).
    """
    if device not in ("cpu", "auto"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - leave_free)


def run_training_in_process(project_folder: str | os.PathLike, config: TrainConfig,
                            out_dir: str | os.PathLike | None = None, cancel: CancelToken | None = None,
                            *, num_threads: int | None = None, resume: bool = False,
                            nice: int = 0) -> Iterator[Event]:
    """Train in a child process and yield its events (as :func:`run_training` does in-process).

    Parameters
    ----------
    project_folder
        The project folder (the child opens it from disk).
    config, out_dir, resume
        As for :func:`~napari_cellclass.learn.run_training`.
    cancel
        Stops the run after the current batch (the best model is kept).
    num_threads
        Torch CPU threads in the child (None: torch's default, all cores).
    nice
        Lower the child's scheduling priority by this much (Unix), so that an interactive
        process such as a viewer gets the CPU first when it needs it.

    Raises
    ------
    CellclassError
        The child's error (same subclass and message), or :class:`TrainingProcessError` when the
        child died without a word.
    """
    _use_clean_main()
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    out = str(out_dir) if out_dir is not None else None
    child = ctx.Process(target=_child_main, name=CHILD_NAME,
                        args=(str(Path(project_folder)), config, out, events, stop, num_threads, resume, nice))
    child.start()
    _CHILDREN.add(child)
    ended = False
    try:
        while True:
            if cancel is not None and cancel.is_set() and not stop.is_set():
                stop.set()
            try:
                item = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not child.is_alive():
                    try:  # the last items may still be in the pipe
                        item = events.get(timeout=1.0)
                    except queue.Empty:
                        raise TrainingProcessError(
                            f"the training process ended unexpectedly (exit code {child.exitcode}); "
                            "lower the batch size or the input size if memory is short") from None
                else:
                    continue
            kind = item[0]
            if kind == "event":
                yield item[1]
            elif kind == "done":
                ended = True
                return
            else:
                ended = True
                raise _error_from_child(*item[1:])
    finally:
        _end_child(child, stop, events, wait=GRACE_SECONDS if not ended else 30.0)


def _end_child(child: BaseProcess, stop: Any, events: Any, wait: float) -> None:
    """Stop the child (it keeps its best model), give it ``wait`` seconds, then terminate it."""
    stop.set()
    deadline_step = 0.1
    waited = 0.0
    while child.is_alive() and waited < wait:
        try:  # drain, so a child blocked on a full pipe can finish
            while True:
                events.get_nowait()
        except (queue.Empty, OSError, EOFError, ValueError):
            pass
        child.join(deadline_step)
        waited += deadline_step
    if child.is_alive():
        log.warning("the training process did not stop in %.0f s; terminating it", wait)
        child.terminate()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)
    events.close()
    events.cancel_join_thread()
    child.close()
    _CHILDREN.discard(child)


@atexit.register
def _terminate_children() -> None:
    """At interpreter exit, end training processes still running (before multiprocessing joins them)."""
    for child in list(_CHILDREN):
        try:
            if child.is_alive():
                child.terminate()
                child.join(5)
        except ValueError:  # already closed
            pass
