"""The labelling dock: open a project, pick a class, label the page's images with hotkeys.

The dock composes small parts: the page on the canvas (:class:`~.page_view.PageView`), the
classes panel (:class:`~.class_panel.ClassPanel`), the hotkeys (:class:`~.hotkeys.Hotkeys`) and
scripted layers (:mod:`~.scripted`); paging and labelling logic live in
:mod:`~.labelling_model`, labels and sidecars in :class:`~napari_cellclass.core.project.Project`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton
from napari.layers import Layer
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QEvent, QObject

from ..core.project import Project
from ..core.scan import enclosing_project
from .class_panel import ClassPanel
from .compact import compact_dock
from .curation import CurationPanel
from .dialogs import ask_color, ask_yes_no, raise_dock
from .guards import quiet, reports_errors
from .hotkeys import HOTKEY_HELP, Hotkeys
from .labelling_model import LabellingSession, Pager, class_color
from .napari_private import real_viewer
from .page_controls import PageControls
from .page_view import CanvasClicks, PageView, Shown
from .scripted import ScriptedLayer, ScriptedLayers, selection_targets
from .session import CANVAS, GALLERY, session_for

if TYPE_CHECKING:
    import napari


#: Controls of the dock's parts that scripts and tests reach on the dock itself.
_PART_ATTRIBUTES = {
    "classes": frozenset({"class_choice", "class_name", "counts", "add_button", "rename_button",
                          "color_button", "remove_button"}),
    "controls": frozenset({"image_filter", "page_size", "channels", "prev_button", "page_label",
                           "next_button"}),
}


class _LifetimeFilter(QObject):
    """Binds the hotkeys while the widget is docked; unbinds when it is closed or undocked."""

    def __init__(self, widget: LabellingWidget) -> None:
        super().__init__()
        self._widget = widget

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        etype = event.type()
        if etype == QEvent.Type.Close:
            self._widget.unbind_hotkeys()
        elif etype == QEvent.Type.ParentChange:
            if obj.parent() is None:
                self._widget.unbind_hotkeys()
            else:
                self._widget.bind_hotkeys()
        return False


class LabellingWidget(Container):
    """Label a project's images with hotkeys; each image's class is a coloured border.

    Parameters
    ----------
    viewer
        The napari viewer (injected by napari when opened from the Plugins menu).
    project
        A project or folder to open now (else: the folder field, the project another dock
        opened, or layers opened with the napari-cellclass reader are picked up).
    confirm
        ``confirm(question) -> bool`` asked before destructive actions (a Qt dialog by default).
    pick_color
        ``pick_color(current) -> '#rrggbb' | None`` for recolouring (a Qt dialog by default).
    """

    def __init__(self, viewer: napari.viewer.Viewer, project: Project | str | Path | None = None, *,
                 confirm: Callable[[str], bool] | None = None,
                 pick_color: Callable[[str], str | None] | None = None) -> None:
        super().__init__(labels=False)
        self.viewer = real_viewer(viewer)
        self.shared = session_for(self.viewer)
        self.project: Project | None = None
        self.pager: Pager | None = None
        self.session: LabellingSession | None = None
        self.confirm: Callable[[str], bool] = confirm or (lambda q: ask_yes_no(self.native, q))
        self.pick_color: Callable[[str], str | None] = pick_color or (lambda c: ask_color(self.native, c))
        self._classes_shown: tuple[str, ...] = ()  # the class names the panels list
        self.scripted = ScriptedLayers(self.viewer, lambda: self.project, self._color_of)
        self.controls = PageControls(self)
        self.page = PageView(self.viewer, mode=self.controls.display_mode, color_of=self._color_of,
                             on_foreign_project=self._open_foreign, on_other_layer=self.scripted.draw,
                             on_drawn=self._on_page_drawn)
        self.classes = ClassPanel(self)
        for part, names in _PART_ATTRIBUTES.items():  # the parts' controls, reachable on the dock
            for name in names:
                setattr(self, name, getattr(getattr(self, part), name))
        self._hotkeys = Hotkeys(self.viewer, self)
        self._build()
        self.shared.register_page_view(self)
        self.shared.labels_changed.connect(self._on_project_changed)
        self.shared.project_changed.connect(self._on_session_project)
        self.shared.selection_changed.connect(self._on_shared_selection)
        self.shared.marks_changed.connect(self._show_marks)
        self.viewer.layers.selection.events.changed.connect(self._on_layer_selection)
        self.canvas_clicks = CanvasClicks(self.viewer, self._on_canvas_click)
        self._syncing = False
        self._lifetime = _LifetimeFilter(self)
        self.native.installEventFilter(self._lifetime)
        self.bind_hotkeys()
        if project is not None:
            self.open_project(project)
        elif self.shared.project is not None:  # another dock opened one first
            self._on_session_project(self.shared.project)
        self.scripted.draw_all()
        self.page._adopt_layers()

    # ================================================================== building
    def _build(self) -> None:
        self.folder = FileEdit(mode="d", label="Project folder")
        self.open_button = PushButton(text="Open folder")
        self.multi_label = CheckBox(text="multi-label", tooltip="an image may have several classes")
        self.summary = Label(value="No project open: pick a folder or use File > Open Folder")
        self.label_button = PushButton(text="Label (F1)")
        self.label_next_button = PushButton(text="Label + next (F2)")
        self.undo_button = PushButton(text="Undo (Ctrl+Z)")
        self.clear_button = PushButton(text="Clear labels")
        self.help = Label(value=HOTKEY_HELP)
        self.help.native.setWordWrap(True)
        self.curation = CurationPanel(self)

        def row(*widgets: Any) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        self.extend([
            Container(widgets=[self.folder], labels=True), row(self.open_button, self.multi_label), self.summary,
            self.classes, self.controls,
            row(self.label_button, self.label_next_button, self.undo_button, self.clear_button),
            self.curation, self.help,
        ])
        compact_dock(self)  # rows scroll in a short dock; the window never outgrows the screen
        for signal, slot in ((self.open_button.changed, self._on_open_clicked),
                             (self.multi_label.changed, self._on_multi_label),
                             (self.label_button.changed, self.label_selected),
                             (self.label_next_button.changed, self.label_and_next),
                             (self.undo_button.changed, self.undo),
                             (self.clear_button.changed, self.clear_selected)):
            signal.connect(slot)

    @property
    def _shown(self) -> dict[str, Shown]:
        return self.page.shown

    # ================================================================== hotkeys and lifetime
    def bind_hotkeys(self) -> None:
        """Bind the hotkeys (remembering what they replace); they work wherever focus is."""
        self._hotkeys.bind()

    def unbind_hotkeys(self) -> None:
        """Remove our hotkeys and restore whatever was bound before."""
        self._hotkeys.unbind()

    def close(self) -> None:
        """Unbind the hotkeys and stop listening to the viewer and the session."""
        self.unbind_hotkeys()
        self.page.close()
        self.canvas_clicks.close()
        self.viewer.layers.selection.events.changed.disconnect(self._on_layer_selection)
        self.shared.labels_changed.disconnect(self._on_project_changed)
        self.shared.project_changed.disconnect(self._on_session_project)
        self.shared.selection_changed.disconnect(self._on_shared_selection)
        self.shared.marks_changed.disconnect(self._show_marks)
        if self.shared.page_view is self:
            self.shared.register_page_view(None)
        super().close()

    def raise_dock(self) -> None:
        """Show this widget's dock (and its tab) in front."""
        raise_dock(self.native)

    # ================================================================== project
    @reports_errors
    def _on_open_clicked(self) -> None:
        folder = self.folder.value
        if not folder or str(folder) in ("", ".") or not Path(folder).is_dir():
            show_warning("pick the project folder first (Choose directory)")
            return
        self.open_project(folder)

    def open_project(self, project: Project | str | Path) -> None:
        """Open a project (or folder) and show its first page.

        Opening the folder that is already open lists it again (new or changed files show)
        and redraws the page, keeping the undo history. A subfolder of a project opens that
        project.
        """
        if not isinstance(project, Project):
            outer = enclosing_project(project)
            if outer is not None:  # a subfolder of a project: open that project (never a project inside it)
                show_info(f"{Path(project).name} is part of the project {outer}: opened the project")
                project = outer
            if self.shows_folder(project):
                assert self.project is not None
                self.project.rescan()
                self.page.render(reload=True)
                return
            root = Path(project).expanduser().resolve()
            shared = self.shared.project
            project = shared if shared is not None and shared.root == root else Project.open(root)
        self._set_project(project)
        self.page.render()

    def shows_folder(self, folder: str | Path) -> bool:
        """True when ``folder`` is the project this widget has open."""
        root = Path(folder).expanduser()
        return self.project is not None and root.is_dir() and root.resolve() == self.project.root

    @reports_errors
    def _on_session_project(self, project: Project | None) -> None:
        """Another dock opened a project: show it here too."""
        if project is not None and project is not self.project:
            self._set_project(project)
            self.page.render()

    def _open_foreign(self, root: str) -> None:
        """A reader added layers of another project: open it (the page view then adopts them)."""
        shared = self.shared.project
        self._set_project(shared if shared is not None and str(shared.root) == root else Project.open(root))

    def _set_project(self, project: Project) -> None:
        self.project = project
        self.pager = Pager(project, int(self.page_size.value))
        self.session = LabellingSession(project)
        self.page.attach(project, self.pager)
        self.shared.set_project(project)
        with quiet(self.folder, self.multi_label):
            self.folder.value = project.root
            self.multi_label.value = project.multi_label
        self._refresh_choices()
        self._refresh_panel()
        for problem in project.problems:
            show_warning(problem)

    # ================================================================== pages
    def next_page(self) -> None:
        """PageDown: the next page."""
        self.controls.next_page()

    def previous_page(self) -> None:
        """PageUp: the previous page."""
        self.controls.previous_page()

    def show_images(self, image_ids: Sequence[str], title: str = "", select: str | None = None) -> None:
        """Show these project images as the page, in this order (e.g. a confusion-matrix cell).

        The next page continues after the last of them in project order. ``select``: the image
        selected on the new page (default: the first).
        """
        if self.project is None or self.pager is None:
            return
        ids = tuple(i for i in image_ids if i in self.project)
        if not ids:
            return
        self.pager.show_list(ids, title or "chosen images")
        self.page.render(select=select)
        if title:
            self.viewer.status = f"{title}: {len(ids)} images"

    def select_image(self, image_id: str) -> None:
        """Make an image of the page the selected (active) layer."""
        self.page.select(image_id)

    def shows_image(self, image_id: str) -> bool:
        """True when ``image_id`` is on the canvas page."""
        return image_id in self.page.shown

    def page_length(self) -> int:
        """Images per page."""
        return int(self.page_size.value)

    # ================================================================== selection
    def selected(self) -> tuple[list[str], list[ScriptedLayer]]:
        """The images the hotkeys act on: the gallery's selection when it was made last, else the
        project image ids (page order) and scripted layers among the selected layers."""
        if self.shared.selection_source == GALLERY and self.project is not None:
            return [i for i in self.shared.selection if i in self.project], []
        page = self.pager.page_ids if self.pager is not None else ()
        return selection_targets(list(self.viewer.layers.selection), self.project, page)

    def _on_layer_selection(self, _event: Any = None) -> None:
        """Layers were selected (layer list, canvas click, script): the gallery and the highlight follow."""
        if self.project is None or self.page.rendering:  # napari selects each new layer: wait for the page
            return
        page = self.pager.page_ids if self.pager is not None else ()
        ids, targets = selection_targets(list(self.viewer.layers.selection), self.project, page)
        self.page.highlight(ids)
        # the gallery's own choice stays the selection while the canvas shows the same images
        if not self._syncing and (targets or set(ids) != set(self.shared.selection)):
            self.shared.select(ids, CANVAS)

    def _on_page_drawn(self) -> None:
        self.controls.refresh_page()
        self._show_marks()
        self._on_layer_selection()  # the selection mark and the gallery follow the new page

    def _show_marks(self) -> None:
        """Suggested images and likely mistakes carry their corner marks on the canvas and are "Show" choices."""
        if self.pager is not None:
            marks = self.shared.marked_lists()
            if marks != self.pager.marks:
                self.pager.marks = marks
                self.controls.refresh_filters()
        self.page.show_marks(self.shared.suggested, self.shared.mistakes)

    def show_filter(self, name: str) -> None:
        """Show the images of filter ``name`` (e.g. "suggested") from their first page, the first selected."""
        self._show_marks()
        if self.pager is None or name not in self.controls.image_filter.choices:
            return
        if self.controls.image_filter.value == name:
            self.pager.first_page()
            self.page.render()
        else:
            self.controls.image_filter.value = name
        if self.pager.page_ids:
            self.page.select(self.pager.page_ids[0])

    def _on_shared_selection(self, ids: tuple[str, ...], source: str) -> None:
        """The gallery selected images: select their layers on the page."""
        if source != GALLERY:
            return
        self._syncing = True
        try:
            self.page.select_many([i for i in ids if i in self.page.shown])
        finally:
            self._syncing = False

    def _on_canvas_click(self, layer: Layer, modifiers: tuple[str, ...]) -> None:
        """A click on an image of the canvas selects it (Shift/Ctrl: adds or removes it)."""
        iid = next((i for i, shown in self.page.shown.items() if layer in shown.layers), None)
        if iid is None:  # a layer of your own (e.g. added by a script)
            self.viewer.layers.selection.active = layer
            return
        if "Shift" in modifiers or "Control" in modifiers:
            current, _ = selection_targets(list(self.viewer.layers.selection), self.project,
                                           self.pager.page_ids if self.pager is not None else ())
            ids = [i for i in current if i != iid] if iid in current else [*current, iid]
            self.page.select_many(ids)
        else:
            self.page.select(iid)

    # ================================================================== scripted layers
    def save_scripted_layers(self, layers: Sequence[Layer] | None = None) -> list[str]:
        """Write labelled in-memory layers into the project as TIFFs, keeping their labels.

        Default: every labelled scripted layer without a file (see :func:`~.scripted.save_layers`).
        Returns the new image ids.
        """
        return self.scripted.save(layers)

    # ================================================================== labelling
    def _require_selection(self) -> tuple[list[str], list[ScriptedLayer]] | None:
        if self.session is None:
            show_warning("open a project folder first (its cellclass.json holds the classes)")
            return None
        ids, targets = self.selected()
        if not ids and not targets:
            show_warning("select an image first (click it on the canvas or in the gallery)")
            return None
        return ids, targets

    @reports_errors
    def label_selected(self) -> None:
        """F1: give the selected class to the selected image(s); multi-label projects toggle."""
        sel = self._require_selection()
        if sel is None:
            return
        assert self.session is not None
        self.session.label(*sel)
        self.scripted.labelled(sel[1])

    @reports_errors
    def label_and_next(self) -> None:
        """F2: label the selected image(s), then select the next image (turning the page)."""
        sel = self._require_selection()
        if sel is None:
            return
        assert self.session is not None
        ids, targets = sel
        self.session.label(ids, targets)
        self.scripted.labelled(targets)
        if not ids:
            return
        gallery = self.shared.gallery
        if self.shared.selection_source == GALLERY and gallery is not None:  # F2 follows the gallery's order
            if not gallery.select_after(ids[-1]):
                show_info("that was the last image of the gallery")
            return
        self._go_after(ids[-1])

    def _go_after(self, image_id: str) -> None:
        assert self.pager is not None
        current = image_id
        while True:
            nxt, turn = self.pager.next_image(current)
            if nxt is None:
                show_info("that was the last image")
                return
            if turn:
                self.pager.next_page()
                self.page.render(select=nxt)
                return
            if nxt in self.page.shown:
                self.page.select(nxt)
                return
            current = nxt  # unreadable image: skip it

    @reports_errors
    def clear_selected(self) -> None:
        """Remove all labels of the selected image(s)."""
        sel = self._require_selection()
        if sel is None:
            return
        assert self.session is not None
        self.session.clear(*sel)
        self.scripted.draw_all()

    @reports_errors
    def undo(self) -> None:
        """Ctrl+Z: undo the last labelling action."""
        if self.session is None:
            return
        if not self.session.can_undo:
            show_info("nothing to undo")
            return
        self.session.undo()
        self.scripted.draw_all()

    def next_class(self) -> None:
        """F4: select the next class."""
        self.classes.cycle(1)
        self.viewer.status = f"class: {self.class_choice.value}"

    def previous_class(self) -> None:
        """F3: select the previous class."""
        self.classes.cycle(-1)
        self.viewer.status = f"class: {self.class_choice.value}"

    @reports_errors
    def _on_multi_label(self, value: bool) -> None:
        if self.project is None or self.project.multi_label == bool(value):
            return
        try:
            self.project.set_multi_label(bool(value))
        finally:
            with quiet(self.multi_label):
                self.multi_label.value = self.project.multi_label

    # ================================================================== following the project
    def _on_project_changed(self, ids: tuple[str, ...]) -> None:
        """Labels of ``ids`` changed (empty: the classes changed)."""
        if self.project is None:
            return
        if not ids or self.project.class_names != self._classes_shown:  # the classes changed
            self._refresh_choices()
            for iid in self.page.shown:
                self.page.draw(iid)
            self.scripted.draw_all()
            if self.controls.filter_fell_back:  # the page showed a class that is gone
                self.page.render()
        else:
            for iid in ids:
                if iid in self.page.shown:
                    self.page.draw(iid)
            self.scripted.draw_all(ids)  # scripted layers saved into the project show its labels
        self._refresh_panel()

    def _color_of(self, name: str) -> str:
        return class_color(self.project, name)

    def _refresh_choices(self) -> None:
        self._classes_shown = self.project.class_names if self.project is not None else ()
        self.classes.refresh()
        self.controls.refresh_filters()

    def _refresh_panel(self) -> None:
        project = self.project
        if project is None:
            return
        self.summary.value = f"{project.root.name}: labelled {project.n_labelled} / {len(project)}"
        self.classes.refresh_counts()
