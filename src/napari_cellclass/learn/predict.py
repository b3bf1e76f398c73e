"""Prediction with a trained model: files, folders, glob patterns, arrays or a project's images.

Images go through the same decoding and normalisation as in training, one chunk at a time (the
next chunk decodes while the current one runs through the model, so memory does not grow with
the number of images), in large batches under ``torch.inference_mode()``; optional test-time
augmentation averages the four flips. For a project, results are stored in
``cellclass_predictions.csv`` (never in the labels); a ``csv`` file grows chunk by chunk, so a
rerun can skip what the same model already predicted. Under ``torchrun`` each process predicts
its share of every chunk and rank 0 writes.
"""
from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CellclassError, ConfigError, ModelError
from ..core.images import IMAGE_SUFFIXES
from ..core.inputs import expand_inputs
from ..core.outputs import check_output_file
from ..core.predictions import (
    UNCERTAIN,
    Prediction,
    decision_confidence,
    export_predictions_csv,
    is_uncertain,
    now_iso,
    predictions_path,
    read_predictions,
    write_predictions,
)
from ..core.predictions_log import PredictionsLog, read_log
from ..core.project import CONFIG_NAME, Project
from . import distributed
from .checkpoint import TrainedModel, load_model
from .data import ImageStore, cache_dir_for
from .data.chunks import Chunk, StoreStream, chunk_rows
from .device import autocast, resolve_device, resolve_precision
from .events import CancelToken
from .zoo_model import ZooModel, is_zoo_package, load_zoo_model, zoo_probabilities

Progress = Callable[[int, int], None]


@dataclass
class PredictionResult:
    """Class probabilities of a set of images.

    Attributes
    ----------
    ids : list of str
        Image ids (project-relative) or file paths / ``array:<i>`` for other inputs.
    classes : tuple of str
        The model's classes (columns of ``probabilities``).
    probabilities : ndarray, shape (N, K)
        Softmax (single-label) or sigmoid (multi-label) outputs.
    min_confidence : float or None
        Images whose decision is less sure get the verdict ``uncertain`` (see :meth:`verdicts`).
    skipped : dict
        ``{id: reason}`` for images that could not be read.
    stored_in : str or None
        The project's predictions file, when the results were stored there.
    warnings : list of str
        What did not stop the prediction (the project file could not be written, bad rows in
        it were skipped, ...).
    model_id : str
        The model's :attr:`~TrainedModel.identity` (name and weights digest).
    reused : int
        Images not predicted again because every output already held their prediction by
        this model (``resume``).
    """

    ids: list[str]
    classes: tuple[str, ...]
    probabilities: np.ndarray
    multi_label: bool = False
    threshold: float | np.ndarray = 0.5  # multi-label: one for all classes or one per class
    model_name: str = ""
    timestamp: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    stored_in: str | None = None
    warnings: list[str] = field(default_factory=list)
    min_confidence: float | None = None
    model_id: str = ""
    reused: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def top_index(self) -> np.ndarray:
        """Index of each image's most probable class."""
        return self.probabilities.argmax(axis=1) if len(self.ids) else np.zeros(0, np.int64)

    @property
    def top_class(self) -> list[str]:
        """The most probable class of each image."""
        return [self.classes[k] for k in self.top_index]

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the top class."""
        return self.probabilities.max(axis=1) if len(self.ids) else np.zeros(0, np.float32)

    def predicted(self) -> list[tuple[str, ...]]:
        """Predicted classes per image: the top class, or (multi-label) all above the threshold."""
        if not self.multi_label:
            return [(c,) for c in self.top_class]
        above = self.probabilities >= np.asarray(self.threshold)
        return [tuple(c for c, keep in zip(self.classes, row, strict=True) if keep) for row in above]

    def verdicts(self) -> list[str]:
        """Per image: the predicted class(es) joined by ``;``, or ``uncertain`` when the decision is less
        sure than :attr:`min_confidence` (single-label: the top probability; multi-label: every class's
        ``max(p, 1 - p)``); empty strings when no minimum was asked for."""
        if self.min_confidence is None:
            return [""] * len(self.ids)
        sure = decision_confidence(self.probabilities, self.multi_label)
        return [UNCERTAIN if not s >= self.min_confidence else ";".join(p)
                for s, p in zip(sure, self.predicted(), strict=True)]

    def _by_class(self, row: np.ndarray) -> dict[str, float]:
        """One image's probabilities by class name."""
        return {c: float(p) for c, p in zip(self.classes, row, strict=True)}

    def records(self) -> list[Prediction]:
        """One :class:`Prediction` per image (for the project file or a CSV)."""
        preds, verdicts = self.predicted(), self.verdicts()
        return [Prediction(iid, preds[i], float(self.confidence[i]),
                           self._by_class(self.probabilities[i]),
                           self.model_name, self.timestamp, verdicts[i], self.model_id)
                for i, iid in enumerate(self.ids)]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the predictions to a CSV file."""
        return export_predictions_csv(path, self.records())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (one entry per image)."""
        preds, verdicts = self.predicted(), self.verdicts()
        extra = ({"min_confidence": self.min_confidence, "uncertain": verdicts.count(UNCERTAIN)}
                 if self.min_confidence is not None else {})
        return {"model": self.model_name, "classes": list(self.classes), "n": len(self.ids), **extra,
                "reused": self.reused,
                "predictions": [{"image_id": iid, "predicted": list(preds[i]),
                                 "confidence": float(self.confidence[i]),
                                 **({"verdict": verdicts[i]} if self.min_confidence is not None else {}),
                                 "probabilities": self._by_class(self.probabilities[i])}
                                for i, iid in enumerate(self.ids)],
                "skipped": [{"image_id": k, "reason": v} for k, v in self.skipped.items()],
                "warnings": list(self.warnings)}


def as_trained_model(model: TrainedModel | str | os.PathLike) -> TrainedModel:
    """A loaded model from itself or its folder."""
    return model if isinstance(model, TrainedModel) else load_model(model)


def prediction_inputs(images: Any, ids: Sequence[str] | None, include_labelled: bool
            ) -> tuple[list[Any], list[str], Project | None]:
    """(items for the store, their ids, the project or None).

    A project (or its folder, alone): its unlabelled images (``include_labelled``: all, or
    ``ids``). Paths, folders and glob patterns (one or a list): the image files they name (see
    :func:`~napari_cellclass.core.inputs.expand_inputs`), their paths as ids. Arrays: ``array:<i>``.
    """
    if isinstance(images, (list, tuple)) and len(images) == 1 and isinstance(images[0], (str, os.PathLike)):
        images = images[0]
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir() and (Path(images) / CONFIG_NAME).exists():
        images = Project.open(images, create=False)
    if isinstance(images, Project):
        if ids is None:
            ids = list(images.image_ids) if include_labelled else images.unlabelled_ids()
        return [images.path(i) for i in ids], list(ids), images
    if isinstance(images, np.ndarray):
        arrays = [images] if images.ndim in (2, 3) else list(images)
        return arrays, [f"array:{i}" for i in range(len(arrays))], None
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if items and all(isinstance(x, (str, os.PathLike)) for x in items):
        files = expand_inputs(items)
        if not files:  # only empty folders: saying "predicted 0 images" would hide a wrong path
            named = ", ".join(str(x) for x in items[:3]) + (", ..." if len(items) > 3 else "")
            raise CellclassError(f"{named}: no image found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                                 "check the path")
        return files, [str(f) for f in files], None
    keys = [f"array:{i}" if isinstance(x, np.ndarray) else str(x) for i, x in enumerate(items)]
    return items, keys, None


def auto_min_confidence(trained: TrainedModel) -> float:
    """The calibrated confidence at which ``trained`` reached its target accuracy (95 %) on validation."""
    reach = trained.calibration.get("at_target")
    if not isinstance(reach, dict) or reach.get("threshold") is None:
        why = ("it was trained before calibration existed" if not trained.calibration
               else "no confidence reached the target accuracy on its validation images")
        raise ConfigError(f"{trained.path}: --min-confidence auto needs the model's calibrated threshold, but {why}; "
                          "give a number, e.g. --min-confidence 0.9")
    return float(reach["threshold"])


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a whole number >= 1; :class:`ConfigError` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not allowed; use a whole number >= 1 (e.g. --batch-size 32)")
    return int(batch_size)


def input_batches(store: ImageStore, index: np.ndarray, normalisation: Any, device: torch.device,
                  batch_size: int, cancel: CancelToken | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, x)``: normalised float32 batches of a built store's rows ``index`` on ``device``.

    Channels-last on CUDA; stops early when ``cancel`` is set.
    """
    mean, std = normalisation.tensors(device)
    for start in range(0, len(index), batch_size):
        if cancel is not None and cancel.is_set():
            return
        x = torch.from_numpy(store.gather(index[start:start + batch_size]))
        if device.type == "cuda":
            x = x.pin_memory()
        x = (x.to(device, non_blocking=True).float() - mean) / std
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        yield start, x


def eval_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode (channels-last on CUDA)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def infer(trained: TrainedModel, store: ImageStore, index: np.ndarray, *, device: torch.device,
          batch_size: int = 128, tta: bool = False, progress: Progress | None = None,
          cancel: CancelToken | None = None) -> np.ndarray:
    """Probabilities ``(len(index), K)`` for rows of a built store.

    Raises
    ------
    ModelError
        When the model gives NaN or infinite outputs (a diverged model): nothing is returned.
    """
    batch_size = check_batch_size(batch_size)
    model = eval_model(trained.model, device)
    precision = resolve_precision(trained.config.get("train_config", {}).get("precision", "auto"), device)
    multi = trained.multi_label
    temperature = trained.temperature
    out = []
    n = len(index)
    with torch.inference_mode():
        for start, x in input_batches(store, index, trained.normalisation, device, batch_size, cancel):
            views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)] if tta else [x]
            acc = None
            for v in views:
                with autocast(device, precision):
                    logits = model(v).float() / temperature
                p = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=1)
                acc = p if acc is None else acc + p
            probs = (acc / len(views)).cpu().numpy()
            bad = ~np.isfinite(probs).all(axis=1)
            if bad.any():
                first = store.keys[int(index[start + int(np.flatnonzero(bad)[0])])]
                raise ModelError(f"{trained.path}: the model gives non-finite outputs (NaN or infinity) for "
                                 f"{int(bad.sum())} image(s), e.g. {first}; it is unusable, nothing was stored: "
                                 "retrain it with a lower learning rate")
            out.append(probs)
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return np.concatenate(out) if out else np.zeros((0, len(trained.classes)), np.float32)


def changed_since(path: Any, timestamp: str) -> bool:
    """Whether the file ``path`` was written or replaced at or after ``timestamp`` (ISO-8601); True when
    either cannot be read (arrays, a missing file, an old row without a time)."""
    try:
        when = _dt.datetime.fromisoformat(timestamp).timestamp()
        st = os.stat(path)
    except (ValueError, TypeError, OSError):
        return True
    return max(st.st_mtime, st.st_ctime) >= when


@dataclass
class _Plan:
    """What a run predicts: all ``items``/``keys``, the positions ``todo``, and how many were ``reused``."""

    items: list[Any]
    keys: list[str]
    todo: np.ndarray
    reused: int = 0


def resume_plan(items: Sequence[Any], keys: Sequence[str], outputs: Sequence[dict[str, Prediction]],
                model_id: str) -> _Plan:
    """Skip the images every one of ``outputs`` already holds a prediction of by ``model_id``, made after the
    image file last changed (no outputs: nothing is skipped)."""
    done = np.zeros(len(keys), bool)
    if outputs:
        for i, (key, item) in enumerate(zip(keys, items, strict=True)):
            rows = [o.get(key) for o in outputs]
            if all(r is not None and r.model_id == model_id for r in rows):
                done[i] = not any(changed_since(item, r.timestamp) for r in rows)  # type: ignore[union-attr]
    return _Plan(list(items), list(keys), np.flatnonzero(~done), int(done.sum()))


def _chunks(todo: np.ndarray, size: int, info: distributed.DistInfo) -> list[np.ndarray]:
    """This rank's part of each chunk of ``size`` images per rank (every rank gets the same number of chunks)."""
    step = size * info.world_size
    return [np.array_split(todo[s:s + step], info.world_size)[info.rank] for s in range(0, len(todo), step)]


def predict(model: TrainedModel | str | os.PathLike, images: Any, *, ids: Sequence[str] | None = None,
            all_images: bool = False, tta: bool = False, batch_size: int = 128, device: str = "auto",
            write: bool = True, csv: str | os.PathLike | None = None, progress: Progress | None = None,
            cancel: CancelToken | None = None, min_confidence: float | str | None = None,
            resume: bool | None = None, chunk_size: int | None = None, threads: int | None = None
            ) -> PredictionResult:
    """Predict classes of images.

    Parameters
    ----------
    model
        A :class:`TrainedModel` or a model folder.
    images
        A :class:`Project` or project folder (its unlabelled images; ``all_images=True``: all,
        or the given ``ids``); a folder of images, an image file or a glob pattern (``**``: any
        depth), or a list of them; a ``(C, Y, X)`` array, an ``(N, C, Y, X)`` stack, or a list
        of arrays.
    tta
        Average the predictions of the four flips.
    write
        For a project: store the results in ``cellclass_predictions.csv`` (labels untouched),
        after each chunk. When that file cannot be written (a read-only project) the results
        are still returned, with the reason in ``warnings`` and ``stored_in`` None.
    csv
        Also write the results to this CSV file (each chunk appended, flushed and fsynced,
        before the project file). A path that would replace a project's own file, an image or
        a label sidecar is refused before anything is predicted.
    progress
        ``progress(done, total)`` during decoding and prediction.
    min_confidence
        Give images whose decision is less sure than this (a probability in [0, 1]) the verdict
        ``uncertain`` (a ``verdict`` column in the CSV files; see :meth:`PredictionResult.verdicts`).
        ``'auto'``: the calibrated confidence at which the model reached 95 % accuracy on its
        validation images.
    resume
        Skip the images whose prediction by this model (same name and weights, see
        :attr:`TrainedModel.identity`) every output (``csv``, the project file) already holds,
        made after the image last changed; ``csv`` keeps its rows of this model and drops the
        others. Default: True outside a project (where only ``csv`` is an output), False for a
        project (everything is predicted again). False: ``csv`` is written afresh.
    chunk_size
        Images decoded and predicted at a time (per process); default: what fits 512 MB of
        decoded rows, at most 4096.
    threads
        Decoding workers: processes where they can be forked, else threads (default: as :class:`ImageStore`).

    Raises
    ------
    ChannelMismatchError
        An image with another channel count than the model's (the message names it).
    CellclassError
        A path that does not exist, or a pattern that matches no image.
    ConfigError
        ``batch_size`` or ``chunk_size`` below 1.
    ModelError
        The model gives NaN or infinite outputs (nothing more is stored).
    ProjectError
        ``csv`` names a file of a project (settings, image, sidecar, ...) or a non-regular file.
    """
    if csv is not None:
        csv = check_output_file(csv)
    if min_confidence is not None and min_confidence != "auto" and not (
            isinstance(min_confidence, (int, float)) and 0 <= min_confidence <= 1):
        raise ConfigError(f"minimum confidence {min_confidence!r} is not allowed; use a probability in [0, 1], "
                          "e.g. --min-confidence 0.9, or auto")
    if chunk_size is not None:
        chunk_size = check_batch_size(chunk_size)
    batch_size = check_batch_size(batch_size)
    if not isinstance(model, TrainedModel) and is_zoo_package(model):
        return _predict_zoo(load_zoo_model(model), images, ids, all_images, batch_size, write, csv, progress,
                            cancel, min_confidence)
    trained = as_trained_model(model)
    if min_confidence == "auto":
        min_confidence = auto_min_confidence(trained)
    info, dev = distributed.join(resolve_device(device))
    try:
        return _Run(trained, info, dev, write, csv, min_confidence, progress, cancel).run(
            images, ids, all_images, resume, chunk_size, threads, tta=tta, batch_size=batch_size)
    finally:
        distributed.leave(info)


@dataclass
class _Part:
    """One rank's results for one chunk (gathered on every rank under torchrun)."""

    ids: list[str]
    probs: np.ndarray
    problems: dict[str, str]
    started: float  # when the chunk's decoding started (0: nothing was decoded)
    error: str | None = None


class _Run:
    """One prediction run: plan (rank 0), chunks (every rank), writes (rank 0)."""

    def __init__(self, trained: TrainedModel, info: distributed.DistInfo, dev: torch.device, write: bool,
                 csv: Path | None, min_confidence: Any, progress: Progress | None, cancel: CancelToken | None
                 ) -> None:
        self.trained, self.info, self.dev, self.write, self.csv = trained, info, dev, write, csv
        self.model_id = trained.identity
        self.min_confidence, self.cancel = min_confidence, cancel
        self.progress = progress if info.is_main else None
        self.project: Project | None = None
        self.log: PredictionsLog | None = None
        self.warnings: list[str] = []
        self.stored = False
        self.write_failed = False
        self.own_error: Exception | None = None
        self.inferred = 0

    def plan(self, images: Any, ids: Sequence[str] | None, all_images: bool, resume: bool | None) -> _Plan:
        """What to predict (rank 0: reads the outputs to resume and opens the CSV)."""
        items, keys, self.project = prediction_inputs(images, ids, all_images)
        resume = self.project is None if resume is None else resume
        model_id = self.model_id
        outputs: list[dict[str, Prediction]] = []
        if resume and self.csv is not None:
            outputs.append(read_log(self.csv)[0])
        if resume and self.project is not None and self.write:
            try:
                outputs.append(read_predictions(self.project.root))
            except CellclassError:
                outputs.append({})
        plan = resume_plan(items, keys, outputs, model_id)
        if self.csv is not None:
            again = {keys[i] for i in plan.todo}
            self.log = PredictionsLog(self.csv, self.trained.classes, self.min_confidence is not None,
                                      keep=(lambda p: p.model_id == model_id and p.image_id not in again)
                                      if resume else None, refresh=self.with_verdict)
        return plan

    def with_verdict(self, p: Prediction) -> Prediction:
        """A kept row with the verdict this run gives (none without a minimum confidence)."""
        mc = self.min_confidence
        verdict = "" if mc is None else UNCERTAIN if is_uncertain(p, mc, self.trained.multi_label) \
            else ";".join(p.classes)
        return p if p.verdict == verdict else replace(p, verdict=verdict)

    def run(self, images: Any, ids: Sequence[str] | None, all_images: bool, resume: bool | None,
            chunk_size: int | None, threads: int | None, **infer_kw: Any) -> PredictionResult:
        """Predict every chunk of this rank, gather each chunk's results on every rank and write them (rank 0)."""
        trained, info = self.trained, self.info
        it: Iterator[Chunk] | None = None
        try:
            plan = distributed.broadcast_object(info, self.plan(images, ids, all_images, resume)
                                                if info.is_main else None)
            assert plan is not None
            chunks = _chunks(plan.todo, chunk_size or chunk_rows(trained.input_size, trained.in_chans), info)
            total = sum(len(c) for c in chunks)
            stream = StoreStream(plan.items, plan.keys, chunks, trained.input_size, trained.normalisation.scaling,
                                 trained.in_chans, cache_dir=cache_dir_for(self.project.root) if self.project else None,
                                 threads=threads, cancel=self.cancel)
            self.inferred = 0

            def tick(extra: int = 0) -> None:
                if self.progress is not None:
                    self.progress(stream.decoded + self.inferred + extra, 2 * total)

            it = iter(stream.iterate(tick=tick))
            done: list[str] = []
            probs: list[np.ndarray] = []
            skipped: dict[str, str] = {}
            first: float | None = None
            for _ in chunks:  # every rank takes the same number of steps (collectives inside)
                parts = distributed.gather_objects(info, self._part(it, tick, infer_kw))
                errors = [q.error for q in parts if q.error is not None]
                if errors:
                    raise self.own_error if self.own_error is not None else CellclassError(errors[0])
                ids_k = [i for q in parts for i in q.ids]
                probs_k = np.concatenate([q.probs for q in parts])
                started = min((q.started for q in parts if q.started), default=0.0)
                for q in parts:
                    skipped.update(q.problems)
                if started:
                    first = first or started
                    self.store_chunk(self.result(ids_k, probs_k, now_iso("milliseconds", started)))
                done += ids_k
                probs.append(probs_k)
                if self.cancel is not None and self.cancel.is_set():
                    break
            if self.log is not None:
                self.log.finish()
        finally:
            if it is not None:
                it.close()  # stops and waits for a chunk still decoding
            if self.log is not None:
                self.log.close()
        empty = np.zeros((0, len(trained.classes)), np.float32)
        result = self.result(done, np.concatenate(probs) if probs else empty,
                             now_iso("milliseconds", first) if first else now_iso())
        result.skipped, result.reused, result.warnings = skipped, plan.reused, self.warnings
        if self.stored and not self.write_failed:
            result.stored_in = str(predictions_path(self.project.root))  # type: ignore[union-attr]
        if self.progress is not None:
            self.progress(2 * total, 2 * total)
        return result

    def _part(self, it: Iterator[Chunk], tick: Callable[..., None], infer_kw: dict[str, Any]) -> _Part:
        """This rank's results for its next chunk; under torchrun an error travels to the other ranks."""
        k = len(self.trained.classes)
        try:
            chunk = next(it)
            good = np.flatnonzero(chunk.store.ok)
            p = infer(self.trained, chunk.store, good, device=self.dev, progress=lambda d, _t: tick(d),
                      cancel=self.cancel, **infer_kw)
        except StopIteration:  # cancelled
            return _Part([], np.zeros((0, k), np.float32), {}, 0.0)
        except Exception as exc:  # noqa: BLE001 - raised again here, or on every rank after the gather
            return self._failed(exc)
        self.inferred += len(chunk.positions)
        return _Part([chunk.store.keys[i] for i in good[:len(p)]], p, dict(chunk.store.problems), chunk.started)

    def _failed(self, exc: Exception) -> _Part:
        if not self.info.enabled:
            raise exc
        self.own_error = exc
        text = str(exc) if isinstance(exc, CellclassError) else f"{type(exc).__name__}: {exc}"
        return _Part([], np.zeros((0, len(self.trained.classes)), np.float32), {}, 0.0, text)

    def result(self, ids: list[str], probs: np.ndarray, timestamp: str) -> PredictionResult:
        t = self.trained
        return PredictionResult(ids, t.classes, probs, t.multi_label, t.thresholds, t.name, timestamp,
                                min_confidence=self.min_confidence, model_id=self.model_id)

    def store_chunk(self, chunk: PredictionResult) -> None:
        """Append a chunk to the CSV and store it in the project (rank 0; every rank hears of a failure)."""
        error = None
        if self.info.is_main:
            try:
                self._write(chunk)
            except CellclassError as exc:
                error = str(exc)
        error = distributed.broadcast_object(self.info, error)
        if error is not None:
            raise CellclassError(error)

    def _write(self, chunk: PredictionResult) -> None:
        records = chunk.records()
        if self.log is not None:  # first: a project that cannot be written never costs the results
            self.log.append(records)
        if self.project is None or not self.write or self.write_failed or not records:
            return
        if _store(self.project.root, records, self.csv, self.warnings):
            self.stored = True
        else:
            self.write_failed = True


def _predict_zoo(zoo: ZooModel, images: Any, ids: Sequence[str] | None, all_images: bool, batch_size: int,
                 write: bool, csv: Path | None, progress: Progress | None, cancel: CancelToken | None,
                 min_confidence: float | str | None) -> PredictionResult:
    """:func:`predict` with a BioImage Model Zoo package (its own pre- and post-processing)."""
    if min_confidence == "auto":
        raise ConfigError(f"{zoo.path}: --min-confidence auto needs a model calibrated here; a zoo package has no "
                          "calibration, give a number, e.g. --min-confidence 0.9")
    items, keys, project = prediction_inputs(images, ids, all_images)
    done, probs, problems = zoo_probabilities(zoo, items, keys, batch_size=min(batch_size, 64), progress=progress,
                                              cancel=cancel)
    result = PredictionResult(done, zoo.classes, probs, zoo.multi_label, zoo.thresholds, zoo.path.name, now_iso(),
                              problems, min_confidence=min_confidence)
    return _keep(result, project, write, csv, progress, len(items))


def _keep(result: PredictionResult, project: Project | None, write: bool, csv: Path | None,
          progress: Progress | None, total: int) -> PredictionResult:
    """Write the results to ``csv`` (first) and the project's predictions file."""
    if csv is not None:  # first: a project that cannot be written never costs the results
        result.to_csv(csv)
    if project is not None and write and len(result) and _store(project.root, result.records(), csv,
                                                               result.warnings):
        result.stored_in = str(predictions_path(project.root))
    if progress is not None:
        progress(2 * total, 2 * total)
    return result


def _store(root: Path, records: list[Prediction], csv: Path | None, warnings: list[str]) -> bool:
    """Store ``records`` in the project's predictions file; True when stored. A file that cannot be written
    costs no results: its reason joins ``warnings`` (with where the results are), as do skipped old rows."""
    notes: list[str] = []
    try:
        write_predictions(root, records, problems=notes)
        stored = True
    except CellclassError as exc:
        note = f"{exc} (the predictions were not stored in the project"
        warnings.append(note + (f"; they are in {csv})" if csv is not None else ")"))
        stored = False
    warnings.extend(notes)
    return stored
