"""The paging part of the labelling dock: which images to show, page size, channels, page turns."""
from __future__ import annotations

from typing import Any, Protocol

from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox
from napari.utils.notifications import show_info

from ..core.project import Project
from .guards import quiet, reports_errors
from .labelling_model import SPECIAL_FILTERS, Pager
from .layers import BLEND, COMPOSITE, PAGE_SIZE
from .page_view import PageView


class PageOwner(Protocol):
    """What the controls need from the labelling dock."""

    project: Project | None
    pager: Pager | None
    page: PageView


class PageControls(Container):
    """Show (all, unlabelled, labelled, one class), page size, channel display, previous/next page."""

    def __init__(self, owner: PageOwner) -> None:
        super().__init__(labels=False)
        self._owner = owner
        self.filter_fell_back = False  # the last refresh replaced a filter on a class that is gone
        self.image_filter = ComboBox(label="Show", choices=self._filter_choices)
        self.page_size = SpinBox(label="Page size", value=PAGE_SIZE, min=1, max=100)
        self.channels = ComboBox(label="Channels", choices=self._channel_choices)
        self.prev_button = PushButton(text="◀ Previous", tooltip="previous page (PageUp)")
        self.page_label = Label(value="")
        self.next_button = PushButton(text="Next ▶", tooltip="next page (PageDown)")
        self.extend([
            Container(widgets=[self.image_filter, self.page_size, self.channels], labels=True),
            Container(widgets=[self.prev_button, self.page_label, self.next_button], layout="horizontal",
                      labels=False),
        ])
        self.margins = (0, 0, 0, 0)
        self.image_filter.changed.connect(self._on_filter)
        self.page_size.changed.connect(self._on_page_size)
        self.channels.changed.connect(self._on_channels)
        self.prev_button.changed.connect(self.previous_page)
        self.next_button.changed.connect(self.next_page)

    def _filter_choices(self, _widget: Any = None) -> list[str]:
        project = self._owner.project
        pager = self._owner.pager
        marked = [name for name, ids in (pager.marks if pager is not None else {}).items() if ids]
        return list(SPECIAL_FILTERS) + marked + (list(project.class_names) if project is not None else [])

    def _channel_choices(self, _widget: Any = None) -> list[str]:
        page = getattr(self._owner, "page", None)
        n = page.max_channels if page is not None else 1
        return [BLEND, COMPOSITE] + [f"channel {k + 1}" for k in range(n if n > 1 else 0)]

    def display_mode(self) -> str | int:
        """``"composite"``, ``"RGB blend"`` or the index of the one channel to show."""
        value = self.channels.value or BLEND
        if value in (COMPOSITE, BLEND):
            return value
        return int(str(value).split()[-1]) - 1

    # ------------------------------------------------------------------ turning
    @reports_errors
    def next_page(self) -> None:
        pager = self._owner.pager
        if pager is None:
            return
        if pager.next_page() is None:
            show_info("this is the last page")
            return
        self._owner.page.render()

    @reports_errors
    def previous_page(self) -> None:
        pager = self._owner.pager
        if pager is None:
            return
        if pager.previous_page() is None:
            show_info("this is the first page")
            return
        self._owner.page.render()

    @reports_errors
    def _on_filter(self, value: str | None) -> None:
        pager = self._owner.pager
        if pager is None or not value or value == pager.image_filter:
            return
        pager.set_filter(value)
        self._owner.page.render()

    @reports_errors
    def _on_page_size(self, value: int) -> None:
        pager = self._owner.pager
        if pager is not None:
            pager.set_page_size(value)
            self._owner.page.render()

    @reports_errors
    def _on_channels(self, _value: str | None) -> None:
        if self._owner.pager is not None:
            self._owner.page.render()

    # ------------------------------------------------------------------ showing
    def refresh_filters(self) -> None:
        """The filter choices after the classes changed (a removed class falls back to all)."""
        pager = self._owner.pager
        self.filter_fell_back = False
        with quiet(self.image_filter):
            self.image_filter.reset_choices()
            if pager is not None:
                if pager.image_filter not in self._filter_choices():
                    pager.set_filter(SPECIAL_FILTERS[0])
                    self.filter_fell_back = True
                self.image_filter.value = pager.image_filter

    def refresh_page(self) -> None:
        """The page label and the channel choices after a page was drawn."""
        pager = self._owner.pager
        if pager is None:
            return
        self.page_label.value = pager.page_text()
        with quiet(self.channels):
            value = self.channels.value
            self.channels.reset_choices()
            if value in self._channel_choices():
                self.channels.value = value
