"""Class names that only look different are one class; another window's class edits are never undone here."""
from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.errors import ClassNameError
from napari_cellclass.core.project import Project


@pytest.fixture
def root(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / f"im{i}.png")
    return tmp_path


@pytest.mark.parametrize("twin", ["Mitotic", " mitotic ", "MITOTIC", unicodedata.normalize("NFD", "café"),
                                  "CAFÉ", "café\u00a0"])
def test_look_alike_names_are_refused(root, twin):
    p = Project.open(root)
    p.add_classes(["mitotic", "café"])
    with pytest.raises(ClassNameError, match="already exists"):
        p.add_class(twin)
    assert p.class_names == ("mitotic", "café")


@pytest.mark.parametrize("hidden", ["mito\u200btic", "\u200emitotic", "mi\u00adtotic", "mito\ufefftic"])
def test_invisible_characters_are_refused(root, hidden):
    p = Project.open(root)
    with pytest.raises(ClassNameError, match="invisible"):
        p.add_class(hidden)


def test_names_are_stored_composed_with_single_spaces(root):
    p = Project.open(root)
    p.add_class(unicodedata.normalize("NFD", "G1  phase\u00a0café"))
    assert p.class_names == ("G1 phase café",)
    assert unicodedata.is_normalized("NFC", Project.open(root).class_names[0])


def test_labelling_finds_the_class_whatever_the_case(root):
    p = Project.open(root)
    p.add_classes(["mitotic", "interphase"])
    p.assign("im0.png", "MITOTIC")
    p.set_labels("im1.png", ["Interphase"])
    p.rename_class("Mitotic", "dividing")
    assert (p.labels("im0.png"), p.labels("im1.png")) == (("dividing",), ("interphase",))
    assert Project.open(root).class_names == ("dividing", "interphase")


def test_a_class_renamed_in_another_window_is_not_written_back(root):
    p = Project.open(root)
    p.add_classes(["mitotic", "interphase"])
    p.assign("im1.png", "mitotic")
    other = Project.open(root)  # a second window on the same folder
    p.rename_class("mitotic", "dividing")
    with pytest.raises(ClassNameError, match="no class named 'mitotic'"):
        other.assign("im0.png", "mitotic")
    assert other.class_names == ("dividing", "interphase") and other.labels("im1.png") == ("dividing",)
    p.remove_class("interphase")
    other.set_labels("im2.png", ["dividing"])
    fresh = Project.open(root)
    assert fresh.class_names == ("dividing",)
    assert [fresh.labels(f"im{i}.png") for i in range(3)] == [(), ("dividing",), ("dividing",)]


def test_a_class_added_in_another_window_is_known_at_the_next_label(root):
    p = Project.open(root)
    p.add_class("mitotic")
    other = Project.open(root)
    p.add_class("apoptotic")
    other.assign("im0.png", "apoptotic")
    assert Project.open(root).labels("im0.png") == ("apoptotic",)
