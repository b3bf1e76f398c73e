"""The class list and the undo history on their own: every edit returns a new value, checks come first."""
from __future__ import annotations

import pytest

from napari_cellclass.core.classes import ClassInfo, ClassList
from napari_cellclass.core.errors import ClassNameError, ProjectError
from napari_cellclass.core.undo import MAX_UNDO, UndoHistory, UndoStep


def test_edits_return_new_lists_and_leave_the_old_one():
    empty = ClassList()
    two, added = empty.added(["a", " b "], [None, "#ABC"])
    assert [c.name for c in added] == ["a", "b"] and two.names == ("a", "b")
    assert two.color("b") == "#aabbcc" and two.color("a") != "#aabbcc"
    assert empty.names == ()
    assert two.renamed("a", "alpha").items == (ClassInfo("alpha", two.color("a")), two.items[1])
    assert two.reordered(["b", "a"]).names == ("b", "a")
    assert two.without("a").names == ("b",)
    assert two.recolored("a", "#000").color("a") == "#000000"
    assert two.names == ("a", "b")


def test_every_edit_is_checked_before_anything_changes():
    two, _ = ClassList().added(["a", "b"], [None, None])
    with pytest.raises(ClassNameError, match="already exists"):
        two.added(["c", "A"], [None, None])
    with pytest.raises(ClassNameError, match="already exists"):
        two.renamed("a", "B")
    with pytest.raises(ClassNameError, match="no class named"):
        two.without("z")
    with pytest.raises(ClassNameError, match="each class once"):
        two.reordered(["a"])
    with pytest.raises(ClassNameError, match="colour"):
        two.recolored("a", "red")


def test_labels_of_one_image_are_checked_against_the_list():
    two, _ = ClassList().added(["a", "b"], [None, None])
    assert two.check_labels("a", multi_label=False) == ("a",)
    assert two.check_labels(["b", "a", "b"], multi_label=True) == ("b", "a")
    with pytest.raises(ProjectError, match="single-label"):
        two.check_labels(["a", "b"], multi_label=False)
    with pytest.raises(ClassNameError):
        two.check_labels(["c"], multi_label=True)
    assert two.with_class(("b",), "a") == ("a", "b")  # class order, not click order


def test_found_classes_get_distinct_palette_colours():
    one, _ = ClassList().added(["a"], [None])
    three = one.found(["x", "y"])
    assert three.names == ("a", "x", "y") and len(set(three.colors)) == 3


def test_undo_history_is_bounded_and_remapped():
    history = UndoHistory()
    for k in range(MAX_UNDO + 5):
        history.push(UndoStep(f"step {k}", (("img.png", ("a",), b"old", "human"),)))
    assert history.mentions("a") and not history.mentions("b")
    history.remap({"a": "alpha"})
    step = history.pop()
    assert step.before == (("img.png", ("alpha",), None, "human"),)  # fresh sidecar with the new name
    n = 1
    while history.pop() is not None:
        n += 1
    assert n == MAX_UNDO and not history
