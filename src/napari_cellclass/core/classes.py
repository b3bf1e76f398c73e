"""Class definitions: names, colours, order; validation of names and colours."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .errors import ClassNameError

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
    clean = name.strip()
    if not clean:
        raise ClassNameError("class name is empty; type a name such as 'mitotic'")
    bad = [repr(c) for c in sorted(set(clean) & _FORBIDDEN)]
    if any(unicodedata.category(c) in _CONTROL for c in clean if c != "\x00"):
        bad.append("control characters or line breaks")
    if bad:
        shown = clean if len(clean) <= MAX_NAME_LENGTH else clean[:MAX_NAME_LENGTH] + "..."
        raise ClassNameError(
            f"class name {shown!r} contains {' '.join(bad)}; path separators and "
            "these characters are not allowed in class names"
        )
    if clean in (".", ".."):
        raise ClassNameError(f"class name {clean!r} is not allowed")
    if len(clean) > MAX_NAME_LENGTH:
        raise ClassNameError(f"class name is longer than {MAX_NAME_LENGTH} characters")
    if clean.casefold() in {e.casefold() for e in existing}:
        raise ClassNameError(f"a class named {clean!r} already exists; pick another name")
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


def hex_to_rgba(color: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    """``#rrggbb`` to an RGBA tuple of floats in 0-1."""
    c = validate_color(color)
    return (int(c[1:3], 16) / 255, int(c[3:5], 16) / 255, int(c[5:7], 16) / 255, alpha)
