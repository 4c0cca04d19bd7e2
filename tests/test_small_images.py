"""Images much smaller than the training size: listed by `data check`, skipped by training and by
evaluation's real set unless --allow-upscale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixelforge.cli import main


@pytest.fixture
def folder_with_a_dot(tmp_path, pixelforge_cache):
    """Twelve 8x8 images and one 1x1 image."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    return folder


def test_data_check_lists_an_image_below_half_the_training_size_as_too_small(folder_with_a_dot, capsys):
    assert main(["data", "check", str(folder_with_a_dot), "--quiet", "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "too small     : 1 image(s)" in out
    listed = [line for line in out.splitlines() if "dot.png" in line]
    assert listed and "1x1" in listed[0], out
    assert not any("img0" in line for line in out.splitlines())


def test_data_check_measures_against_the_image_size_given(folder_with_a_dot, capsys):
    # at a training size of 2 a 1x1 image is half of it, not below: nothing is too small
    main(["data", "check", str(folder_with_a_dot), "--quiet", "--image-size", "2"])
    assert "too small" not in capsys.readouterr().out


def _train(folder, runs, name, *extra):
    return main(["train", str(folder), "--name", name, "--runs-dir", str(runs), "--image-size", "8",
                 "--steps", "1", "--batch-size", "4", "--base-channels", "8", "--channel-mult", "1,2",
                 "--num-res-blocks", "1", "--sample-every", "1000", "--val-every", "1000", "--quiet", *extra])


def _images_in_split(run_dir) -> int:
    split = json.loads((run_dir / "split.json").read_text())
    return len(split["train"]) + len(split["val"])


def test_training_skips_a_too_small_image_and_says_so(folder_with_a_dot, tmp_path, capsys):
    assert _train(folder_with_a_dot, tmp_path / "runs", "skip") == 0
    out = capsys.readouterr().out
    assert "1 file skipped (1 too small)" in out and "--allow-upscale" in out
    assert _images_in_split(tmp_path / "runs" / "skip") == 12


def test_training_with_allow_upscale_keeps_the_too_small_image(folder_with_a_dot, tmp_path, capsys):
    assert _train(folder_with_a_dot, tmp_path / "runs", "keep", "--allow-upscale") == 0
    assert _images_in_split(tmp_path / "runs" / "keep") == 13
    saved = json.loads((tmp_path / "runs" / "keep" / "config.json").read_text())
    assert saved["data"]["allow_upscale"] is True


def test_evaluation_real_set_leaves_out_images_too_small_for_the_run(folder_with_a_dot):
    from pixelforge.evaluate import load_real
    from pixelforge.metrics.features import load_extractor

    ext = load_extractor("mnist-classifier", device="cpu")
    assert len(load_real(str(folder_with_a_dot), extractor=ext, image_size=8, progress=False, shortest=4)) == 12
    assert len(load_real(str(folder_with_a_dot), extractor=ext, image_size=8, progress=False, shortest=0)) == 13


def test_a_too_small_image_does_not_change_the_side_of_the_real_set(folder_with_a_dot):
    from pixelforge.evaluate import load_real
    from pixelforge.metrics.features import load_extractor

    ext = load_extractor("mnist-classifier", device="cpu")  # input 28x28: the side used for mixed sizes
    assert tuple(load_real(str(folder_with_a_dot), extractor=ext, progress=False, shortest=4).shape[-2:]) == (8, 8)
