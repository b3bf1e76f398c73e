"""Start-up of a run: the seconds from the command to its first training batch, phase by phase."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

__all__ = ["StartupClock", "command_process", "process_seconds"]


def command_process() -> bool:
    """Whether this process is the command line's (``napari-cellclass ...``, ``python -m napari_cellclass``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    return name.startswith("napari_cellclass") or Path(sys.argv[0] if sys.argv else "").name.startswith(
        "napari-cellclass")


def process_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``); None where that is not known."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class StartupClock:
    """Laps of a run's start-up.

    ``from_process_start`` (default: in the command line's process) makes the first lap the
    process's age when the clock was made (interpreter, imports, arguments), when the system
    tells it; a run inside a long-lived process (a notebook, the viewer) starts at the clock.
    """

    def __init__(self, from_process_start: bool | None = None) -> None:
        self._last = time.perf_counter()
        if from_process_start is None:
            from_process_start = command_process()
        age = process_seconds() if from_process_start else None
        self.laps: dict[str, float] = {} if age is None else {"process start and imports": age}

    def lap(self, name: str) -> None:
        """Add the seconds since the previous lap under ``name`` (summed when it repeats)."""
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now

    @property
    def total(self) -> float:
        """Seconds from the start (the process's, when known) to the last lap."""
        return sum(self.laps.values())

    def to_dict(self) -> dict[str, float]:
        """``{"seconds": total, <lap>: seconds, ...}`` rounded to milliseconds."""
        return {"seconds": round(self.total, 3), **{k: round(v, 3) for k, v in self.laps.items()}}

    def line(self) -> str:
        """One line for the log, e.g. ``first training batch 7.9 s after the start (imports 4.1 s, ...)``."""
        since = "the command" if "process start and imports" in self.laps else "the run began"
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.laps.items())
        return f"first training batch {self.total:.1f} s after {since} ({parts})"
