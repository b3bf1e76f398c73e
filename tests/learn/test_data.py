"""The data pipeline: decode-once cache (RAM and disk), invalidation, errors, augmentation."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from napari_cellclass.core.errors import ChannelMismatchError
from napari_cellclass.learn.config import TrainConfig
from napari_cellclass.learn.data import (
    BatchAugment,
    Batcher,
    ImageStore,
    Normalisation,
    choose_normalisation,
    load_store,
    scale_intensity,
)


def _pngs(folder, n=6, size=40, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (size, size) if channels == 1 else (size, size, channels)
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_memory_store_decodes_scales_and_resizes(tmp_path):
    paths = _pngs(tmp_path / "a")
    store = load_store(paths, 24)
    assert store.location == "memory" and store.ok.all()
    assert store.array.shape == (6, 1, 24, 24) and store.array.dtype == np.float16
    assert store.array.min() >= 0 and store.array.max() <= 1  # 8-bit: divided by 255
    assert store.gather(np.array([2, 0])).shape == (2, 1, 24, 24)


def test_disk_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path):
    paths = _pngs(tmp_path / "imgs")
    cache = tmp_path / "cellclass_cache"
    first = load_store(paths, 16, cache_dir=cache, memory_mb=0)
    assert first.location == "disk" and first.reused == 0 and first.ok.all()
    assert any(cache.rglob("images.f16")) and any(cache.rglob("index.json"))
    again = load_store(paths, 16, cache_dir=cache, memory_mb=0)
    assert again.reused == 6
    np.testing.assert_array_equal(again.gather(np.arange(6)), first.gather(np.arange(6)))
    # change one image: only that one is decoded again, with its new pixels
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(paths[3])
    st = os.stat(paths[3])
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_store(paths, 16, cache_dir=cache, memory_mb=0)
    assert third.reused == 5
    assert float(third.gather(np.array([3])).min()) == 1.0


def test_unreadable_images_are_skipped_with_a_reason(tmp_path):
    paths = _pngs(tmp_path / "b", n=3)
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"not a png at all")
    store = load_store([*paths, bad], 16)
    assert list(store.ok) == [True, True, True, False]
    assert str(bad) in store.problems


def test_channel_mismatch_names_the_file(tmp_path):
    gray = _pngs(tmp_path / "g", n=2)
    rgb = _pngs(tmp_path / "rgb", n=1, channels=3)
    with pytest.raises(ChannelMismatchError, match=r"img0\.png: has 3 channel\(s\) but the model takes 1"):
        load_store([*gray, *rgb], 16)


def test_percentile_scaling_is_robust_to_offset_and_bit_depth():
    rng = np.random.default_rng(0)
    img = rng.normal(1000, 100, (2, 32, 32)).astype(np.uint16)
    a = scale_intensity(img, "auto")
    b = scale_intensity((img.astype(np.float64) * 4 + 500).astype(np.uint16), "auto")
    np.testing.assert_allclose(a, b, atol=0.02)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 200, 16384])
def test_channel_percentiles_are_numpys(dtype, n):
    from napari_cellclass.learn.data.pixels import PERCENTILES, channel_percentiles

    rng = np.random.default_rng(n)
    flat = rng.gamma(2.0, 40.0, (3, n)).astype(dtype)
    np.testing.assert_allclose(channel_percentiles(flat, PERCENTILES),
                               np.percentile(flat.astype(np.float64), PERCENTILES, axis=1), rtol=1e-6)


def test_scaling_maps_the_percentiles_to_0_and_1():
    rng = np.random.default_rng(1)
    img = np.stack([rng.gamma(2, 300, (64, 48)), rng.gamma(3, 20, (64, 48)) + 100]).astype(np.uint16)
    lo, hi = np.percentile(img.astype(np.float64), (0.5, 99.8), axis=(1, 2))
    want = (img - lo[:, None, None]) / (hi - lo)[:, None, None]
    got = scale_intensity(img, "percentile")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    flt = img.astype(np.float32)
    flt[0, 0, 0] = np.nan  # floats: NaN counts as 0, as before
    assert np.isfinite(scale_intensity(flt, "percentile")).all()
    np.testing.assert_allclose(scale_intensity(img, "dtype"), img / 65535.0, rtol=1e-6)


def test_dataset_normalisation_statistics(tmp_path):
    store = load_store(_pngs(tmp_path / "n"), 16)
    norm = choose_normalisation(store, np.arange(6), "auto")
    x = store.array.astype(np.float64)
    assert norm.source == "dataset"
    assert norm.mean[0] == pytest.approx(x.mean(), rel=1e-4) and norm.std[0] == pytest.approx(x.std(), rel=1e-3)
    imagenet = choose_normalisation(store, np.arange(6), "auto", (0.5,), (0.25,))
    assert imagenet.source == "imagenet" and imagenet.mean == (0.5,)


def _aug(**kw):
    cfg = TrainConfig(**{"aug_brightness": 0.0, "aug_contrast": 0.0, **kw})
    return BatchAugment(cfg, Normalisation("auto", (0.0,), (1.0,), "dataset"), torch.device("cpu"))


def test_flips_and_rot90_are_exact_permutations():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    y = _aug(aug_flips=True, aug_rot90=True)(x, torch.Generator().manual_seed(1))
    for i in range(2):
        assert sorted(y[i].flatten().tolist()) == sorted(x[i].flatten().tolist())
    # the grid_sample path reproduces exact dihedral transforms for 90 degree steps
    z = _aug(aug_flips=True, aug_rot90=True, aug_affine_degrees=1e-9)(x, torch.Generator().manual_seed(1))
    for i in range(2):
        variants = [torch.rot90(v, k, (-2, -1)) for v in (x[i], x[i].flip(-1)) for k in range(4)]
        assert any(torch.allclose(z[i], v, atol=1e-3) for v in variants)


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(4, 2, 16, 16)
    aug = _aug(aug_affine_degrees=20.0, aug_affine_scale=0.1, aug_crop_scale=0.5, aug_brightness=0.1,
               aug_contrast=0.2, aug_gamma=0.2, aug_blur_prob=1.0, aug_noise_std=0.05)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batcher_and_prefetch_thread_give_the_same_batches(tmp_path):
    store = load_store(_pngs(tmp_path / "p", n=5), 16)
    b = Batcher(store, torch.device("cpu"))
    batches = [np.array([0, 1]), np.array([4, 2]), np.array([3])]
    plain = list(b.iterate(batches, threads=0))
    threaded = list(b.iterate(batches, threads=1))
    assert all(torch.equal(p, t) for p, t in zip(plain, threaded, strict=True))
    assert plain[1].dtype == torch.float32 and plain[1].shape == (2, 1, 16, 16)


def test_empty_store(tmp_path):
    store = ImageStore([], 16, in_chans=2)
    assert list(store.build()) == [] and store.array.shape == (0, 2, 16, 16)


# ---------------------------------------------------------------------------- concurrent builds, cancel, errors
_BUILDER = """
import sys, time
from pathlib import Path
from napari_cellclass.learn.data import ImageStore
cache, go, *paths = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.005)
store = ImageStore(paths, 16, cache_dir=Path(cache), memory_mb=0, threads=1)
for _ in store.build():
    pass
assert store.location == "disk" and store.ok.all()
"""


def test_two_processes_sharing_the_disk_cache_keep_every_image_on_its_own_row(tmp_path):
    import json
    import subprocess
    import sys

    paths = _pngs(tmp_path / "imgs", n=24)
    cache = tmp_path / "cellclass_cache"
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # each process brings 12 new images (and shares two): unlocked, both would take rows 0, 1, ...
    halves = [paths[:14], paths[10:]]
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(cache), str(go), *map(str, h)], env=env,
                              stderr=subprocess.PIPE, text=True) for h in halves]
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    (index_path,) = cache.rglob("index.json")
    index = json.loads(index_path.read_text())
    rows = [index["entries"][str(p)][0] for p in paths]
    assert sorted(rows) == list(range(24)) and index["rows"] == 24  # one row per image, none shared or lost
    cached = load_store(paths, 16, cache_dir=cache, memory_mb=0)
    assert cached.reused == 24
    np.testing.assert_array_equal(cached.gather(np.arange(24)), load_store(paths, 16).gather(np.arange(24)))
    assert list(index_path.parent.glob("lock"))  # the lock file stays (an empty file), unlocked
    assert load_store(paths[:3], 16, cache_dir=cache, memory_mb=0).reused == 3


def _counting_reader(monkeypatch, after=None, hook=None):
    """Patch the store's image reader to count reads (and call ``hook`` at read number ``after``)."""
    import threading

    from napari_cellclass.learn.data import cache

    real = cache.read_image
    count = {"n": 0}
    lock = threading.Lock()

    def read(path):
        with lock:
            count["n"] += 1
            if hook is not None and count["n"] == after:
                hook()
        return real(path)

    monkeypatch.setattr(cache, "read_image", read)
    return count


@pytest.mark.parametrize("memory_mb", [2048, 0])
def test_cancel_stops_decoding_early_and_a_later_build_reuses_the_rows(tmp_path, monkeypatch, memory_mb):
    import json

    from napari_cellclass.learn.events import CancelToken

    paths = _pngs(tmp_path / "c", n=40, size=24)
    cache = tmp_path / "cellclass_cache"
    token = CancelToken()
    count = _counting_reader(monkeypatch, after=3, hook=token.cancel)
    store = ImageStore(paths, 16, in_chans=1, cache_dir=cache, memory_mb=memory_mb, threads=2)
    progress = list(store.build(cancel=token))
    assert store.cancelled and count["n"] < 20  # at most a window of decodes after the cancel
    assert progress[-1][0] < 40 and 0 < store.ok.sum() < 40
    assert not store.problems  # the images not decoded are no problems
    if memory_mb == 0:  # the decoded rows are kept, the rows reserved for the others are reused
        again = load_store(paths, 16, cache_dir=cache, memory_mb=0)
        assert again.reused == int(store.ok.sum()) and again.ok.all()
        (index_path,) = cache.rglob("index.json")
        assert json.loads(index_path.read_text())["rows"] == 40
        np.testing.assert_array_equal(again.gather(np.arange(40)), load_store(paths, 16).gather(np.arange(40)))


def test_cancel_before_decoding_decodes_nothing(tmp_path, monkeypatch):
    from napari_cellclass.learn.events import CancelToken

    token = CancelToken()
    token.cancel()
    count = _counting_reader(monkeypatch)
    store = ImageStore(_pngs(tmp_path / "d", n=8), 16, in_chans=1, cache_dir=tmp_path / "cache", memory_mb=0)
    list(store.build(cancel=token))
    assert store.cancelled and count["n"] == 0 and not store.ok.any()


def test_an_early_channel_mismatch_is_raised_without_decoding_the_rest(tmp_path, monkeypatch):
    gray = _pngs(tmp_path / "g", n=40, size=24)
    rgb = _pngs(tmp_path / "rgb", n=1, channels=3)
    count = _counting_reader(monkeypatch)
    store = ImageStore([gray[0], *rgb, *gray[1:]], 16, in_chans=1, threads=2)
    with pytest.raises(ChannelMismatchError, match="has 3 channel"):
        list(store.build())
    assert count["n"] < 20


def test_the_disk_cache_waits_for_its_lock_and_hears_a_cancel_meanwhile(tmp_path):
    from napari_cellclass.learn.data import CACHE_VERSION, CacheLock
    from napari_cellclass.learn.events import CancelToken

    paths = _pngs(tmp_path / "l", n=4)
    cache = tmp_path / "cellclass_cache"
    folder = cache / f"v{CACHE_VERSION}-s16-c1-auto"
    folder.mkdir(parents=True)
    held = CacheLock(folder / "lock")
    assert held.try_acquire() is True
    assert CacheLock(folder / "lock").try_acquire() is False  # another holder is refused
    token = CancelToken()
    store = ImageStore(paths, 16, cache_dir=cache, memory_mb=0)
    build = store.build(cancel=token)
    token.cancel()
    assert list(build) == [] and store.cancelled and not store.ok.any()
    held.release()
    assert load_store(paths, 16, cache_dir=cache, memory_mb=0).ok.all()


def test_training_cancelled_while_decoding_finishes_cleanly(tiny_sample, fast_config, tmp_path):
    from napari_cellclass.learn.engine import run_training
    from napari_cellclass.learn.events import BatchProgress, CancelToken, Finished, Started

    token = CancelToken()
    out = tmp_path / "model"
    events = []
    for ev in run_training(tiny_sample.root, fast_config(), out, cancel=token):
        events.append(ev)
        if isinstance(ev, BatchProgress) and ev.phase == "cache":
            token.cancel()
    cache = [ev for ev in events if isinstance(ev, BatchProgress)]
    assert cache and cache[-1].batch < cache[-1].num_batches  # decoding stopped early
    assert not any(isinstance(ev, Started) for ev in events)
    fin = events[-1]
    assert isinstance(fin, Finished) and fin.cancelled and fin.model_dir is None and fin.epochs_run == 0
    assert not out.exists()


def test_store_decodes_tiffs_saved_alike_in_c_with_the_same_rows(tmp_path, monkeypatch):
    import tifffile

    from napari_cellclass.core import images
    from napari_cellclass.learn.data import cache

    rng = np.random.default_rng(3)
    paths = []
    for k in range(8):
        paths.append(tmp_path / f"t{k}.tif")
        tifffile.imwrite(paths[-1], rng.integers(0, 4000, (2, 40, 36)).astype(np.uint16), ome=True,
                         metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "other.tif", rng.integers(0, 4000, (2, 30, 30)).astype(np.uint16),
                     metadata={"axes": "CYX"})
    paths.append(tmp_path / "other.tif")
    calls = []
    real = images.read_image
    counting = lambda p: calls.append(p) or real(p)  # noqa: E731
    monkeypatch.setattr(images, "read_image", counting)
    monkeypatch.setattr(cache, "read_image", counting)
    fast = load_store(paths, 24)
    assert fast.ok.all() and len(calls) <= 3  # the reference (learnt and probed) and the other layout
    monkeypatch.setattr(images.TiffLayout, "learn", classmethod(lambda cls, p: None))
    slow = load_store(paths, 24)
    assert len(calls) >= 1 + len(paths)
    np.testing.assert_array_equal(fast.array, slow.array)


@pytest.mark.parametrize("shape", [(2, 128, 128), (1, 300, 170), (3, 40, 64)])
def test_prepared_rows_are_the_scaled_image_resized(shape):
    from napari_cellclass.learn.data.pixels import prepare_pixels, resize_image

    img = np.random.default_rng(len(shape)).gamma(2.0, 500.0, shape).astype(np.uint16)
    for mode in ("percentile", "dtype"):
        want = resize_image(scale_intensity(img, mode).astype(np.float64), 96)
        got = prepare_pixels(img, 96, mode)
        assert got.dtype == np.float16 and got.shape == (shape[0], 96, 96)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=1e-4)
