"""Export: ONNX/TorchScript parity on real images, a zoo package that bioimageio.core passes and that
predict runs back with the original model's classes, foreign zoo packages run or refused in one line."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_cellclass.cli import main
from napari_cellclass.core.errors import ModelError
from napari_cellclass.learn import load_model, predict, train
from napari_cellclass.learn.data.pixels import resize_image
from napari_cellclass.learn.export import (
    export_model,
    onnx_logits,
    pytorch_logits,
    reference_images,
    torchscript_logits,
)

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")

#: Probabilities of a package against predict's: predict feeds the model float16 image rows (measured: up to
#: 0.0103 on these tiny models; against the same pipeline in float32 the package agrees within 2e-4).
TOLERANCE = 2e-2


def _float32_reference(model, project, ids):
    """Probabilities of the model on the project's images scaled at their own size in float32 (no float16 rows)."""
    from napari_cellclass.core.images import read_image
    from napari_cellclass.learn.data.pixels import scale_intensity
    from napari_cellclass.learn.export import calibrated

    norm = model.normalisation
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (norm.mean, norm.std))
    rows = [(scale_intensity(read_image(project.path(i)).pixels, norm.scaling) - mean) / std for i in ids]
    return np.concatenate([calibrated(model, pytorch_logits(model, r[None])) for r in rows])


@pytest.fixture(scope="module")
def trained(tiny_sample, tmp_path_factory):
    from napari_cellclass.learn.config import TrainConfig

    from .conftest import FAST

    out = tmp_path_factory.mktemp("ex") / "model"
    train(tiny_sample, TrainConfig(**{**FAST, "epochs": 8}), out)  # decisive enough that few images tie
    return load_model(out)


@pytest.fixture(scope="module")
def package(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg") / "model.bioimageio.zip"
    result = export_model(trained, "bioimageio", path)
    assert result.path == path and path.is_file()
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_onnx_and_torchscript_match_pytorch_on_real_images_for_any_batch(trained, tiny_sample, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    result = export_model(trained, fmt, out)
    assert out.is_file() and result.parity[fmt] <= 1e-4
    refs = reference_images(trained, tiny_sample, n=8)
    run = onnx_logits if fmt == "onnx" else torchscript_logits
    for x in refs.network_input:  # each image at its own size: the export resizes it as predict does
        np.testing.assert_allclose(run(out, x[None]), pytorch_logits(trained, x[None], True), atol=1e-4, rtol=0)
    for batch, side in ((1, 20), (5, 64), (8, 150)):  # dynamic batch, height and width
        x = np.stack([resize_image(r, side) for r in refs.network_input[:batch]])
        np.testing.assert_allclose(run(out, x), pytorch_logits(trained, x, True), atol=1e-4, rtol=0)
    # an image at the input size gives the trained model's calibrated probabilities
    x = np.stack([resize_image(r, trained.input_size) for r in refs.network_input])
    with torch.inference_mode():
        logits = trained.model.eval()(torch.from_numpy(x)) / trained.temperature
    expected = torch.softmax(logits, dim=1).numpy()
    got = run(out, x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    assert np.ptp(got[:, 0]) > 1e-3  # the trained network: its images get different probabilities


@pytest.mark.slow
def test_package_passes_bioimageio_core_and_describes_a_classifier(package, trained):
    from bioimageio.core import test_model

    summary = test_model(package, devices=["cpu"])
    assert summary.status == "passed", [d.name for d in summary.details if d.status != "passed"]
    tested = {d.name for d in summary.details if "Reproduce test outputs" in d.name}
    assert len(tested) == 3  # torchscript, onnx and pytorch_state_dict each reproduce the test outputs
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
        names = set(z.namelist())
    assert {"cover.png", "test_input.npy", "test_output.npy", "weights.onnx", "weights.torchscript.pt",
            "cellclass_config.json"} <= names
    out = rdf["outputs"][0]
    assert [a["type"] for a in out["axes"]] == ["batch", "channel"]
    assert out["axes"][1]["channel_names"] == ["negative_control", "positive_control"]
    assert [p["id"] for p in out["postprocessing"]][-2:] in (["softmax", "ensure_dtype"],)
    pre = [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert "fixed_zero_mean_unit_variance" in pre and "scale_range" in pre  # 16-bit images: percentile scaling
    assert rdf["inputs"][0]["axes"][2]["size"] == {"min": 16, "step": 1}  # any size: the network resizes
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["input_size"] == trained.input_size
    assert "## Validation" in readme and "accuracy" in readme
    assert any("zenodo.4414861" in str(c.get("doi")) for c in rdf["cite"])


@pytest.mark.slow
def test_predict_with_the_package_gives_the_original_models_classes(package, trained, tiny_sample, tmp_path,
                                                                     capsys):
    own = predict(trained, tiny_sample, all_images=True, write=False)
    assert main(["predict", str(tiny_sample.root), "--model", str(package), "--all", "--json",
                 "--csv", str(tmp_path / "p.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == list(trained.classes)  # the names with their spaces, from our own export
    by_id = {p["image_id"]: p for p in out["predictions"]}
    assert set(by_id) == set(own.ids)
    exact = _float32_reference(trained, tiny_sample, own.ids)
    got_all = np.array([[by_id[i]["probabilities"][c] for c in trained.classes] for i in own.ids])
    np.testing.assert_allclose(got_all, exact, atol=1e-3)  # the package computes what the model computes
    np.testing.assert_allclose(got_all, own.probabilities, atol=TOLERANCE)  # predict's float16 rows
    sure = np.ptp(exact, axis=1) > 2e-3  # not a tie within rounding: the package gives the model's class
    assert sure.sum() >= 3 * len(sure) // 4
    for image_id, row, ok in zip(own.ids, exact, sure, strict=True):
        assert not ok or by_id[image_id]["predicted"] == [trained.classes[int(np.argmax(row))]]


def _strip_our_config(package, folder):
    """The package as another tool would write it: unzipped, without this program's config entry."""
    with zipfile.ZipFile(package) as z:
        z.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["config"].pop("napari-cellclass")
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return rdf


@pytest.mark.slow
def test_a_foreign_classifier_runs_through_the_zoo_pipeline(package, trained, tiny_sample, tmp_path):
    folder = tmp_path / "foreign"
    rdf = _strip_our_config(package, folder)
    res = predict(folder, tiny_sample, all_images=True, write=False)
    assert res.classes == tuple(rdf["outputs"][0]["axes"][1]["channel_names"])  # the channel names
    own = predict(trained, tiny_sample, all_images=True, write=False)
    assert res.ids == own.ids
    np.testing.assert_allclose(res.probabilities, _float32_reference(trained, tiny_sample, res.ids), atol=1e-3)
    np.testing.assert_allclose(res.probabilities, own.probabilities, atol=TOLERANCE)
    exact = _float32_reference(trained, tiny_sample, res.ids)
    clear = np.ptp(exact, axis=1) > 2e-3
    names = [trained.classes[int(np.argmax(row))].replace(" ", "_") for row in exact]
    pairs = zip(res.top_class, names, clear, strict=True)
    assert all(a == b for a, b, sure in pairs if sure) and clear.sum() >= 3 * len(clear) // 4


def _segmentation_package(tmp_path):
    """A foreign zoo model whose output is an image (batch, channel, y, x): not a classifier."""
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as v

    net = torch.jit.trace(torch.nn.Conv2d(1, 1, 3, padding=1).eval(), torch.zeros(1, 1, 16, 16))
    net.save(str(tmp_path / "w.pt"))
    x = np.random.default_rng(0).random((1, 1, 16, 16), dtype=np.float32)
    np.save(tmp_path / "in.npy", x)
    with torch.no_grad():
        np.save(tmp_path / "out.npy", net(torch.from_numpy(x)).numpy())
    (tmp_path / "README.md").write_text("# seg\n\n## Validation\nnone\n")
    axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("raw")]),
            v.SpaceInputAxis(id=v.AxisId("y"), size=16), v.SpaceInputAxis(id=v.AxisId("x"), size=16)]
    out_axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("mask")]),
                v.SpaceOutputAxis(id=v.AxisId("y"), size=v.SizeReference(tensor_id=v.TensorId("raw"),
                                                                          axis_id=v.AxisId("y"))),
                v.SpaceOutputAxis(id=v.AxisId("x"), size=v.SizeReference(tensor_id=v.TensorId("raw"),
                                                                          axis_id=v.AxisId("x")))]
    descr = v.ModelDescr(
        name="tiny segmenter", description="not a classifier", authors=[v.Author(name="someone")],
        cite=[v.CiteEntry(text="x", doi=v.Doi("10.5281/zenodo.4414861"))], license=v.LicenseId("MIT"),
        documentation=v.FileDescr(source=tmp_path / "README.md"),
        inputs=[v.InputTensorDescr(id=v.TensorId("raw"), axes=axes,
                                   test_tensor=v.FileDescr(source=tmp_path / "in.npy"))],
        outputs=[v.OutputTensorDescr(id=v.TensorId("mask"), axes=out_axes,
                                     test_tensor=v.FileDescr(source=tmp_path / "out.npy"))],
        weights=v.WeightsDescr(torchscript=v.TorchscriptWeightsDescr(source=tmp_path / "w.pt",
                                                                     pytorch_version=v.Version("2.0"))))
    return save_bioimageio_package(descr, output_path=tmp_path / "seg.zip")


def test_a_zoo_model_that_is_not_a_classifier_is_refused_in_one_line(tiny_sample, tmp_path, capsys):
    seg = _segmentation_package(tmp_path)
    with pytest.raises(ModelError, match="not a classifier: its output has axes batch, channel, y, x"):
        predict(seg, tiny_sample, write=False)
    assert main(["predict", str(tiny_sample.root), "--model", str(seg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a classifier" in err[0] and "Traceback" not in err[0]


def test_a_broken_zip_is_one_line(tiny_sample, tmp_path, capsys):
    bad = tmp_path / "model.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["predict", str(tiny_sample.root), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a BioImage Model Zoo model package" in err[0]


@pytest.mark.slow
def test_export_refuses_what_it_cannot_check_or_must_not_write(trained, tiny_sample, tmp_path, capsys):
    moved = tmp_path / "alone"
    shutil.copytree(trained.path, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["project"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    assert main(["export", str(moved), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "--project DIR" in err and "Traceback" not in err
    # with the project given it works, and the default file lies beside the model folder
    assert main(["export", str(moved), "--format", "onnx", "--project", str(tiny_sample.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"] == str(tmp_path / "alone.onnx") and out["parity"]["onnx"] <= 1e-4
    # an image of the project is never overwritten
    victim = tiny_sample.path(tiny_sample.image_ids[0])
    before = victim.read_bytes()
    assert main(["export", str(trained.path), "--format", "torchscript", "--out", str(victim)]) == 2
    assert victim.read_bytes() == before


@pytest.mark.slow
def test_a_multi_label_model_exports_with_sigmoid_and_runs_back_with_its_thresholds(tmp_path, fast_config):
    from napari_cellclass.core.project import Project
    from napari_cellclass.core.sample import make_sample_project

    p = Project.open(make_sample_project(tmp_path / "s", n=24, seed=2, size=64, labelled_fraction=1.0).root)
    p.set_multi_label(True)
    p.add_class("crowded")
    p.toggle(p.labelled_ids()[::2], "crowded")
    model = load_model(train(p, fast_config(epochs=8, loss="bce"), tmp_path / "m").model_dir)
    package = export_model(model, "bioimageio", tmp_path / "ml.zip").path
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert [q["id"] for q in rdf["outputs"][0]["postprocessing"]][-2] == "sigmoid"
    own = predict(model, p, all_images=True, write=False)
    back = predict(package, p, all_images=True, write=False)
    assert back.classes == model.classes and back.multi_label
    np.testing.assert_allclose(back.threshold, model.thresholds)  # the per-class thresholds travel
    np.testing.assert_allclose(back.probabilities, own.probabilities, atol=TOLERANCE)
    exact = _float32_reference(model, p, own.ids)
    np.testing.assert_allclose(back.probabilities, exact, atol=1e-3)
    clear = (np.abs(exact - model.thresholds) > 2e-3).all(axis=1)  # no class within rounding of its threshold
    expected = [tuple(c for c, v, t in zip(model.classes, row, model.thresholds, strict=True) if v >= t)
                for row in exact]
    pairs = zip(back.predicted(), expected, clear, strict=True)
    assert all(a == b for a, b, sure in pairs if sure) and clear.sum() >= 3 * len(clear) // 4


def test_a_bad_licence_is_one_line_before_any_work(trained, capsys):
    assert main(["export", str(trained.path), "--format", "bioimageio", "--license", "not a licence"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an SPDX licence id" in err[0] and len(err[0]) < 300


@pytest.mark.slow
def test_a_second_export_replaces_its_own_torchscript_file_but_never_a_users(trained, tmp_path):
    out = tmp_path / "net.torchscript.pt"
    export_model(trained, "torchscript", out)
    first = out.stat().st_mtime_ns
    export_model(trained, "torchscript", out)  # our own archive (its marker inside): replaced
    assert out.stat().st_mtime_ns >= first and torchscript_logits(out, np.zeros((1, 2, 32, 32), np.float32)).shape
    theirs = tmp_path / "theirs.pt"
    torch.save({"w": torch.zeros(1)}, theirs)
    before = theirs.read_bytes()
    from napari_cellclass.core.errors import ProjectError

    with pytest.raises(ProjectError, match="existing image, label or weights file"):
        export_model(trained, "torchscript", theirs)
    assert theirs.read_bytes() == before
