"""What the gallery lists (Qt-free): filters, sorts, frames and counts."""
from __future__ import annotations

import numpy as np
from PIL import Image

from napari_cellclass._widgets.gallery_model import (
    GalleryQuery,
    counts_text,
    filter_choices,
    frame_specs,
    list_images,
    mark_text,
    mark_tooltip,
)
from napari_cellclass.core.predictions import Prediction
from napari_cellclass.core.project import Project


def _project(tmp_path, n=6):
    for i in range(n):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(tmp_path / f"im{i}.png")
    p = Project.open(tmp_path)
    p.add_class("a", "#ff0000")
    p.add_class("b", "#0000ff")
    return p


def test_filters_sorts_and_the_name_part(tmp_path):
    p = _project(tmp_path)
    ids = p.image_ids
    p.assign(ids[4], "a")
    p.assign(ids[1], "b")
    preds = {ids[0]: Prediction(ids[0], ("b",), 0.7), ids[2]: Prediction(ids[2], ("a",), 0.55),
             ids[3]: Prediction(ids[3], ("b",), 0.99)}
    assert list_images(p, preds, GalleryQuery()) == list(ids)
    assert list_images(p, preds, GalleryQuery("unlabelled")) == [ids[0], ids[2], ids[3], ids[5]]
    assert list_images(p, preds, GalleryQuery("b")) == [ids[1]]
    assert list_images(p, preds, GalleryQuery("predicted: b")) == [ids[0], ids[3]]
    assert list_images(p, preds, GalleryQuery(sort="class")) == [ids[4], ids[1], ids[0], ids[2], ids[3], ids[5]]
    assert list_images(p, preds, GalleryQuery(sort="predicted class")) == [ids[2], ids[0], ids[3], ids[1], ids[4],
                                                                           ids[5]]
    low = list_images(p, preds, GalleryQuery(sort="confidence (lowest first)"))
    assert low[:3] == [ids[2], ids[0], ids[3]]  # images without a prediction last
    assert list_images(p, preds, GalleryQuery(sort="confidence (highest first)"))[:3] == [ids[3], ids[0], ids[2]]
    assert list_images(p, preds, GalleryQuery(name="IM3")) == [ids[3]]
    assert filter_choices(p, preds) == ["all images", "unlabelled", "labelled", "a", "b", "predicted: a",
                                        "predicted: b"]
    assert counts_text(p, preds, 4) == "4 shown of 6 · 2 labelled · 4 unlabelled · 3 predicted"


def test_frames_follow_the_canvas_borders(tmp_path):
    p = _project(tmp_path)
    ids = p.image_ids
    p.assign(ids[0], "a")
    preds = {ids[0]: Prediction(ids[0], ("b",), 0.9), ids[1]: Prediction(ids[1], ("b",), 0.9)}
    color = p.class_color
    (label,) = frame_specs(p, preds, ids[0], color)  # a human label wins over a prediction
    (pred,) = frame_specs(p, preds, ids[1], color)
    assert label.kind == "label" and label.color == "#ff0000"
    assert pred.kind == "prediction" and pred.color == "#0000ff" and pred.thickness < label.thickness
    assert frame_specs(p, preds, ids[2], color) == []


def test_marked_lists_keep_their_order_and_carry_badges(tmp_path):
    p = _project(tmp_path)
    ids = p.image_ids
    marks = {"suggested": [ids[4], ids[0], "gone.png"], "likely mistakes": [ids[2]]}
    assert filter_choices(p, {}, marks)[:5] == ["all images", "unlabelled", "labelled", "suggested", "likely mistakes"]
    assert "suggested" not in filter_choices(p, {}, {"suggested": []})
    assert list_images(p, {}, GalleryQuery("suggested"), marks) == [ids[4], ids[0]]
    assert list_images(p, {}, GalleryQuery("suggested", name="im0"), marks) == [ids[0]]
    suggested = {ids[4]: "typical", ids[0]: "typical"}
    mistakes = {ids[2]: {"given": "a", "suggested": "b", "score": 0.9}}
    assert mark_text(ids[0], suggested, mistakes) == "★ 2"
    assert mark_text(ids[2], suggested, mistakes) == "→ b" and mark_text(ids[3], suggested, mistakes) == ""
    tip = mark_tooltip(ids[2], suggested, mistakes)
    assert tip == f"{ids[2]}\nlikely mistake: labelled a, looks like b (score 0.90)"
    assert mark_tooltip(ids[0], suggested, mistakes) == f"{ids[0]}\nsuggested #2: typical"
    assert mark_tooltip(ids[3], suggested, mistakes) == ids[3]
