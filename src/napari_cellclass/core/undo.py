"""The undo history of labelling: each step holds the exact old label files, kept valid across class edits."""
from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from .sidecars import sidecar_source

MAX_UNDO = 1000

#: ``(image id, classes, sidecar bytes or None, source)``
Before = tuple[str, tuple[str, ...], bytes | None, str]


@dataclass(frozen=True)
class UndoStep:
    """Everything needed to put some images' labels back as they were.

    Each item of ``before`` is ``(image id, classes, sidecar bytes or None, source)``: the exact
    old bytes are restored when present; ``None`` with classes means "write a fresh sidecar"
    (after a class rename the old bytes hold the old name), ``None`` without classes "delete it".
    """

    description: str
    before: tuple[Before, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(b[0] for b in self.before)

    def mentions(self, names: Container[str]) -> bool:
        """True when some image of this step had one of these classes."""
        return any(c in names for _, classes, _, _ in self.before for c in classes)

    def remapped(self, mapping: Mapping[str, str | None]) -> UndoStep:
        """The step with classes renamed (or, mapped to None, dropped); touched items get fresh sidecars."""
        items = []
        for iid, classes, raw, source in self.before:
            if any(c in mapping for c in classes):
                new = tuple(dict.fromkeys(m for c in classes if (m := mapping.get(c, c)) is not None))
                items.append((iid, new, None, sidecar_source(raw) if raw else source))
            else:
                items.append((iid, classes, raw, source))
        return UndoStep(self.description, tuple(items))


class UndoHistory:
    """The last :data:`MAX_UNDO` labelling steps, newest last."""

    def __init__(self) -> None:
        self._steps: list[UndoStep] = []

    def __bool__(self) -> bool:
        return bool(self._steps)

    def push(self, step: UndoStep) -> None:
        self._steps.append(step)
        del self._steps[:-MAX_UNDO]

    def pop(self) -> UndoStep | None:
        """The newest step, taken off the history (None when there is none)."""
        return self._steps.pop() if self._steps else None

    def clear(self) -> None:
        self._steps.clear()

    def mentions(self, name: str) -> bool:
        """True when some step would restore the class ``name``."""
        return any(step.mentions((name,)) for step in self._steps)

    def remap(self, mapping: Mapping[str, str | None]) -> None:
        """Rename (or drop) classes inside every step so each stays valid."""
        self._steps = [step.remapped(mapping) if step.mentions(mapping) else step for step in self._steps]
