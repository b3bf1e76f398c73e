"""The labelled images of a run: its classes, the train/val/test split and targets, and where the model goes."""
from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import TrainingError
from ..core.project import Project
from ..core.splits import Split, predefined, stratified_split
from .config import TrainConfig

__all__ = ["MODELS_DIR", "RunData", "default_out_dir", "make_split", "open_project", "run_data"]

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


def make_split(project: Project, cfg: TrainConfig) -> Split:
    """The train/val/test split the settings ask for (see ``TrainConfig.split``)."""
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
    return stratified_split(ids, [project.labels(i) for i in ids], val_fraction=cfg.val_fraction,
                            test_fraction=cfg.test_fraction, seed=seed)


def run_data(project: Project, cfg: TrainConfig, saved_split: Mapping[str, list[str]] | None = None) -> RunData:
    """Classes, split and labels of a project for training (``saved_split``: a resumed run's split).

    A class without any labelled image is left out of the model (an output that was never
    trained would be misleading), with a note naming it; a class whose images all landed in
    the validation or test split gets a note too.
    """
    if len(project.class_names) < (1 if project.multi_label else 2):
        raise TrainingError(f"{project.root}: training needs at least two classes (has {len(project.class_names)})")
    split = make_split(project, cfg) if saved_split is None else _resumed_split(project, saved_split)
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
    return RunData(project, classes, project.multi_label, split, labels, _class_notes(project, split, labels))


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
