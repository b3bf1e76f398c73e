"""The predictions CSV that grows chunk by chunk: a torn last line is ignored, and appending after it or after
other models' rows starts from a clean rewrite."""
from __future__ import annotations

from napari_cellclass.core.predictions import Prediction, read_predictions_csv
from napari_cellclass.core.predictions_log import PredictionsLog, read_log


def _pred(i: int, model_id: str = "m@1") -> Prediction:
    p = 0.25 + i / 100
    return Prediction(f"/screen/w{i}.tif", ("b",), 1 - p, {"a": p, "b": 1 - p}, "m", "2026-01-01T00:00:00+00:00",
                      model_id=model_id)


def _log(path, keep=None):
    return PredictionsLog(path, ["a", "b"], verdict=False, keep=keep)


def test_a_torn_last_line_is_never_read_back(tmp_path):
    out = tmp_path / "p.csv"
    log = _log(out)
    log.append([_pred(0), _pred(1)])
    log.append([_pred(2)])
    log.close()
    full = out.read_text()
    assert list(read_log(out)[0]) == ["/screen/w0.tif", "/screen/w1.tif", "/screen/w2.tif"] and read_log(out)[2]

    last = full.rstrip("\n").rsplit("\n", 1)[1]
    out.write_text(full[:len(full) - len(last) // 2 - 1])  # killed in the middle of the third row
    rows, header, clean = read_log(out)
    assert list(rows) == ["/screen/w0.tif", "/screen/w1.tif"] and not clean and header == log.header


def test_appending_after_a_torn_line_or_other_rows_rewrites_first(tmp_path):
    out = tmp_path / "p.csv"
    log = _log(out)
    log.append([_pred(0), _pred(1, "other@2"), _pred(2)])
    log.close()
    out.write_text(out.read_text()[:-1])  # the last row complete but its line end missing

    log = _log(out, keep=lambda p: p.model_id == "m@1")
    assert list(log.kept) == ["/screen/w0.tif"]  # the unfinished row and the other model's row are not kept
    log.append([_pred(2), _pred(3)])
    log.finish()
    text = out.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4
    problems: list[str] = []
    stored = read_predictions_csv(out, problems)
    assert not problems and list(stored) == ["/screen/w0.tif", "/screen/w2.tif", "/screen/w3.tif"]
    assert stored["/screen/w3.tif"].model_id == "m@1" and stored["/screen/w3.tif"].probabilities["a"] == 0.28


def test_a_clean_log_of_the_same_model_is_appended_to_in_place(tmp_path):
    out = tmp_path / "p.csv"
    log = _log(out)
    log.append([_pred(0)])
    log.close()
    inode = out.stat().st_ino
    log = _log(out, keep=lambda p: p.model_id == "m@1")
    log.append([_pred(1)])
    log.close()
    assert out.stat().st_ino == inode and list(read_predictions_csv(out)) == ["/screen/w0.tif", "/screen/w1.tif"]
