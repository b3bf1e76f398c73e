"""What the gallery lists (Qt-free): a project's images filtered and sorted, and how each is framed.

Filters: all, unlabelled, labelled, one class, one predicted class, and a name filter (a
case-insensitive part of the image id). Sorts: name (project order), class, predicted class,
confidence (lowest or highest first). A list stays as it was made while the user labels through
it (a labelled image does not jump away under the "unlabelled" filter); it is made again when
a filter or sort changes.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.predictions import Prediction
from ..core.project import Project
from .labelling_model import (
    FILTER_ALL,
    FILTER_LABELLED,
    FILTER_UNLABELLED,
    MARK_FILTERS,
    BorderSpec,
    image_border_specs,
)

PREDICTED_PREFIX = "predicted: "

SORT_NAME = "name"
SORT_CLASS = "class"
SORT_PREDICTED = "predicted class"
SORT_CONFIDENCE_LOW = "confidence (lowest first)"
SORT_CONFIDENCE_HIGH = "confidence (highest first)"
SORTS: tuple[str, ...] = (SORT_NAME, SORT_CLASS, SORT_PREDICTED, SORT_CONFIDENCE_LOW, SORT_CONFIDENCE_HIGH)


@dataclass(frozen=True)
class GalleryQuery:
    """One way of listing a project: a filter, a sort and a part of the name."""

    image_filter: str = FILTER_ALL
    sort: str = SORT_NAME
    name: str = ""


def filter_choices(project: Project | None, predictions: Mapping[str, Prediction],
                   marks: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The filters offered: the special ones, the marked images (when any), each class, each predicted class.

    ``marks`` maps :data:`FILTER_SUGGESTED` / :data:`FILTER_MISTAKES` to their image ids.
    """
    out = [FILTER_ALL, FILTER_UNLABELLED, FILTER_LABELLED]
    out += [name for name in MARK_FILTERS if (marks or {}).get(name)]
    if project is not None:
        out += list(project.class_names)
        predicted = {c for p in predictions.values() for c in p.classes}
        out += [PREDICTED_PREFIX + c for c in sorted(predicted, key=_class_order(project))]
    return out


def _class_order(project: Project) -> Callable[[str], tuple[int, str]]:
    order = {c: k for k, c in enumerate(project.class_names)}
    return lambda c: (order.get(c, len(order)), c)


def list_images(project: Project, predictions: Mapping[str, Prediction], query: GalleryQuery,
                marks: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The image ids the gallery shows for ``query``, in its order (marked images: in their own order)."""
    f = query.image_filter
    if f in MARK_FILTERS:
        known = set(project.image_ids)
        ids = [i for i in (marks or {}).get(f, ()) if i in known]
    elif f == FILTER_ALL:
        ids: Sequence[str] = project.image_ids
    elif f == FILTER_UNLABELLED:
        ids = project.unlabelled_ids()
    elif f == FILTER_LABELLED:
        ids = project.labelled_ids()
    elif f.startswith(PREDICTED_PREFIX):
        name = f[len(PREDICTED_PREFIX):]
        ids = [i for i in project.image_ids if (p := predictions.get(i)) is not None and name in p.classes]
    elif f in project.class_names:
        ids = project.ids_with_class(f)
    else:
        ids = project.image_ids
    if query.name:
        part = query.name.casefold()
        ids = [i for i in ids if part in i.casefold()]
    if query.sort == SORT_NAME:  # every filter keeps project order
        return list(ids)
    position = {i: k for k, i in enumerate(project.image_ids)}
    order = _class_order(project)
    last = (len(project.class_names) + 1, "")
    if query.sort == SORT_CLASS:
        def key(i: str) -> tuple:
            labels = project.labels(i)
            return (order(labels[0]) if labels else last, position[i])
    elif query.sort == SORT_PREDICTED:
        def key(i: str) -> tuple:
            p = predictions.get(i)
            return (order(p.classes[0]) if p is not None and p.classes else last, position[i])
    else:
        sign = 1.0 if query.sort == SORT_CONFIDENCE_LOW else -1.0

        def key(i: str) -> tuple:
            p = predictions.get(i)
            return (p is None, sign * p.confidence if p is not None else 0.0, position[i])
    return sorted(ids, key=key)


def counts_text(project: Project, predictions: Mapping[str, Prediction], shown: int) -> str:
    """``shown / total · labelled · unlabelled · predicted`` for the gallery's status line."""
    n = len(project.image_ids)
    labelled = project.n_labelled
    text = f"{shown:,} shown of {n:,} · {labelled:,} labelled · {n - labelled:,} unlabelled"
    if predictions:
        text += f" · {len(predictions):,} predicted"
    return text


def mark_text(image_id: str, suggested: Sequence[str] | Mapping[str, Any],
              mistakes: Mapping[str, Mapping[str, Any]], uncertain: Collection[str] = ()) -> str:
    """The badge of a thumbnail: ``→ class`` for a likely mistake, ``★ rank`` for a suggestion, ``?`` for an
    uncertain prediction, else ''."""
    issue = mistakes.get(image_id)
    if issue is not None:
        got = issue.get("suggested")
        return "→ " + (got if isinstance(got, str) else ";".join(got) or "(none)")
    if image_id in suggested:
        return f"★ {list(suggested).index(image_id) + 1}"
    return "?" if image_id in uncertain else ""


def mark_tooltip(image_id: str, suggested: Mapping[str, str], mistakes: Mapping[str, Mapping[str, Any]]) -> str:
    """A thumbnail's tooltip: its id, and why it is suggested or looks mislabelled."""
    issue = mistakes.get(image_id)
    if issue is not None:
        def names(v: Any) -> str:
            return v if isinstance(v, str) else ";".join(v) or "(none)"

        return (f"{image_id}\nlikely mistake: labelled {names(issue.get('given'))}, looks like "
                f"{names(issue.get('suggested'))} (score {float(issue.get('score', 0)):.2f})")
    if image_id in suggested:
        return f"{image_id}\nsuggested #{list(suggested).index(image_id) + 1}: {suggested[image_id]}"
    return image_id


def frame_specs(project: Project, predictions: Mapping[str, Prediction], image_id: str,
                color_of: Callable[[str], str]) -> list[BorderSpec]:
    """The frame of a thumbnail: like its layer's border (label thick, prediction thin)."""
    p = predictions.get(image_id)
    return image_border_specs(list(project.labels(image_id)), list(p.classes) if p is not None else [], color_of)
