"""Specifications of the image-folder data layer: checking files, scanning folders, preparing, caching, splitting."""

from __future__ import annotations

import json
import os
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.data import (
    DataConfig,
    DataError,
    ImageSet,
    augment,
    check_file,
    check_folder,
    format_report,
    load_dataset,
    prepare_image,
    scan_folder,
    split_indices,
    to_model,
)
from pixelforge.data import folder as folder_module

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _image(path: Path, color=RED, size=(16, 16), fmt: str | None = None, mode: str = "RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt, **save)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _noise_png_bytes(tmp_path: Path, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(0)
    p = tmp_path / f"noise.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(p, fmt)
    data = p.read_bytes()
    p.unlink()
    return data


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------------
# check_file: bad files are skipped with a clear reason


def test_zero_byte_file_is_skipped_as_zero_byte(tmp_path):
    img, reason = check_file(_bytes(tmp_path / "empty.png", b""))
    assert img is None and reason == "zero-byte file"


def test_truncated_png_is_skipped_as_truncated(tmp_path):
    data = _noise_png_bytes(tmp_path, "PNG")
    img, reason = check_file(_bytes(tmp_path / "cut.png", data[: len(data) // 2]))
    assert img is None and reason == "truncated image"


def test_truncated_jpeg_is_skipped_as_truncated(tmp_path):
    data = _noise_png_bytes(tmp_path, "JPEG")
    img, reason = check_file(_bytes(tmp_path / "cut.jpg", data[: len(data) // 2]))
    assert img is None and reason == "truncated image"


def test_random_bytes_named_png_are_not_an_image(tmp_path):
    img, reason = check_file(_bytes(tmp_path / "fake.png", np.random.default_rng(1).bytes(2000)))
    assert img is None and reason == "not an image or unsupported format"


def test_png_with_garbage_pixel_data_is_corrupt(tmp_path):
    data = bytearray(_noise_png_bytes(tmp_path, "PNG"))
    data[60:400] = np.random.default_rng(2).bytes(340)  # header intact, compressed stream destroyed
    img, reason = check_file(_bytes(tmp_path / "garbage.png", bytes(data)))
    assert img is None and reason.startswith("corrupt data")


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not pixels\n")
    img, reason = check_file(path)
    assert img is None and reason == "not an image or unsupported format"


def test_png_claiming_a_huge_size_is_refused_as_decompression_bomb(tmp_path):
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 9e8 RGB pixels claimed
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )
    img, reason = check_file(_bytes(tmp_path / "bomb.png", png))
    assert img is None and reason.startswith("decompression bomb")


def test_image_over_the_pixel_limit_is_refused_as_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "MAX_PIXELS", 1000)
    img, reason = check_file(_image(tmp_path / "big.png", size=(64, 64)))
    assert img is None and reason.startswith("decompression bomb") and "64x64" in reason


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_file_without_read_permission_is_unreadable(tmp_path):
    path = _image(tmp_path / "locked.png")
    path.chmod(0)
    try:
        img, reason = check_file(path)
    finally:
        path.chmod(0o644)
    assert img is None and reason.startswith("unreadable")


def test_permission_error_while_opening_is_reported_as_unreadable(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(folder_module.Image, "open", denied)
    img, reason = check_file(_image(tmp_path / "a.png"))
    assert img is None and reason == "unreadable: permission denied"


def test_missing_file_is_unreadable(tmp_path):
    img, reason = check_file(tmp_path / "gone.png")
    assert img is None and reason.startswith("unreadable")


# ---------------------------------------------------------------------------------------------------
# check_file: odd but valid files are converted correctly


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour(tmp_path):
    img, reason = check_file(_image(tmp_path / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK", quality=95))
    assert reason is None and img.mode == "RGB" and img.info["original_mode"] == "CMYK"
    r, g, b = img.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_png_is_scaled_to_8_bit_not_clipped(tmp_path):
    a = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    img, reason = check_file(path)
    assert reason is None and img.mode == "L" and img.info["original_mode"].startswith("I")
    assert np.asarray(img).tolist() == [[0, 1, 128, 255]]


def test_palette_png_with_transparency_turns_transparent_pixels_white(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "pal.png", transparency=0)  # palette index 0 is fully transparent
    img, reason = check_file(tmp_path / "pal.png")
    assert reason is None and img.mode == "RGB"
    assert img.getpixel((0, 0)) == RED and img.getpixel((2, 2)) == WHITE


def test_rgba_is_composited_over_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 0, 128))
    im.save(tmp_path / "alpha.png")
    img, reason = check_file(tmp_path / "alpha.png")
    assert reason is None and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((3, 3)) == WHITE
    assert all(120 <= v <= 135 for v in img.getpixel((1, 0)))


def test_grayscale_with_alpha_stays_grayscale_over_white(tmp_path):
    im = Image.new("LA", (4, 4), (0, 0))
    im.save(tmp_path / "la.png")
    img, reason = check_file(tmp_path / "la.png")
    assert reason is None and img.mode == "L" and img.getpixel((0, 0)) == 255


def test_exif_orientation_6_is_applied_and_swaps_width_and_height(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img, reason = check_file(_image(tmp_path / "rotated.jpg", size=(40, 20), exif=exif))
    assert reason is None and img.size == (20, 40)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img, reason = check_file(tmp_path / "anim.gif")
    assert reason is None and img.mode == "RGB" and img.getpixel((4, 4)) == RED


def test_multi_page_tiff_gives_its_first_page(tmp_path):
    pages = [Image.new("RGB", (8, 6), RED), Image.new("RGB", (5, 5), BLUE)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    img, reason = check_file(tmp_path / "pages.tif")
    assert reason is None and img.size == (8, 6) and img.getpixel((4, 4)) == RED


def test_png_with_jpg_extension_is_read_by_content(tmp_path):
    img, reason = check_file(_image(tmp_path / "really_png.jpg", BLUE, fmt="PNG"))
    assert reason is None and img.info["original_format"] == "PNG" and img.getpixel((0, 0)) == BLUE


# ---------------------------------------------------------------------------------------------------
# Folders: classes, captions, reports


def test_class_sub_folders_become_sorted_labels_and_hidden_files_are_ignored(tmp_path):
    _image(tmp_path / "dogs" / "d1.png", BLUE)
    _image(tmp_path / "cats" / "c1.png")
    _image(tmp_path / "cats" / "deeper" / "c2.png")
    _image(tmp_path / ".thumbs" / "t.png")
    _image(tmp_path / "cats" / ".hidden.png")
    _image(tmp_path / "loose.png")  # in the root of a labelled set: no class

    scan = scan_folder(tmp_path)
    assert scan.class_names == ["cats", "dogs"]
    assert [f.path for f in scan.files] == ["cats/c1.png", "cats/deeper/c2.png", "dogs/d1.png", "loose.png"]

    data = load_dataset(DataConfig(source=str(tmp_path), image_size=8), cache_dir=tmp_path / ".cache", progress=False)
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.images[2, :, 4, 4].tolist() == list(BLUE)
    assert [p for p, _ in data.skipped] == ["loose.png"] and data.skipped[0][1].startswith("no class")


def test_images_only_in_root_make_an_unlabelled_set(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.jpg")
    data = load_dataset(DataConfig(source=str(tmp_path), image_size=8), cache_dir=tmp_path / ".c", progress=False)
    assert data.labels is None and data.class_names == [] and len(data) == 2 and data.captions is None


def test_captions_jsonl_with_a_bad_line_reports_its_line_number(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png", BLUE)
    _image(tmp_path / "c.png", BLUE)
    lines = [
        json.dumps({"file": "a.png", "caption": "a red square"}),
        "{not json",
        json.dumps({"file": "./b.png", "text": "a blue square"}),
        json.dumps({"file": "missing.png", "caption": "x"}),
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")

    scan = scan_folder(tmp_path)
    assert "captions.jsonl" not in [f.path for f in scan.files]
    assert scan.captions == {"a.png": "a red square", "b.png": "a blue square"}
    assert [n for n, _ in scan.caption_errors] == [2, 4]
    assert "invalid JSON" in scan.caption_errors[0][1]

    report = check_folder(tmp_path)
    assert report.captions == 2 and "line 2: invalid JSON" in format_report(report)

    data = load_dataset(DataConfig(source=str(tmp_path), image_size=8), cache_dir=tmp_path / ".c", progress=False)
    assert data.captions == ["a red square", "a blue square", None]
    assert ("captions.jsonl:2", scan.caption_errors[0][1]) in data.skipped


def test_check_folder_counts_usable_classes_sizes_modes_and_skipped(tmp_path):
    _image(tmp_path / "cats" / "a.png", size=(20, 10))
    _image(tmp_path / "cats" / "b.png", 128, size=(20, 10), mode="L")
    _bytes(tmp_path / "dogs" / "broken.png", b"")
    report = check_folder(tmp_path)
    assert report.files == 3 and report.usable == 2
    assert report.class_counts == {"cats": 2, "dogs": 0}
    assert report.sizes == {(20, 10): 2} and report.modes == {"RGB": 1, "L": 1}
    assert report.skipped == [("dogs/broken.png", "zero-byte file")]
    text = format_report(report)
    assert "usable images : 2" in text and "dogs/broken.png" in text and "20x10 (2)" in text


def test_check_folder_of_a_missing_folder_reports_zero_usable(tmp_path):
    report = check_folder(tmp_path / "nope")
    assert report.usable == 0 and report.error == "folder does not exist"
    assert "folder does not exist" in format_report(report)


def test_empty_folder_raises_data_error_naming_the_folder(tmp_path):
    empty = tmp_path / "my_empty_set"
    empty.mkdir()
    with pytest.raises(DataError, match="no usable image in .*my_empty_set"):
        load_dataset(DataConfig(source=str(empty)), cache_dir=tmp_path / ".c", progress=False)


def test_folder_of_bad_files_raises_data_error_summarising_why(tmp_path):
    _bytes(tmp_path / "set" / "a.png", b"")
    _bytes(tmp_path / "set" / "b.png", b"")
    (tmp_path / "set" / "c.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source=str(tmp_path / "set")), cache_dir=tmp_path / ".c", progress=False)
    message = str(info.value)
    assert "set" in message and "3 files skipped" in message
    assert "2 zero-byte file" in message and "1 not an image" in message


def test_unknown_source_raises_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="no_such_thing"):
        load_dataset(DataConfig(source=str(tmp_path / "no_such_thing")), cache_dir=tmp_path / ".c", progress=False)


# ---------------------------------------------------------------------------------------------------
# Preparing images and validating the config


def _striped(size=(60, 20)) -> Image.Image:
    """Black left and right thirds, white centre square."""
    a = np.zeros((size[1], size[0]), dtype=np.uint8)
    a[:, size[0] // 3 : 2 * size[0] // 3] = 255
    return Image.fromarray(a, mode="L")


def test_center_crop_keeps_the_centre_square_at_image_size():
    out = prepare_image(_striped(), DataConfig(source="x", image_size=10, channels=1, crop="center"))
    assert out.shape == (1, 10, 10) and out.dtype == np.uint8
    assert out.min() > 240  # only the white centre remains


def test_random_crop_prepares_a_larger_side_to_crop_from_later():
    out = prepare_image(_striped(), DataConfig(source="x", image_size=16, channels=3, crop="random"))
    assert out.shape == (3, 18, 18)  # round(16 * 1.125)


def test_crop_none_squashes_the_whole_image():
    out = prepare_image(_striped(), DataConfig(source="x", image_size=12, channels=1, crop="none"))
    assert out.shape == (1, 12, 12)
    assert out[0, 6, 0] < 20 and out[0, 6, 6] > 240 and out[0, 6, 11] < 20


def test_prepare_image_converts_rgb_to_one_channel_and_gray_to_three():
    gray = prepare_image(Image.new("RGB", (9, 9), RED), DataConfig(source="x", image_size=8, channels=1))
    assert gray.shape == (1, 8, 8) and int(gray[0, 4, 4]) == 76  # ITU-R 601 luma of pure red
    rgb = prepare_image(Image.new("L", (9, 9), 77), DataConfig(source="x", image_size=8, channels=3))
    assert rgb.shape == (3, 8, 8) and rgb[:, 4, 4].tolist() == [77, 77, 77]


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"channels": 2}, ["channels", "1", "3"]),
        ({"crop": "middle"}, ["crop", "center", "random", "none"]),
        ({"image_size": 4}, ["image_size", "8"]),
        ({"val_fraction": 1.0}, ["val_fraction", "0 <= val_fraction < 1"]),
    ],
)
def test_invalid_config_fields_raise_data_error_listing_valid_choices(fields, words):
    with pytest.raises(DataError) as info:
        prepare_image(Image.new("RGB", (8, 8)), DataConfig(source="x", **fields))
    assert all(w in str(info.value) for w in words)


# ---------------------------------------------------------------------------------------------------
# Cache


def test_second_load_hits_the_cache_without_decoding_and_a_changed_file_misses(tmp_path, monkeypatch):
    root, cache = tmp_path / "set", tmp_path / "cache"
    _image(root / "a" / "1.png")
    _image(root / "b" / "2.png", BLUE)
    cfg = DataConfig(source=str(root), image_size=8, crop="random")
    first = load_dataset(cfg, cache_dir=cache, progress=False)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache should have been used")

    monkeypatch.setattr(folder_module, "check_file", no_decoding)
    second = load_dataset(cfg, cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.class_names == first.class_names and second.source == first.source
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".safetensors"]  # no temp file left

    _image(root / "b" / "3.png", BLUE)
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(cfg, cache_dir=cache, progress=False)


def test_cache_defaults_to_pixelforge_cache_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "env_cache"))
    _image(tmp_path / "set" / "a.png")
    load_dataset(DataConfig(source=str(tmp_path / "set"), image_size=8), progress=False)
    assert len(list((tmp_path / "env_cache" / "prepared").glob("*.safetensors"))) == 1


# ---------------------------------------------------------------------------------------------------
# Bundled sets


def test_bundled_name_is_converted_to_the_config(tmp_path, monkeypatch):
    raw = ImageSet(
        images=torch.full((3, 1, 28, 28), 200, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 2]),
        class_names=["0", "1", "2"],
        captions=None,
        source="tiny",
    )
    fake = types.ModuleType("pixelforge.data.bundled")
    fake.BUNDLED = {"tiny": "three gray squares"}
    fake.load_bundled = lambda name: raw
    monkeypatch.setitem(sys.modules, "pixelforge.data.bundled", fake)
    monkeypatch.chdir(tmp_path)  # the name must not also be a folder here
    data = load_dataset(DataConfig(source="tiny", image_size=16, channels=3), cache_dir=tmp_path / "c", progress=False)
    assert data.images.shape == (3, 3, 16, 16) and int(data.images.min()) == 200
    assert data.labels.tolist() == [0, 1, 2] and data.source == "tiny"


def test_unknown_source_lists_the_bundled_names(tmp_path, monkeypatch):
    try:
        from pixelforge.data.bundled import BUNDLED
    except ImportError:
        pytest.skip("pixelforge.data.bundled is not available")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source="definitely_not_bundled"), cache_dir=tmp_path / "c", progress=False)
    assert all(name in str(info.value) for name in BUNDLED)


# ---------------------------------------------------------------------------------------------------
# Split and batch transforms


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_indices(100, 0.1, seed=3)
    train2, val2 = split_indices(100, 0.1, seed=3)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(val) == 10 and set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert not torch.equal(val, split_indices(100, 0.1, seed=4)[1])


def test_split_keeps_at_least_one_validation_image_and_one_training_image():
    assert [len(t) for t in split_indices(5, 0.01, seed=0)] == [4, 1]
    assert [len(t) for t in split_indices(1, 0.5, seed=0)] == [1, 0]
    assert [len(t) for t in split_indices(10, 0.0, seed=0)] == [10, 0]


def test_to_model_centre_crops_and_scales_to_minus_one_one():
    cfg = DataConfig(source="x", image_size=4, crop="random")
    batch = torch.zeros(2, 3, 6, 6, dtype=torch.uint8)
    batch[..., 1:5, 1:5] = 255  # the centre 4x4 is white
    x = to_model(batch, cfg)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    assert torch.all(x == 1.0) and to_model(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), cfg).min() == -1.0


def test_augment_is_deterministic_per_generator_in_range_and_leaves_global_rng_alone():
    cfg = DataConfig(source="x", image_size=8, crop="random", hflip=True)
    batch = torch.randint(0, 256, (16, 3, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    a = augment(batch, cfg, torch.Generator().manual_seed(1))
    b = augment(batch, cfg, torch.Generator().manual_seed(1))
    c = augment(batch, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 3, 8, 8) and a.min() >= -1 and a.max() <= 1

    # every output is a crop (maybe flipped) of its own input
    x = ((a + 1) * 127.5).round().to(torch.uint8)
    for i in range(16):
        crops = [batch[i, :, y : y + 8, z : z + 8] for y in (0, 1) for z in (0, 1)]
        assert any(torch.equal(x[i], k) or torch.equal(x[i], k.flip(-1)) for k in crops)


def test_augment_without_random_crop_or_flip_equals_to_model():
    cfg = DataConfig(source="x", image_size=8)
    batch = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(augment(batch, cfg, torch.Generator().manual_seed(0)), to_model(batch, cfg))


def test_captions_jsonl_gives_several_wordings_of_an_image_as_a_list(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png", BLUE)
    _image(tmp_path / "c.png", BLUE)
    lines = [
        json.dumps({"file": "a.png", "caption": ["a red square", "a square in red", "red, square"]}),
        json.dumps({"file": "b.png", "caption": "a blue square"}),
        json.dumps({"file": "c.png", "caption": []}),
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    scan = scan_folder(tmp_path)
    assert scan.captions == {"a.png": "a red square", "b.png": "a blue square"}
    assert scan.caption_variants == {"a.png": ["a square in red", "red, square"]}
    assert scan.caption_errors == [(3, 'missing "caption" (or "text"): a string, or a non-empty list of strings')]
    data = load_dataset(DataConfig(source=str(tmp_path), image_size=8), cache_dir=tmp_path / ".c", progress=False)
    assert data.captions == ["a red square", "a blue square", None]
    assert data.caption_variants == [["a square in red", "red, square"], [], []]
    again = load_dataset(DataConfig(source=str(tmp_path), image_size=8), cache_dir=tmp_path / ".c", progress=False)
    assert again.caption_variants == data.caption_variants  # through the prepared-data cache
    cfg = lambda n: DataConfig(source=str(tmp_path), image_size=8, caption_variants=n)  # noqa: E731
    assert load_dataset(cfg(1), cache_dir=tmp_path / ".c", progress=False).caption_variants == [["a square in red"], [], []]
    assert load_dataset(cfg(0), cache_dir=tmp_path / ".c", progress=False).caption_variants is None
    assert load_dataset(cfg(None), cache_dir=tmp_path / ".c", progress=False).caption_variants == data.caption_variants


def test_the_bundled_shapes_set_draws_the_caption_variants_asked_for(tmp_path):
    from pixelforge.data.shapes import make_shapes

    plain = load_dataset(DataConfig(source="shapes"), cache_dir=tmp_path, progress=False)
    assert plain.caption_variants is None  # the bundled set carries none
    varied = load_dataset(DataConfig(source="shapes", caption_variants=2), cache_dir=tmp_path, progress=False)
    drawn, _ = make_shapes(len(varied), variants=2)
    assert varied.captions == drawn.captions and varied.caption_variants == drawn.caption_variants
    assert torch.equal(varied.images, plain.images)  # the same images, from the same cache entry
    resized = load_dataset(DataConfig(source="shapes", image_size=16, caption_variants=2), cache_dir=tmp_path, progress=False)
    assert resized.caption_variants == drawn.caption_variants
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(DataError, match="caption_variants"):
            load_dataset(DataConfig(source="shapes", caption_variants=bad), cache_dir=tmp_path, progress=False)
