"""Reading images: every supported format and layout, channels kept, bad files reported."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_cellclass.core.errors import ImageReadError
from napari_cellclass.core.images import read_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32, np.float64])
def test_tiff_dtypes_are_kept(tmp_path, dtype):
    data = (np.arange(40 * 30).reshape(40, 30) % 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", data)
    img = read_image(tmp_path / "a.tif")
    assert img.pixels.shape == (1, 40, 30)
    assert img.pixels.dtype == dtype
    np.testing.assert_array_equal(img.pixels[0], data)
    assert img.channel_source == "none"


def test_multipage_tiff_pages_become_channels(tmp_path):
    data = np.stack([np.full((16, 20), k, np.uint16) for k in range(3)])
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for page in data:
            tw.write(page, photometric="minisblack", metadata=None)
    img = read_image(tmp_path / "pages.tif")
    assert img.pixels.shape == (3, 16, 20)
    assert [int(img.pixels[k, 0, 0]) for k in range(3)] == [0, 1, 2]


def test_ome_tiff_channels_and_names(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (2, 24, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "o.ome.tif", data, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "GFP"]}})
    img = read_image(tmp_path / "o.ome.tif")
    assert img.pixels.shape == (2, 24, 32)
    assert img.channel_source == "C"
    assert img.channel_names == ("DNA", "GFP")
    np.testing.assert_array_equal(img.pixels, data)


def test_channels_last_tiff_is_moved_first(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (20, 24, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    img = read_image(tmp_path / "rgb.tif")
    assert img.pixels.shape == (3, 20, 24)
    np.testing.assert_array_equal(img.pixels[1], data[..., 1])


def test_five_channel_tiff_is_not_reduced(tmp_path):
    data = np.random.default_rng(2).random((5, 16, 16)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data, metadata={"axes": "CYX"})
    assert read_image(tmp_path / "f.tif").pixels.shape == (5, 16, 16)


def test_zc_stack_is_refused_with_a_fix(tmp_path):
    tifffile.imwrite(tmp_path / "zc.tif", np.zeros((3, 2, 8, 8), np.uint8), metadata={"axes": "ZCYX"})
    with pytest.raises(ImageReadError, match="projection"):
        read_image(tmp_path / "zc.tif")


@pytest.mark.parametrize("ext", ["png", "bmp", "jpg"])
def test_pil_formats(tmp_path, ext):
    rgb = np.random.default_rng(3).integers(0, 255, (12, 18, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"x.{ext}")
    img = read_image(tmp_path / f"x.{ext}")
    assert img.pixels.shape == (3, 12, 18)
    if ext != "jpg":
        np.testing.assert_array_equal(np.moveaxis(img.pixels, 0, -1), rgb)


def test_png_16bit_gray_and_opaque_alpha(tmp_path):
    g = (np.arange(100).reshape(10, 10) * 600).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.pixels.shape == (1, 10, 10) and img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels[0], g)
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png").n_channels == 3  # opaque alpha carries nothing
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert read_image(tmp_path / "alpha.png").n_channels == 4  # real alpha is kept


def test_bad_files_have_one_line_reasons(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    good = np.random.default_rng(4).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(good).save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    tifffile.imwrite(tmp_path / "full.tif", np.ones((64, 64), np.uint16))
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(raw[: len(raw) // 3])
    for name, pattern in [("empty.tif", "empty"), ("junk.png", "corrupt"), ("trunc.jpg", "truncated|corrupt"),
                          ("trunc.tif", "corrupt"), ("missing.tif", "cannot open"), ("x.gif", "unsupported")]:
        with pytest.raises(ImageReadError, match=pattern) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg


def _layouts(tmp_path):
    """Pairs of TIFFs saved alike: (reference, other) per layout."""
    rng = np.random.default_rng(5)
    kinds = {
        "plain": (lambda k: rng.integers(0, 4000, (30, 40)).astype(np.uint16), {}),
        "pages": (lambda k: rng.integers(0, 255, (3, 16, 20)).astype(np.uint8),
                  {"metadata": None, "photometric": "minisblack"}),
        "ome": (lambda k: rng.integers(0, 4000, (2, 24, 32)).astype(np.uint16),
                {"ome": True, "metadata": {"axes": "CYX"}}),
        "rgb": (lambda k: rng.integers(0, 255, (20, 24, 3)).astype(np.uint8), {"photometric": "rgb"}),
        "float_nan": (lambda k: np.where(rng.random((12, 10)) > 0.9, np.nan, rng.random((12, 10))).astype(np.float32),
                      {}),
        "zlib": (lambda k: rng.integers(0, 60000, (2, 33, 17)).astype(np.uint16),
                 {"compression": "zlib", "metadata": {"axes": "CYX"}}),
    }
    out = {}
    for name, (make, kw) in kinds.items():
        pair = []
        for k in range(2):
            path = tmp_path / f"{name}{k}.tif"
            tifffile.imwrite(path, make(k), **kw)
            pair.append(path)
        out[name] = pair
    return out


def test_tiffs_saved_alike_decode_as_read_image_gives_them(tmp_path):
    from napari_cellclass.core.images import TiffLayout

    for name, (ref, other) in _layouts(tmp_path).items():
        layout = TiffLayout.learn(ref)
        assert layout is not None, name
        got = layout.read(other)
        want = read_image(other).pixels
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert not np.isnan(TiffLayout.learn(tmp_path / "float_nan0.tif").read(tmp_path / "float_nan1.tif")).any()


def test_other_layouts_and_bad_files_go_through_read_image(tmp_path, monkeypatch):
    from napari_cellclass.core import images

    pairs = _layouts(tmp_path)
    layout = images.TiffLayout.learn(pairs["ome"][0])
    calls = []
    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda p: calls.append(p) or real(p))
    layout.read(pairs["ome"][1])
    assert calls == []  # decoded by libtiff
    for other in (pairs["plain"][1], pairs["rgb"][1], pairs["zlib"][1]):  # other shapes or types
        np.testing.assert_array_equal(layout.read(other), real(other).pixels)
    assert len(calls) == 3
    raw = pairs["ome"][1].read_bytes()
    (tmp_path / "trunc.tif").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "empty.tif").write_bytes(b"")
    for name, pattern in (("trunc.tif", "corrupt"), ("empty.tif", "empty"), ("missing.tif", "cannot open")):
        with pytest.raises(ImageReadError, match=pattern) as info:
            layout.read(tmp_path / name)
        assert name in str(info.value)


def test_no_layout_without_imagecodecs_or_for_other_files(tmp_path, monkeypatch):
    import sys

    from napari_cellclass.core.images import TiffLayout

    pairs = _layouts(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert TiffLayout.learn(tmp_path / "a.png") is None
    tifffile.imwrite(tmp_path / "zc.tif", np.zeros((3, 2, 8, 8), np.uint8), metadata={"axes": "ZCYX"})
    assert TiffLayout.learn(tmp_path / "zc.tif") is None  # read_image refuses it
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    assert TiffLayout.learn(pairs["plain"][0]) is None
