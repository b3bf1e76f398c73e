"""A predictions CSV that grows chunk by chunk (flushed and fsynced) and is read back to resume a run.

A run killed while appending leaves every finished chunk and at most one torn last line; reading
the file back ignores that line. Opening the log for a new run keeps the rows a given test
accepts (those of the same model) and starts from an atomic rewrite whenever the file holds
anything else (other models' rows, a torn or bad line, other columns), so rows are only ever
appended to a file of one consistent layout.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from .atomic import atomic_write_text
from .errors import ProjectError
from .outputs import check_output_file
from .predictions import Prediction, csv_header, csv_row, read_rows
from .textfiles import MAX_CSV_BYTES, read_text_bounded


def read_log(path: str | os.PathLike) -> tuple[dict[str, Prediction], list[str] | None, bool]:
    """``(rows, header, clean)`` of a predictions CSV being appended to.

    A torn last line (no line end: the run was killed while writing it) and bad rows are left
    out; ``clean`` is False then. A missing file gives ``({}, None, True)``; a file that is not
    a predictions table gives ``({}, None, False)`` (it will be replaced).
    """
    path = Path(path)
    text = read_text_bounded(path, MAX_CSV_BYTES, "predictions", fix="delete the file to start afresh",
                             missing_ok=True)
    if text is None:
        return {}, None, True
    clean = text.endswith("\n") or not text
    if not clean:
        text = text[:text.rfind("\n") + 1]
    header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), None)
    problems: list[str] = []
    try:
        rows = read_rows(path, io.StringIO(text, newline=""), problems)
    except (ProjectError, csv.Error):
        return {}, None, False
    return rows, header, clean and not problems


class PredictionsLog:
    """Rows appended to a user's predictions CSV, each :meth:`append` flushed and fsynced.

    Parameters
    ----------
    path
        The CSV file (checked with :func:`check_output_file`).
    classes
        The model's classes (one ``p:<class>`` column each).
    verdict
        Whether the rows carry a verdict column.
    keep
        Rows already in the file that stay (e.g. those of the same model); None: start empty.
    refresh
        Brings a kept row up to date (e.g. its verdict under this run's minimum confidence); the
        file is rewritten when that changes a row.
    """

    def __init__(self, path: str | os.PathLike, classes: Iterable[str], verdict: bool,
                 keep: Callable[[Prediction], bool] | None = None,
                 refresh: Callable[[Prediction], Prediction] | None = None) -> None:
        self.path = check_output_file(path)
        self.classes = list(classes)
        self.verdict = verdict
        self.header = csv_header(self.classes, verdict, True)
        rows, header, clean = read_log(self.path) if keep is not None else ({}, None, False)
        self.kept = {i: p for i, p in rows.items() if keep is not None and keep(p)}
        fresh = {i: refresh(p) for i, p in self.kept.items()} if refresh is not None else self.kept
        same = fresh == self.kept
        self.kept = fresh
        self._rewrite = not (clean and same and header == self.header and len(self.kept) == len(rows) and rows)
        self._fh: IO[str] | None = None

    def _start(self) -> None:
        """Rewrite the file with the header and the kept rows (atomic) unless it can be appended to as it is."""
        if self._rewrite:
            body = io.StringIO()
            w = csv.writer(body, lineterminator="\n")
            w.writerow(self.header)
            w.writerows(csv_row(p, self.classes, self.verdict, True) for p in self.kept.values())
            atomic_write_text(self.path, body.getvalue())
            self._rewrite = False
        self.kept = {}  # on disk now; not held through the run

    def append(self, predictions: Iterable[Prediction]) -> None:
        """Append rows; they are on disk when this returns (the file is first rewritten when needed)."""
        self._start()
        if self._fh is None:
            try:
                self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise ProjectError(f"{self.path}: cannot append the predictions ({exc.strerror or exc}); "
                                   "choose another --csv file") from None
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(csv_row(p, self.classes, self.verdict, True)
                                                        for p in predictions)
        try:
            self._fh.write(buf.getvalue())
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise ProjectError(f"{self.path}: cannot append the predictions ({exc.strerror or exc}); "
                               "choose another --csv file (rows written so far are kept)") from None

    def finish(self) -> None:
        """Make sure the file exists (the header and kept rows when nothing was appended), then close it."""
        self._start()
        self.close()

    def close(self) -> None:
        """Close the file (idempotent); a log nothing was appended to leaves the file as it was."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
