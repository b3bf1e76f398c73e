"""Train / validation / test splits: stratified by class (or by whole groups) with a seed, or predefined."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .errors import ProjectError
from .textfiles import MAX_CSV_BYTES, read_text_bounded

SPLIT_NAMES = ("train", "val", "test")
#: the predefined split of a project: ``<project>/cellclass_split.csv`` (rows of ``image_id,split``)
SPLIT_NAME = "cellclass_split.csv"
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
            "test": "test", "testing": "test"}


def normalise_split_name(value: str) -> str | None:
    """``'Validation'`` -> ``'val'``; None for values that name no split."""
    return _ALIASES.get(str(value).strip().casefold())


@dataclass(frozen=True)
class Split:
    """Image ids of each subset and where the split came from."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()
    source: str = "random"
    seed: int | None = None

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    def subset(self, name: str) -> tuple[str, ...]:
        if name not in SPLIT_NAMES:
            raise ProjectError(f"unknown split {name!r}; use one of {SPLIT_NAMES}")
        return getattr(self, name)


def stratified_split(ids: Sequence[str], labels: Sequence[Sequence[str]], *, val_fraction: float = 0.2,
                     test_fraction: float = 0.0, seed: int = 0) -> Split:
    """Split labelled images per class so each subset keeps the class proportions.

    Multi-label images are grouped by their rarest class. Each class with at least two
    images gets at least one validation image when ``val_fraction > 0`` (and likewise for
    test when it has three). The same ids, labels and seed always give the same split.
    """
    _check_fractions(val_fraction, test_fraction)
    strata = _strata(ids, labels)
    groups: dict[str, list[str]] = {}
    for iid in sorted(ids):
        groups.setdefault(strata[iid], []).append(iid)
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    test: list[str] = []
    for key in sorted(groups):
        members = groups[key]
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n = len(members)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if test_fraction > 0 and n_test == 0 and n >= 3:
            n_test = 1
        if val_fraction > 0 and n_val == 0 and n >= 2:
            n_val = 1
        if n - n_val - n_test < 1 and n > 0:  # always keep one for training
            overflow = 1 - (n - n_val - n_test)
            cut = min(overflow, n_test)
            n_test -= cut
            n_val -= overflow - cut
        test += members[:n_test]
        val += members[n_test:n_test + n_val]
        train += members[n_test + n_val:]
    return _in_order(ids, train, val, test, "random", seed)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ProjectError(
            f"split fractions val={val_fraction}, test={test_fraction} must be in [0, 1) and leave "
            "images for training"
        )


def _strata(ids: Sequence[str], labels: Sequence[Sequence[str]]) -> dict[str, str]:
    """The stratum of each image: its class, or a multi-label image's rarest class ('' when unlabelled)."""
    if len(ids) != len(labels):
        raise ProjectError("ids and labels differ in length")
    freq: dict[str, int] = {}
    for ls in labels:
        for c in ls:
            freq[c] = freq.get(c, 0) + 1
    return {iid: (min(ls, key=lambda c: (freq[c], c)) if ls else "") for iid, ls in zip(ids, labels, strict=True)}


def _in_order(ids: Sequence[str], train: Sequence[str], val: Sequence[str], test: Sequence[str], source: str,
              seed: int | None) -> Split:
    """A :class:`Split` whose subsets list their ids in the order of ``ids``."""
    order = {iid: k for k, iid in enumerate(ids)}
    key = order.__getitem__
    return Split(tuple(sorted(train, key=key)), tuple(sorted(val, key=key)), tuple(sorted(test, key=key)),
                 source, seed)


def stratified_group_split(ids: Sequence[str], labels: Sequence[Sequence[str]], groups: Mapping[str, str], *,
                           val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0) -> Split:
    """Split whole groups (``groups[image_id]``), keeping the class proportions as well as groups allow.

    No group has images in two subsets. Images are stratified like :func:`stratified_split`
    (a multi-label image by its rarest class). Groups go, largest first (ties in a seeded
    random order), to the subset whose class shares fall furthest below their targets (the
    greedy step of least squared error of the per-class shares). Then every class gets a
    training group, each class of at least two groups a validation group and each class of
    at least three groups a test group (when those fractions are above 0), by moving its
    smallest group where a subset still keeps another. The same input and seed always give
    the same split (``source='group'``).

    Raises
    ------
    ProjectError
        When all images are in one group (a split by group needs two).
    """
    _check_fractions(val_fraction, test_fraction)
    strata = _strata(ids, labels)
    keys = sorted(set(strata.values()))
    names = sorted({groups[i] for i in ids})
    if len(names) < 2:
        raise ProjectError(f"all {len(ids)} labelled images are in one group; a split by group needs at least two "
                           "groups: check group_by, or label images of more groups")
    gpos = {g: n for n, g in enumerate(names)}
    kpos = {k: n for n, k in enumerate(keys)}
    counts = np.zeros((len(names), len(keys)))
    for iid in ids:
        counts[gpos[groups[iid]], kpos[strata[iid]]] += 1
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    totals = counts.sum(axis=0)
    target = fractions[:, None] * totals[None, :]
    weight = 1.0 / totals ** 2  # each class's shares count alike, however many images it has
    current = np.zeros((3, len(keys)))
    where = np.zeros(len(names), dtype=np.int64)
    active = [s for s in range(3) if fractions[s] > 0]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    for g in order:
        x = counts[g]
        scores = [float((x * (current[s] - target[s]) * weight).sum()) for s in active]
        s = active[int(np.argmin(scores))]
        where[g] = s
        current[s] += x
    _give_each_class_groups(counts, where, current, fractions)
    parts: list[list[str]] = [[], [], []]
    for iid in ids:
        parts[where[gpos[groups[iid]]]].append(iid)
    return _in_order(ids, *parts, "group", seed)


def _give_each_class_groups(counts: np.ndarray, where: np.ndarray, current: np.ndarray,
                            fractions: np.ndarray) -> None:
    """Move whole groups so each class has a training group, and a validation (test) group when it has
    at least two (three) groups, taking the smallest group from a subset that keeps another of that class."""
    def move(g: int, to: int) -> None:
        current[where[g]] -= counts[g]
        current[to] += counts[g]
        where[g] = to

    def smallest(k: int, of: int, keep: bool) -> int | None:
        cands = [g for g in np.flatnonzero(counts[:, k] > 0) if where[g] == of
                 and (not keep or current[of, k] - counts[g, k] > 0)]
        return min(cands, key=lambda g: (counts[g, k], counts[g].sum(), g)) if cands else None

    for k in np.argsort(counts.sum(axis=0), kind="stable"):  # rarest class first
        n_groups = int((counts[:, k] > 0).sum())
        if current[0, k] == 0:
            g = smallest(k, 1, keep=False) if current[1, k] else smallest(k, 2, keep=False)
            if g is not None:
                move(g, 0)
        for s, need, donors in ((1, 2, (0, 2)), (2, 3, (0, 1))):
            if fractions[s] > 0 and n_groups >= need and current[s, k] == 0:
                g = next((c for d in donors if (c := smallest(k, d, keep=True)) is not None), None)
                if g is not None:
                    move(g, s)


def split_from_folders(ids: Sequence[str]) -> dict[str, str]:
    """Subsets from path components named train/, val/ (validation/) or test/ (HEp-2 layout)."""
    out: dict[str, str] = {}
    for iid in ids:
        for part in iid.split("/")[:-1]:
            name = normalise_split_name(part)
            if name:
                out[iid] = name
                break
    return out


def predefined(assignment: Mapping[str, str], ids: Sequence[str], source: str) -> Split:
    """A :class:`Split` from ``{image_id: subset}`` restricted to ``ids`` (others ignored)."""
    parts: dict[str, list[str]] = {n: [] for n in SPLIT_NAMES}
    for iid in ids:
        s = assignment.get(iid)
        if s in parts:
            parts[s].append(iid)
    return Split(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]), source, None)


def read_split_file(path: str | os.PathLike) -> dict[str, str]:
    """Read ``image_id,split`` rows (header optional)."""
    path = Path(path)
    out: dict[str, str] = {}
    text = read_text_bounded(path, MAX_CSV_BYTES, "split file", fix="save it as UTF-8 CSV text")
    try:
        for k, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if len(row) < 2 or not row[1].strip():
                continue
            name = normalise_split_name(row[1])
            if name:
                out[row[0].strip()] = name
            elif k > 1:  # the first row may be a header
                raise ProjectError(f"{path}: line {k}: split {row[1].strip()!r} is not train, val or test; "
                                   "fix the split file")
    except csv.Error as exc:
        raise ProjectError(f"{path}: cannot read the split file ({exc})") from None
    return out


def write_split_file(path: str | os.PathLike, assignment: Mapping[str, str]) -> None:
    """Write ``image_id,split`` rows atomically."""
    lines = ["image_id,split"] + [f"{_csv_cell(k)},{v}" for k, v in assignment.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
