"""The labelled images of a run: its classes, the train/val/test split and targets, and where the model goes."""
from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import TrainingError
from ..core.groups import Groups, assign_groups, crossing_note, parse_group_spec
from ..core.project import Project
from ..core.splits import Split, predefined, stratified_group_split, stratified_split
from .config import TrainConfig

__all__ = ["MODELS_DIR", "RunData", "default_out_dir", "make_split", "open_project", "project_groups", "run_data"]

MODELS_DIR = "cellclass_models"


@dataclass(frozen=True)
class RunData:
    """Labelled images of a run, their split and targets."""

    project: Project
    classes: tuple[str, ...]
    multi_label: bool
    split: Split
    labels: Mapping[str, tuple[str, ...]]
    notes: tuple[str, ...] = ()  # warnings about the data (e.g. a class left out)
    groups: Groups | None = None  # the group of each image when ``group_by`` is set

    def group_meta(self, ids: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """What ``config.json``'s ``split`` records of the groups of ``ids`` (``{'train': [...], ...}``); {} without."""
        g = self.groups
        if g is None:
            return {}
        where: dict[str, set[str]] = {}
        for name, part in ids.items():
            for i in part:
                where.setdefault(g.of[i], set()).add(name)
        return {"group_by": g.spec, "groups": {name: g.count(part) for name, part in ids.items()},
                "groups_spanning_splits": sum(len(v) > 1 for v in where.values()),
                "ungrouped_images": len(g.uncovered)}

    def targets(self, ids: Sequence[str]) -> np.ndarray:
        """Class indices ``(N,)`` or, multi-label, a multi-hot ``(N, K)`` float32 array."""
        index = {c: k for k, c in enumerate(self.classes)}
        if self.multi_label:
            out = np.zeros((len(ids), len(self.classes)), np.float32)
            for i, iid in enumerate(ids):
                for c in self.labels[iid]:
                    out[i, index[c]] = 1
            return out
        return np.array([index[self.labels[i][0]] for i in ids], dtype=np.int64)


def open_project(data: Project | str | os.PathLike) -> Project:
    """A :class:`Project` from itself or its folder (without writing settings)."""
    if isinstance(data, Project):
        return data
    return Project.open(data, create=False)


def project_groups(project: Project, cfg: TrainConfig) -> Groups | None:
    """The group of each labelled image under ``cfg.group_by`` (None when it is empty)."""
    spec = parse_group_spec(cfg.group_by)
    return None if spec is None else assign_groups(spec, project.labelled_ids(), project)


def make_split(project: Project, cfg: TrainConfig, groups: Groups | None = None) -> Split:
    """The train/val/test split the settings ask for (see ``TrainConfig.split``).

    With ``groups`` (see :func:`project_groups`) a random split keeps each group in one subset.
    """
    ids = project.labelled_ids()
    if not ids:
        raise TrainingError(f"{project.root}: no labelled images; label some images first")
    assignment = project.predefined_split() if cfg.split in ("auto", "predefined") else {}
    pre = predefined(assignment, ids, "predefined") if assignment else None
    if cfg.split == "predefined":
        if pre is None or not pre.train or not pre.val:
            raise TrainingError(f"{project.root}: split=predefined needs labelled train and val images in "
                                "cellclass_split.csv or train/ and val/ folders; use split=random")
        return pre
    if cfg.split == "auto" and pre is not None and pre.train and pre.val:
        return pre
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    labels = [project.labels(i) for i in ids]
    if groups is not None:
        return stratified_group_split(ids, labels, groups.of, val_fraction=cfg.val_fraction,
                                      test_fraction=cfg.test_fraction, seed=seed)
    return stratified_split(ids, labels, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=seed)


def run_data(project: Project, cfg: TrainConfig, saved_split: Mapping[str, list[str]] | None = None) -> RunData:
    """Classes, split and labels of a project for training (``saved_split``: a resumed run's split).

    A class without any labelled image is left out of the model (an output that was never
    trained would be misleading), with a note naming it; a class whose images all landed in
    the validation or test split gets a note too.
    """
    if len(project.class_names) < (1 if project.multi_label else 2):
        raise TrainingError(f"{project.root}: training needs at least two classes (has {len(project.class_names)})")
    groups = project_groups(project, cfg)
    split = make_split(project, cfg, groups) if saved_split is None else _resumed_split(project, saved_split)
    if not split.train:
        raise TrainingError(f"{project.root}: no training images after the split; label more images or raise "
                            "train_percent")
    if not split.val:
        raise TrainingError(f"{project.root}: no validation images after the split; label at least two images "
                            "per class or lower train_percent")
    labels = {i: project.labels(i) for i in (*split.train, *split.val, *split.test)}
    used = {c for cs in labels.values() for c in cs}
    if not project.multi_label:
        present = {labels[i][0] for i in split.train}
        if len(present) < 2:
            raise TrainingError(f"{project.root}: the training images cover only {sorted(present)}; "
                                "label images of at least two classes")
    classes = tuple(c for c in project.class_names if c in used)
    notes = _class_notes(project, split, labels) + _group_notes(groups, split, labels, cfg)
    return RunData(project, classes, project.multi_label, split, labels, notes, groups)


def _resumed_split(project: Project, saved: Mapping[str, list[str]]) -> Split:
    """A resumed run's split, less the images that are no longer labelled."""
    labelled = set(project.labelled_ids())
    return Split(*(tuple(i for i in saved.get(n, []) if i in labelled) for n in ("train", "val", "test")),
                 source="resumed")


def _class_notes(project: Project, split: Split, labels: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Warnings about classes without labelled images, or without training images."""
    used = {c for cs in labels.values() for c in cs}
    in_train = {c for i in split.train for c in labels[i]}
    notes = []
    for c in project.class_names:
        if c not in used:
            notes.append(f"class '{c}' has no labelled images; the model is trained without it (label images of "
                         f"'{c}' and train again to include it, or remove the class)")
        elif c not in in_train:
            notes.append(f"class '{c}' has no images in the training split (only in validation/test); the model "
                         f"cannot learn it: label more images of '{c}'")
    return tuple(notes)


def _group_notes(groups: Groups | None, split: Split, labels: Mapping[str, tuple[str, ...]],
                 cfg: TrainConfig) -> tuple[str, ...]:
    """Warnings of a run with groups: images no group covers, groups that span a predefined split,
    classes left without validation images because all their images sit in one group."""
    if groups is None:
        return ()
    notes = [n for n in (groups.note(),) if n]
    parts = {n: split.subset(n) for n in ("train", "val", "test") if split.subset(n)}
    if split.source != "group":
        cross = crossing_note(groups, parts, split.source)
        if cross:
            notes.append(cross)
        return tuple(notes)
    in_val = {c for i in split.val for c in labels[i]}
    for c in sorted({c for i in split.train for c in labels[i]} - in_val):
        of_c = {groups.of[i] for i, cs in labels.items() if c in cs}
        if cfg.val_fraction > 0 and len(of_c) == 1:
            notes.append(f"class '{c}' has images in only one group ('{groups.name(next(iter(of_c)))}'), so none "
                         f"are in validation: label images of '{c}' from another group to validate it")
    return tuple(notes)


def default_out_dir(project: Project, backbone: str) -> Path:
    """``<project>/cellclass_models/<backbone>-<time>``, with ``-2``, ``-3``... when that exists."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in backbone)
    out = project.root / MODELS_DIR / f"{safe}-{stamp}"
    n = 2
    while out.exists():
        out = project.root / MODELS_DIR / f"{safe}-{stamp}-{n}"
        n += 1
    return out
