"""The classes part of the labelling dock: the class to label with, counts, and class editing."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton
from napari.utils.notifications import show_warning

from ..core.project import Project
from .guards import quiet, reports_errors
from .labelling_model import LabellingSession


class ClassOwner(Protocol):
    """What the panel needs from the labelling dock."""

    project: Project | None
    session: LabellingSession | None
    confirm: Callable[[str], bool]
    pick_color: Callable[[str], str | None]


class ClassPanel(Container):
    """Pick the class (F3/F4), see per-class counts, add, rename, recolour and remove classes."""

    def __init__(self, owner: ClassOwner) -> None:
        super().__init__(labels=False)
        self._owner = owner
        self.class_choice = ComboBox(label="Class (F3/F4)", choices=self._class_choices)
        self.counts = Label(value="")
        self.counts.native.setWordWrap(True)
        self.class_name = LineEdit(label="Name", value="")
        self.add_button = PushButton(text="Add class")
        self.rename_button = PushButton(text="Rename", tooltip="rename the class to the name typed above")
        self.color_button = PushButton(text="Colour…")
        self.remove_button = PushButton(text="Remove class")
        self.extend([
            Container(widgets=[self.class_choice], labels=True), self.counts,
            Container(widgets=[self.class_name], labels=True),
            Container(widgets=[self.add_button, self.rename_button, self.color_button, self.remove_button],
                      layout="horizontal", labels=False),
        ])
        self.margins = (0, 0, 0, 0)
        self.class_choice.changed.connect(self._on_class_choice)
        self.add_button.changed.connect(self._on_add_class)
        self.rename_button.changed.connect(self._on_rename_class)
        self.color_button.changed.connect(self._on_recolor_class)
        self.remove_button.changed.connect(self._on_remove_class)

    def _class_choices(self, _widget: Any = None) -> list[str]:
        project = self._owner.project
        return list(project.class_names) if project is not None else []

    # ------------------------------------------------------------------ showing
    def refresh(self) -> None:
        """The class list, the selected class and the counts, from the project."""
        session = self._owner.session
        with quiet(self.class_choice):
            self.class_choice.reset_choices()
            if session is not None:
                session.ensure_selection()
                if session.selected_class is not None:
                    self.class_choice.value = session.selected_class
        self.refresh_counts()

    def refresh_counts(self) -> None:
        project = self._owner.project
        if project is None:
            return
        self.counts.value = "<br>".join(
            f'<span style="color:{project.class_color(n)}">■</span> {n}: {c}'
            for n, c in project.counts().items()
        ) or "No classes yet: type a name and press Add class"

    def cycle(self, step: int) -> None:
        """F3/F4: select the previous (``-1``) or next (``1``) class, wrapping around."""
        session = self._owner.session
        name = session.cycle_class(step) if session is not None else None
        if name is not None:
            self.class_choice.value = name

    # ------------------------------------------------------------------ editing
    def _on_class_choice(self, value: str | None) -> None:
        session = self._owner.session
        if session is not None and value:
            session.select_class(value)

    def _project(self) -> Project | None:
        project = self._owner.project
        if project is None:
            show_warning("open a project folder first (its cellclass.json holds the classes)")
        return project

    @reports_errors
    def _on_add_class(self) -> None:
        if (project := self._project()) is None:
            return
        info = project.add_class(self.class_name.value)
        self.class_name.value = ""
        self.class_choice.value = info.name

    @reports_errors
    def _on_rename_class(self) -> None:
        if (project := self._project()) is None or not self.class_choice.value:
            return
        old, new = self.class_choice.value, self.class_name.value
        project.rename_class(old, new)
        self.class_name.value = ""
        self.class_choice.value = new.strip()

    @reports_errors
    def _on_recolor_class(self) -> None:
        if (project := self._project()) is None or not self.class_choice.value:
            return
        name = self.class_choice.value
        color = self._owner.pick_color(project.class_color(name))
        if color:
            project.set_class_color(name, color)

    @reports_errors
    def _on_remove_class(self) -> None:
        if (project := self._project()) is None or not self.class_choice.value:
            return
        name = self.class_choice.value
        n = project.counts().get(name, 0)
        question = f"Class '{name}' labels {n} image(s). Remove it and unlabel them? This cannot be undone."
        if project.remove_affects_history(name):
            question += f" Earlier undo steps will restore their images without '{name}'."
        if n and not self._owner.confirm(question):
            return
        project.remove_class(name, force=True)
