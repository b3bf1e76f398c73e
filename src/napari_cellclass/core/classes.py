"""The class list: names, colours and order of a project's classes, and the checks on each edit."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import ClassNameError, ProjectError

# A colour-blind-friendly palette (Okabe-Ito, then Tableau), distinct on dark backgrounds.
DEFAULT_PALETTE: tuple[str, ...] = (
    "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7",
    "#ff6b6b", "#4ecdc4", "#c7f464", "#9b59b6", "#f39c12", "#1abc9c", "#e84393",
    "#a3cb38", "#fdcb6e",
)
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
_FORBIDDEN = set('/\\:*?"<>|') | {"\x00"}
MAX_NAME_LENGTH = 100
_CONTROL = frozenset({"Cc", "Cs", "Zl", "Zp"})  # control characters, surrogates, line/paragraph breaks
_INVISIBLE = "Cf"  # zero-width spaces and joiners, direction marks, soft hyphens


def class_key(name: str) -> str:
    """What two class names must differ in: not case, Unicode composition or runs of spaces."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


@dataclass(frozen=True)
class ClassInfo:
    """One class of a project: its name and display colour (``#rrggbb``)."""

    name: str
    color: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "color": self.color}


def validate_name(name: object, existing: list[str] | tuple[str, ...] = ()) -> str:
    """Return the cleaned class name, or raise :class:`ClassNameError` saying why not."""
    if not isinstance(name, str):
        raise ClassNameError(f"class name must be text, got {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise ClassNameError("class name is empty; type a name such as 'mitotic'")
    bad = [repr(c) for c in sorted(set(clean) & _FORBIDDEN)]
    if any(unicodedata.category(c) in _CONTROL for c in clean if c != "\x00"):
        bad.append("control characters or line breaks")
    if any(unicodedata.category(c) == _INVISIBLE for c in clean):
        bad.append("invisible characters (zero-width spaces, direction marks)")
    if bad:
        shown = clean if len(clean) <= MAX_NAME_LENGTH else clean[:MAX_NAME_LENGTH] + "..."
        raise ClassNameError(
            f"class name {shown!r} contains {' '.join(bad)}; path separators and "
            "these characters are not allowed in class names"
        )
    clean = " ".join(clean.split())  # one way to write each name: runs of spaces are one space
    if clean in (".", ".."):
        raise ClassNameError(f"class name {clean!r} is not allowed")
    if len(clean) > MAX_NAME_LENGTH:
        raise ClassNameError(f"class name is longer than {MAX_NAME_LENGTH} characters")
    twin = next((e for e in existing if class_key(e) == class_key(clean)), None)
    if twin is not None:
        raise ClassNameError(f"a class named {twin!r} already exists; pick another name")
    return clean


def validate_color(color: object) -> str:
    """Return a ``#rrggbb`` colour, accepting ``#rgb``, ``#rrggbb`` or an RGB(A) 0-1 tuple."""
    if isinstance(color, str):
        c = color.strip()
        if re.fullmatch(r"#[0-9a-fA-F]{3}", c):
            c = "#" + "".join(ch * 2 for ch in c[1:])
        if _HEX.match(c):
            return c.lower()
    elif isinstance(color, (tuple, list)) and len(color) in (3, 4):
        try:
            vals = [float(v) for v in color[:3]]
        except (TypeError, ValueError):
            vals = []
        if vals and all(0.0 <= v <= 1.0 for v in vals):
            return "#" + "".join(f"{round(v * 255):02x}" for v in vals)
    raise ClassNameError(f"colour {color!r} is not valid; use '#rrggbb' (e.g. '#e69f00')")


def next_color(used: list[str] | tuple[str, ...]) -> str:
    """The first palette colour not in ``used`` (cycling when all are taken)."""
    used_set = {u.lower() for u in used}
    for c in DEFAULT_PALETTE:
        if c not in used_set:
            return c
    return DEFAULT_PALETTE[len(used) % len(DEFAULT_PALETTE)]


@dataclass(frozen=True)
class ClassList:
    """An ordered list of classes (names distinct, ignoring case); each edit returns a new list.

    An edit checks everything first and raises :class:`ClassNameError` (or
    :class:`~napari_cellclass.core.errors.ProjectError`) before anything changes, so a
    project can save the new list before it adopts it.
    """

    items: tuple[ClassInfo, ...] = ()

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.items)

    @property
    def colors(self) -> list[str]:
        return [c.color for c in self.items]

    def index(self, name: str) -> int:
        """Position of the class ``name`` (case, composition and space runs aside); :class:`ClassNameError`
        when there is none."""
        for i, c in enumerate(self.items):
            if c.name == name:
                return i
        key = class_key(name) if isinstance(name, str) else None
        for i, c in enumerate(self.items):
            if class_key(c.name) == key:
                return i
        raise ClassNameError(f"no class named {name!r}; classes are {list(self.names)}")

    def canonical(self, name: str) -> str:
        """The class's own spelling of ``name`` (``'Mitotic'`` -> ``'mitotic'``)."""
        return self.items[self.index(name)].name

    def color(self, name: str) -> str:
        return self.items[self.index(name)].color

    def order(self, classes: Sequence[str]) -> tuple[str, ...]:
        """``classes`` once each, in class-list order (unknown names last)."""
        rank = {n: k for k, n in enumerate(self.names)}
        return tuple(sorted(set(classes), key=lambda c: rank.get(c, len(rank))))

    def with_class(self, classes: tuple[str, ...], name: str) -> tuple[str, ...]:
        """An image's classes with ``name`` added (multi-label; in class-list order)."""
        return classes if name in classes else self.order(classes + (name,))

    def check_labels(self, classes: str | Sequence[str], multi_label: bool) -> tuple[str, ...]:
        """The classes to give one image, each once; every name must be a class (only one when single-label)."""
        given = (classes,) if isinstance(classes, str) else classes
        out = tuple(dict.fromkeys(self.canonical(c) for c in given))
        if len(out) > 1 and not multi_label:
            raise ProjectError(f"this is a single-label project; cannot give one image {len(out)} classes "
                               "(switch the project to multi-label first)")
        return out

    def added(self, names: Sequence[str], colors: Sequence[str | None]) -> tuple[ClassList, list[ClassInfo]]:
        """The list with new classes at the end (a distinct palette colour where none is given)."""
        new = list(self.items)
        added: list[ClassInfo] = []
        for name, color in zip(names, colors, strict=True):
            clean = validate_name(name, [c.name for c in new])
            info = ClassInfo(clean, validate_color(color) if color is not None
                             else next_color([c.color for c in new]))
            new.append(info)
            added.append(info)
        return ClassList(tuple(new)), added

    def found(self, names: Sequence[str]) -> ClassList:
        """The list with classes found in label files appended (already checked, palette colours)."""
        new = list(self.items)
        for name in names:
            new.append(ClassInfo(name, next_color([c.color for c in new])))
        return ClassList(tuple(new))

    def recolored(self, name: str, color: str) -> ClassList:
        i = self.index(name)
        return self._replaced(i, ClassInfo(self.items[i].name, validate_color(color)))

    def reordered(self, names: Sequence[str]) -> ClassList:
        """The classes in the order of ``names`` (which must name each class once)."""
        if sorted(names) != sorted(self.names):
            raise ClassNameError(f"new order {list(names)} must list each class once: {list(self.names)}")
        return ClassList(tuple(self.items[self.index(n)] for n in names))

    def renamed(self, old: str, new: str) -> ClassList:
        """The list with ``old`` called ``new`` (same place, same colour); ``new`` is checked."""
        i = self.index(old)
        clean = validate_name(new, [n for k, n in enumerate(self.names) if k != i])
        return self._replaced(i, ClassInfo(clean, self.items[i].color))

    def without(self, name: str) -> ClassList:
        i = self.index(name)
        return ClassList(self.items[:i] + self.items[i + 1:])

    def _replaced(self, i: int, info: ClassInfo) -> ClassList:
        return ClassList(self.items[:i] + (info,) + self.items[i + 1:])
