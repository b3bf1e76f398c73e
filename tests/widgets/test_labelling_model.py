"""The napari-free logic of the labelling widget: paging, filters, labelling, undo, borders."""
from __future__ import annotations

from pathlib import Path

import pytest

from napari_cellclass._widgets.labelling_model import (
    FILTER_ALL,
    FILTER_LABELLED,
    FILTER_UNLABELLED,
    LabellingSession,
    Pager,
    border_specs,
    image_border_specs,
)
from napari_cellclass.core.errors import ClassNameError
from napari_cellclass.core.sidecars import read_sidecar, sidecar_path

from .conftest import BLUE, RED, write_project


class FakeTarget:
    """A scripted layer stand-in: labels in a dict, optional source file."""

    def __init__(self, source: Path | None = None) -> None:
        self.labels: tuple[str, ...] = ()
        self._source = source

    def get_labels(self) -> tuple[str, ...]:
        return self.labels

    def set_labels(self, classes: tuple[str, ...]) -> None:
        self.labels = classes

    @property
    def source_path(self) -> Path | None:
        return self._source


def test_pages_and_filters(tmp_path):
    p = write_project(tmp_path / "p", n=7)
    ids = p.image_ids
    pager = Pager(p, page_size=3)
    assert pager.first_page() == ids[:3]
    assert pager.page_info() == (1, 3, 7)
    assert pager.next_page() == ids[3:6]
    assert pager.next_page() == ids[6:]
    assert pager.next_page() is None and pager.page_ids == ids[6:]
    assert pager.previous_page() == ids[3:6]
    assert pager.next_image(ids[4]) == (ids[5], False)
    assert pager.next_image(ids[5]) == (ids[6], True)

    p.assign([ids[0], ids[2]], "alpha")
    p.assign(ids[1], "beta")
    assert pager.set_filter(FILTER_UNLABELLED) == ids[3:6]
    # labelling on an "unlabelled" page keeps the page; the next page starts after it
    p.assign(list(ids[3:6]), "beta")
    assert pager.page_ids == ids[3:6]
    assert pager.next_page() == ids[6:]
    assert pager.set_filter("alpha") == (ids[0], ids[2])
    assert pager.set_filter(FILTER_LABELLED)[:2] == ids[:2]
    with pytest.raises(ClassNameError):
        pager.set_filter("no such class")
    assert pager.image_filter == FILTER_LABELLED
    pager.set_filter(FILTER_ALL)
    pager.next_page()
    assert pager.set_page_size(5) == ids[3:]


def test_session_label_cycle_undo(tmp_path):
    p = write_project(tmp_path / "p", n=4)
    s = LabellingSession(p)
    assert s.selected_class == "alpha"
    assert s.cycle_class(1) == "beta" and s.cycle_class(1) == "alpha" and s.cycle_class(-1) == "beta"
    ids = list(p.image_ids)
    s.label(ids[:2])
    assert p.labels(ids[0]) == ("beta",) == p.labels(ids[1])
    s.select_class("alpha")
    s.label([ids[0]])
    assert p.labels(ids[0]) == ("alpha",)
    s.undo()
    assert p.labels(ids[0]) == ("beta",)
    s.undo()
    assert p.labels(ids[0]) == () and not sidecar_path(p.root / ids[0]).exists()
    with pytest.raises(ClassNameError):
        s.select_class("gamma")


def test_scripted_targets_with_and_without_source(tmp_path):
    p = write_project(tmp_path / "p", n=2, multi_label=True)
    outside = tmp_path / "elsewhere" / "cell.tif"
    outside.parent.mkdir()
    outside.write_bytes(b"")
    plain, filed = FakeTarget(), FakeTarget(outside)
    s = LabellingSession(p)
    s.label([], [plain, filed])
    assert plain.labels == ("alpha",) == filed.labels
    assert read_sidecar(sidecar_path(outside))["classes"] == ("alpha",)
    s.select_class("beta")
    s.label([], [filed])
    assert filed.labels == ("alpha", "beta")
    s.label([], [filed])  # multi-label: F1 toggles
    assert filed.labels == ("alpha",)
    s.undo()
    assert filed.labels == ("alpha", "beta")
    s.undo()
    s.undo()
    assert filed.labels == () and not sidecar_path(outside).exists()


def test_border_specs_label_vs_prediction():
    color = {"alpha": RED, "beta": BLUE}.__getitem__
    assert border_specs([], color) == []
    (one,) = border_specs(["alpha"], color)
    assert one.color == RED and one.opacity == 1.0 and one.kind == "label"
    nested = border_specs(["alpha", "beta"], color)
    assert [b.color for b in nested] == [RED, BLUE]
    assert nested[0].thickness > nested[1].thickness  # the top one is thinner: both visible
    (pred,) = border_specs(["alpha"], color, "prediction")
    assert pred.thickness < one.thickness and pred.opacity < 1.0
    # a human label always wins over a prediction
    assert image_border_specs(["beta"], ["alpha"], color)[0].color == BLUE
    assert image_border_specs([], ["alpha"], color)[0].kind == "prediction"


def test_a_marked_list_pages_in_its_own_order(tmp_path):
    p = write_project(tmp_path / "p", n=7)
    ids = p.image_ids
    pager = Pager(p, page_size=2)
    order = (ids[5], ids[1], ids[6], "gone.tif", ids[0])
    pager.marks = {"suggested": order}
    assert pager.set_filter("suggested") == (ids[5], ids[1])  # suggestion order, not project order
    assert pager.filtered_ids() == [ids[5], ids[1], ids[6], ids[0]]  # an image no longer there is left out
    assert pager.next_image(ids[1]) == (ids[6], True)
    assert pager.next_page() == (ids[6], ids[0]) and pager.next_page() is None
    assert pager.previous_page() == (ids[5], ids[1])
    assert pager.page_info() == (1, 2, 4)
