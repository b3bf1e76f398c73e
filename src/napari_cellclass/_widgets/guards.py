"""Guards for dock methods: errors become one-line notifications; signals pause while we set values."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from napari.utils.notifications import show_error

from ..core.errors import CellclassError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


def reports_errors(method: F) -> F:
    """Show errors of a widget method as one-line napari notifications instead of raising.

    Project and file errors show their own message; anything unexpected is logged with its
    traceback and shown as one line, so a raw traceback never reaches the viewer.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except CellclassError as exc:
            show_error(str(exc))
        except OSError as exc:
            show_error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        except Exception as exc:  # noqa: BLE001 - a notification, never a raw traceback in the viewer
            log.exception("napari-cellclass: %s failed", method.__name__)
            text = " ".join(str(exc).split())
            show_error(f"napari-cellclass: unexpected {type(exc).__name__}{': ' + text if text else ''} "
                       "(nothing was lost; details in the log, please report it)")
        return None

    return wrapper  # type: ignore[return-value]


class quiet:  # noqa: N801 - used like a function: ``with quiet(a, b):``
    """Block some magicgui widgets' ``changed`` signals while setting their values."""

    def __init__(self, *widgets: Any) -> None:
        self._widgets = widgets

    def __enter__(self) -> None:
        for w in self._widgets:
            w.changed.block()

    def __exit__(self, *exc: object) -> None:
        for w in self._widgets:
            w.changed.unblock()
