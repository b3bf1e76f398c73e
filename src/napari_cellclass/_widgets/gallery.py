"""The gallery dock: thumbnails of the whole project beside the canvas (Qt model/view, lazy thumbnails).

A list view in icon mode over a list model paints only the visible thumbnails, so 100,000
images cost one row of Python per image and no widget per image. Thumbnails are made by
background threads (newest request first, so the visible ones come first while scrolling),
cached on disk in the project (:mod:`.thumbnails`) and in a bounded in-memory cache here. Each is
framed like its layer (thick class colour, bands for multi-label, thin for a prediction).

Selection is shared with the canvas through the viewer's session: selecting here selects the
layers of the images on the canvas page (and F1/F2/Ctrl+Z act on the gallery's selection);
selecting layers selects their thumbnails. Double-click or Enter shows the image and its
neighbours in gallery order as the canvas page, at full resolution.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import (
    QAbstractListModel,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QObject,
    QRect,
    QSize,
    Qt,
    Signal,
)
from qtpy.QtGui import QColor, QFont, QImage, QKeyEvent, QPainter, QPen, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QSlider,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from ..core.project import Project
from .gallery_model import (
    SORTS,
    GalleryQuery,
    counts_text,
    filter_choices,
    frame_specs,
    list_images,
    mark_text,
    mark_tooltip,
)
from .guards import reports_errors
from .labelling_model import MARK_FILTERS, class_color
from .layers import PAGE_SIZE
from .session import GALLERY, session_for
from .thumbnails import THUMB_PX, ThumbnailStore

if TYPE_CHECKING:
    import napari

#: Thumbnail sizes (px) the slider offers, and the default.
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 48, 160, 96
#: Bytes of decoded thumbnails kept in memory (a few screens of them; the rest is on disk).
MEMORY_BYTES = 96 * 2 ** 20
#: Background threads making thumbnails (reading images releases the GIL); one core stays with the GUI.
THREADS = max(1, min(4, (os.cpu_count() or 2) - 1))
#: Requests kept waiting at most: older ones (scrolled past) are dropped.
MAX_WAITING = 1024
NAME_ROLE = Qt.ItemDataRole.UserRole + 1
MIN_VIEW_HEIGHT = 300
NAME_CACHE = 20_000
TEXT_LINES = 2


class ThumbnailLoader(QObject):
    """Makes thumbnails in background threads, newest request first.

    Finished thumbnails are collected; ``ready`` reaches the GUI thread once per batch and
    :meth:`take` hands the batch over (one repaint for many thumbnails while scrolling).
    """

    ready = Signal()

    def __init__(self, threads: int = THREADS) -> None:
        super().__init__()
        self._store: ThumbnailStore | None = None
        self._waiting: deque[str] = deque()
        self._queued: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._done: list[tuple[str, np.ndarray | None]] = []
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"cellclass-thumbnails-{k}")
                         for k in range(threads)]
        for t in self._threads:
            t.start()

    def set_store(self, store: ThumbnailStore | None) -> None:
        """Make thumbnails of another project from now on (finished ones of the old project are dropped)."""
        with self._cond:
            self._store = store
            self._waiting.clear()
            self._queued.clear()
            self._done.clear()

    def request(self, image_id: str) -> None:
        with self._cond:
            if image_id in self._queued:
                return
            self._waiting.append(image_id)
            self._queued.add(image_id)
            while len(self._waiting) > MAX_WAITING:
                self._queued.discard(self._waiting.popleft())
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                image_id = self._waiting.pop()  # newest first: what is on screen now
                store = self._store
            rgb = store.get(image_id) if store is not None else None
            with self._cond:
                self._queued.discard(image_id)
                if store is not self._store or self._closed:
                    continue
                first = not self._done
                self._done.append((image_id, rgb))
            if first:
                try:
                    self.ready.emit()
                except RuntimeError:  # the dock was deleted meanwhile
                    return

    def take(self) -> list[tuple[str, np.ndarray | None]]:
        """The thumbnails finished since the last call (in the GUI thread)."""
        with self._cond:
            done, self._done = self._done, []
        return done


class GalleryModel(QAbstractListModel):
    """The listed image ids; thumbnails come from a bounded cache or are requested from the loader."""

    thumbnails_arrived = Signal()

    def __init__(self, loader: ThumbnailLoader) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self._loader = loader
        self._pixmaps: OrderedDict[str, QPixmap | None] = OrderedDict()
        self._bytes = 0
        self.size = DEFAULT_SIZE  # thumbnails are kept scaled to the size shown
        self.describe: Callable[[str], str] = str  # the tooltip of an image id (the dock adds its marks)
        loader.ready.connect(self._on_ready)

    def set_ids(self, ids: Sequence[str]) -> None:
        self.beginResetModel()
        self.ids = list(ids)
        self.row_of = {iid: k for k, iid in enumerate(self.ids)}
        self.endResetModel()

    def clear_thumbnails(self) -> None:
        self._pixmaps.clear()
        self._bytes = 0

    def set_size(self, px: int) -> None:
        """Show thumbnails ``px`` wide (they are scaled again from the disk cache when shown)."""
        self.size = int(px)
        self.clear_thumbnails()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802 (Qt API)
        return 0 if parent.isValid() else len(self.ids)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.ids):
            return None
        iid = self.ids[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, NAME_ROLE):
            return iid
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.describe(iid)
        return None

    def pixmap(self, image_id: str) -> QPixmap | None:
        """The thumbnail when it is ready (None: requested, or unreadable)."""
        if image_id in self._pixmaps:
            self._pixmaps.move_to_end(image_id)
            return self._pixmaps[image_id]
        self._loader.request(image_id)
        return None

    def unreadable(self, image_id: str) -> bool:
        """True when the image could not be read (its thumbnail shows that)."""
        return image_id in self._pixmaps and self._pixmaps[image_id] is None

    def _on_ready(self) -> None:
        done = self._loader.take()
        for image_id, rgb in done:
            self._add(image_id, rgb)
        if done:  # same sizes, new pixels: a repaint of what is visible, no relayout, no per-row signal
            self.thumbnails_arrived.emit()

    def _add(self, image_id: str, rgb: np.ndarray | None) -> None:
        pix = None
        if rgb is not None:
            h, w = rgb.shape[:2]
            rgb = np.ascontiguousarray(rgb)
            image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
            pix = QPixmap.fromImage(image.scaled(self.size, self.size, Qt.AspectRatioMode.KeepAspectRatio,
                                                 Qt.TransformationMode.SmoothTransformation))
            self._bytes += 4 * pix.width() * pix.height()
        self._pixmaps[image_id] = pix
        while self._bytes > MEMORY_BYTES and self._pixmaps:
            _, old = self._pixmaps.popitem(last=False)
            if old is not None:
                self._bytes -= 4 * old.width() * old.height()


class ThumbnailDelegate(QStyledItemDelegate):
    """Paints a thumbnail in its frame (label, bands, prediction) with the image name under it."""

    def __init__(self, dock: GalleryDock) -> None:
        super().__init__(dock)
        self._dock = dock
        self.size = DEFAULT_SIZE
        self._names: dict[tuple[str, int], str] = {}  # laid-out names (the font is the view's)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802 (Qt API)
        line = option.fontMetrics.height()
        return QSize(self.size + 12, self.size + 12 + TEXT_LINES * line + 4)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        model = index.model()
        iid = model.data(index, NAME_ROLE)
        if iid is None:
            return
        dock = self._dock
        r = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.save()
        if selected:
            painter.fillRect(r, option.palette.highlight())
        box = QRect(r.left() + 6, r.top() + 6, self.size, self.size)
        pix = dock.model.pixmap(iid)
        if pix is not None:
            x = box.left() + (self.size - pix.width()) // 2
            y = box.top() + (self.size - pix.height()) // 2
            painter.drawPixmap(x, y, pix)
        else:
            painter.fillRect(box, QColor(40, 40, 40))
            if dock.model.unreadable(iid):
                painter.setPen(QColor(220, 120, 120))
                painter.drawText(box, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, "cannot be read")
        for spec in dock.frame(iid):  # bottom first: nested bands stay visible
            width = max(1, round(spec.thickness * self.size / 128 * (0.6 if spec.kind == "label" else 0.5)))
            color = QColor(spec.color)
            color.setAlphaF(spec.opacity)
            pen = QPen(color, width)
            pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
            painter.setPen(pen)
            inset = width // 2
            painter.drawRect(box.adjusted(inset, inset, -inset - 1, -inset - 1))
        badge = dock.badge(iid)
        if badge:
            self._paint_badge(painter, box, badge, option)
        painter.setPen(option.palette.highlightedText().color() if selected else option.palette.text().color())
        painter.setFont(QFont(option.font))
        text_rect = QRect(r.left() + 2, box.bottom() + 3, r.width() - 4, r.bottom() - box.bottom() - 3)
        key = (iid, text_rect.width())
        text = self._names.get(key)
        if text is None:
            if len(self._names) > NAME_CACHE:
                self._names.clear()
            text = self._names[key] = name_lines(iid, option.fontMetrics, text_rect.width())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, text)
        painter.restore()


    def _paint_badge(self, painter: QPainter, box: QRect, text: str, option: QStyleOptionViewItem) -> None:
        """A suggestion's rank or a likely mistake's class, on a dark plate at the thumbnail's top left."""
        metrics = option.fontMetrics
        width = min(box.width() - 4, metrics.horizontalAdvance(text) + 8)
        plate = QRect(box.left() + 2, box.top() + 2, width, metrics.height() + 2)
        painter.fillRect(plate, QColor(0, 0, 0, 190))
        painter.setPen(QColor(255, 212, 0) if text.startswith("★") else QColor(255, 110, 110))
        shown = metrics.elidedText(text, Qt.TextElideMode.ElideRight, width - 6)
        painter.drawText(plate.adjusted(4, 0, -2, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                         shown)


def name_lines(image_id: str, metrics: Any, width: int, lines: int = TEXT_LINES) -> str:
    """The image id in at most ``lines`` lines of ``width`` px: broken after a folder's ``/`` when
    that fits (else at any character), never cut in the middle; when it is too long, its start is
    left out (the end tells images apart)."""
    out: list[str] = []
    rest = image_id
    while rest and len(out) < lines:
        lo, hi = 1, len(rest)  # the longest tail that fits (at least one character)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if metrics.horizontalAdvance(rest[-mid:]) <= width:
                lo = mid
            else:
                hi = mid - 1
        if lo < len(rest) and len(out) + 1 < lines:  # more lines to come: break after a "/" when one fits
            cut = rest.rfind("/", len(rest) - lo - 1, len(rest) - 1)
            if cut >= len(rest) - lo - 1:
                lo = len(rest) - cut - 1
        out.insert(0, rest[-lo:])
        rest = rest[:-lo]
    if rest and out:
        first = out[0]
        while len(first) > 1 and metrics.horizontalAdvance("…" + first) > width:
            first = first[1:]
        out[0] = "…" + first
    return "\n".join(out)


class GalleryView(QListView):
    """Icon-mode list: static grid, rubber-band and Shift/Ctrl selection, Enter shows the image."""

    activated_image = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSelectionRectVisible(True)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(2000)
        self.setDragEnabled(False)
        self.setWrapping(True)
        self.setSpacing(2)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setMinimumHeight(MIN_VIEW_HEIGHT)  # two rows of thumbnails, wherever the dock goes
        self.doubleClicked.connect(self._on_double_click)

    def _on_double_click(self, index: QModelIndex) -> None:
        iid = index.data(NAME_ROLE)
        if iid:
            self.activated_image.emit(iid)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt API)
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            idx = self.currentIndex()
            if idx.isValid():
                self.activated_image.emit(idx.data(NAME_ROLE))
            return
        super().keyPressEvent(event)


class GalleryDock(QWidget):
    """Thumbnails of the whole project: filter, sort, select, label with the hotkeys, open on the canvas.

    Parameters
    ----------
    viewer
        The napari viewer (injected by napari when opened from the Plugins menu).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        from .napari_private import real_viewer

        self.viewer = real_viewer(viewer)
        self.shared = session_for(self.viewer)
        self.project: Project | None = None
        self._listed: tuple[str, ...] = ()  # the project's image ids the list was made from
        self._syncing = False
        self.loader = ThumbnailLoader()
        self.model = GalleryModel(self.loader)
        self.model.describe = lambda iid: mark_tooltip(iid, self.shared.suggested, self.shared.mistakes)
        self.view = GalleryView()
        self.view.setModel(self.model)
        self.delegate = ThumbnailDelegate(self)
        self.view.setItemDelegate(self.delegate)
        self.model.thumbnails_arrived.connect(self.view.viewport().update)
        self._build()
        self.shared.register_gallery(self)
        self.shared.project_changed.connect(self._on_project)
        self.shared.labels_changed.connect(self._on_labels)
        self.shared.selection_changed.connect(self._on_session_selection)
        self.shared.predictions_changed.connect(self._on_predictions)
        self.shared.marks_changed.connect(self._on_predictions)
        self.view.selectionModel().selectionChanged.connect(self._on_view_selection)
        self.view.activated_image.connect(self.show_on_canvas)
        self._on_project(self.shared.project)

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        self.image_filter = QComboBox()
        self.image_filter.setToolTip("which images to list")
        self.sort = QComboBox()
        self.sort.addItems(list(SORTS))
        self.sort.setToolTip("order of the thumbnails (F2 follows it)")
        self.name_filter = QLineEdit()
        self.name_filter.setPlaceholderText("filter by name…")
        self.name_filter.setClearButtonEnabled(True)
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(MIN_SIZE, MAX_SIZE)
        self.size_slider.setValue(DEFAULT_SIZE)
        self.size_slider.setToolTip("thumbnail size")
        self.counts = QLabel("No project open")
        self.counts.setWordWrap(True)
        top = QHBoxLayout()
        for w in (self.image_filter, self.sort):
            top.addWidget(w, 1)
        second = QHBoxLayout()
        second.addWidget(self.name_filter, 2)
        second.addWidget(QLabel("size"))
        second.addWidget(self.size_slider, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addLayout(second)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.counts)
        self.image_filter.currentTextChanged.connect(self._requery)
        self.sort.currentTextChanged.connect(self._requery)
        self.name_filter.textChanged.connect(self._requery)
        self.size_slider.valueChanged.connect(self.set_thumbnail_size)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(4 * (DEFAULT_SIZE + 16) + 24, 500)

    # ------------------------------------------------------------------ lifetime
    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.close_gallery()
        super().closeEvent(event)

    def close_gallery(self) -> None:
        """Stop the thumbnail threads and stop following the session."""
        self.loader.close()
        for signal, slot in ((self.shared.project_changed, self._on_project),
                             (self.shared.labels_changed, self._on_labels),
                             (self.shared.selection_changed, self._on_session_selection),
                             (self.shared.predictions_changed, self._on_predictions),
                             (self.shared.marks_changed, self._on_predictions)):
            signal.disconnect(slot)
        if self.shared.gallery is self:
            self.shared.register_gallery(None)

    # ------------------------------------------------------------------ listing
    @property
    def query(self) -> GalleryQuery:
        return GalleryQuery(self.image_filter.currentText(), self.sort.currentText(), self.name_filter.text().strip())

    @reports_errors
    def _on_project(self, project: Project | None) -> None:
        self.project = project
        self.model.clear_thumbnails()
        self.loader.set_store(ThumbnailStore(project, THUMB_PX) if project is not None else None)
        if project is not None and not self.shared.predictions:
            self.shared.predictions = _stored_predictions(project)
        self._refresh_filters()
        self._requery()

    def _refresh_filters(self) -> None:
        current = self.image_filter.currentText()
        choices = filter_choices(self.project, self.shared.predictions, self.shared.marked_lists())
        self.image_filter.blockSignals(True)
        self.image_filter.clear()
        self.image_filter.addItems(choices)
        self.image_filter.setCurrentIndex(choices.index(current) if current in choices else 0)
        self.image_filter.blockSignals(False)
        if current and current not in choices:
            self._requery()

    @reports_errors
    def _requery(self, *_: Any) -> None:
        """List the images again for the current filter, sort and name part."""
        if self.project is None:
            self.model.set_ids([])
            self.counts.setText("No project open: open a folder in the Labelling dock or File > Open Folder")
            return
        keep = self.selected_ids()
        self._listed = self.project.image_ids
        self.model.set_ids(list_images(self.project, self.shared.predictions, self.query, self.shared.marked_lists()))
        self._select_rows(keep, scroll=True)
        self._refresh_counts()

    def _refresh_counts(self) -> None:
        if self.project is not None:
            self.counts.setText(counts_text(self.project, self.shared.predictions, len(self.model.ids)))

    def set_thumbnail_size(self, px: int) -> None:
        """Show thumbnails ``px`` pixels wide."""
        self.delegate.size = int(px)
        self.model.set_size(px)
        self.view.doItemsLayout()

    def frame(self, image_id: str) -> list:
        """The frame specs of a thumbnail (see :func:`~.gallery_model.frame_specs`)."""
        if self.project is None or image_id not in self.project:
            return []
        return frame_specs(self.project, self.shared.predictions, image_id, self._color_of)

    def _color_of(self, name: str) -> str:
        return class_color(self.project, name)

    # ------------------------------------------------------------------ following the session
    def _on_labels(self, ids: tuple[str, ...]) -> None:
        if not ids:  # the classes changed, or the folder was listed again
            self._refresh_filters()
            if self.project is not None and self.project.image_ids is not self._listed:
                self._requery()
                return
        self.view.viewport().update()  # frames; the list itself stays as it is while labelling
        self._refresh_counts()

    def _on_predictions(self) -> None:
        """New predictions or marks: the filters offered, the frames and badges, a marked list made again."""
        self._refresh_filters()
        if self.query.image_filter in MARK_FILTERS:
            self._requery()
        self.view.viewport().update()
        self._refresh_counts()

    def badge(self, image_id: str) -> str:
        """The mark drawn on a thumbnail (see :func:`~.gallery_model.mark_text`)."""
        return mark_text(image_id, self.shared.suggested, self.shared.mistakes, self.shared.uncertain_ids)

    def show_filter(self, name: str) -> None:
        """List the images of filter ``name`` (e.g. the suggested ones) when it is offered."""
        self._refresh_filters()
        k = self.image_filter.findText(name)
        if k >= 0:
            self.image_filter.setCurrentIndex(k)

    # ------------------------------------------------------------------ selection
    def selected_ids(self) -> list[str]:
        """The selected images, in gallery order."""
        rows = sorted(i.row() for i in self.view.selectionModel().selectedIndexes())
        return [self.model.ids[r] for r in rows if r < len(self.model.ids)]

    def select(self, ids: Sequence[str]) -> None:
        """Select these images (the canvas follows)."""
        self._select_rows(ids, scroll=True)

    def _select_rows(self, ids: Sequence[str], scroll: bool) -> None:
        rows = [self.model.row_of[i] for i in ids if i in self.model.row_of]
        sm = self.view.selectionModel()
        sel = QItemSelection()
        for r in rows:
            idx = self.model.index(r)
            sel.select(idx, idx)
        sm.select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        if rows:
            current = self.model.index(rows[-1])
            sm.setCurrentIndex(current, QItemSelectionModel.SelectionFlag.NoUpdate)
            if scroll:
                self.view.scrollTo(current)

    def _on_view_selection(self, *_: Any) -> None:
        if not self._syncing:
            self.shared.select(self.selected_ids(), GALLERY)

    def _on_session_selection(self, ids: tuple[str, ...], source: str) -> None:
        if source == GALLERY:
            return
        self._syncing = True
        try:
            self._select_rows(ids, scroll=True)
        finally:
            self._syncing = False

    def select_after(self, image_id: str) -> bool:
        """Select the image after ``image_id`` in gallery order (F2); False at the end."""
        row = self.model.row_of.get(image_id)
        if row is None or row + 1 >= len(self.model.ids):
            return False
        nxt = self.model.ids[row + 1]
        self.select([nxt])
        page = self.shared.page_view
        if page is not None and not page.shows_image(nxt):
            self.show_on_canvas(nxt)
        return True

    # ------------------------------------------------------------------ the canvas
    @reports_errors
    def show_on_canvas(self, image_id: str) -> None:
        """Show ``image_id`` and its neighbours in gallery order as the canvas page, that image selected."""
        row = self.model.row_of.get(image_id)
        if row is None:
            return
        page = self.shared.page_view
        n = page.page_length() if page is not None else PAGE_SIZE
        start = row // n * n
        ids = self.model.ids[start:start + n]
        if not self.shared.show_images(ids, f"gallery ({self.query.image_filter}, {self.query.sort})", select=image_id):
            self.counts.setText("open the Labelling dock to see images on the canvas")


def _stored_predictions(project: Project) -> dict:
    from ..core.errors import CellclassError
    from ..core.prediction_review import project_predictions

    try:
        return project_predictions(project)
    except CellclassError:
        return {}
