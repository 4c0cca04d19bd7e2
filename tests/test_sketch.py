"""Specifications of sketch (edge map) conditioning: Canny edges, drawings made into the training
representation, training with --condition edges, sampling with --sketch, and the settings that record it."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import contextlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.condition.edges import canny_edges, drawing_lines, edge_maps, normalise_sketch, read_sketch, stroke_width
from pixelforge.images import read_settings
from pixelforge.models import DiffusionModel
from pixelforge.models.diffusion import DiffusionConfig

from conftest import _randomize_zero_init, train_straight_and_resumed

cv2 = pytest.importorskip("cv2")

TINY = ["--image-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
        "--batch-size", "16", "--steps", "4", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
        "--sample-every", "4", "--warmup", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]


def ring(side: int, pen: int, *, bright: bool = True, size: tuple[int, int] | None = None) -> Image.Image:
    """A "0": an ellipse of pen width `pen`, bright on black (a training digit) or black on white (a drawing)."""
    w, h = size or (side, side)
    im = Image.new("L", (w, h), 0 if bright else 255)
    s = min(w, h)
    box = [(w - s) / 2 + s * 0.3, (h - s) / 2 + s * 0.15, (w - s) / 2 + s * 0.7, (h - s) / 2 + s * 0.85]
    ImageDraw.Draw(im).ellipse(box, outline=255 if bright else 0, width=pen)
    return im


def uint8_batch(*ims: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in ims]))[:, None]  # (N, 1, H, W)


def border_label(labels: np.ndarray) -> set[int]:
    return set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())


# --- edges ----------------------------------------------------------------------------------------


def test_canny_edges_of_a_drawn_digit_are_a_closed_one_pixel_outline():
    digit = ring(28, 3)
    edges = canny_edges(uint8_batch(digit))
    assert edges.shape == (1, 1, 28, 28) and edges.dtype == torch.uint8
    assert set(edges.unique().tolist()) == {0, 255}
    e = edges[0, 0].numpy() > 0
    # closed: no stroke pixel and not the hole reaches the border through non-edge pixels (4-connected)
    _, labels = cv2.connectedComponents((~e).astype(np.uint8), connectivity=4)
    stroke = (np.asarray(digit) >= 128) & ~e
    assert not set(np.unique(labels[stroke]).tolist()) & border_label(labels)
    assert labels[14, 14] not in border_label(labels)  # the hole of the "0" is enclosed
    # the outline hugs the stroke: every edge pixel is within one pixel of it
    near = cv2.dilate((np.asarray(digit) >= 128).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert (e <= near).all()


def test_canny_edges_of_rgb_equal_those_of_its_grey_and_a_blank_image_has_none():
    grey = ring(32, 4)
    rgb = torch.from_numpy(np.array(grey.convert("RGB"))).permute(2, 0, 1)[None]
    assert torch.equal(canny_edges(rgb), canny_edges(uint8_batch(grey)))
    assert not canny_edges(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).any()
    with pytest.raises(ValueError, match="uint8"):
        canny_edges(torch.zeros(1, 1, 8, 8))


def test_stroke_width_measures_the_pen_of_the_subjects():
    assert stroke_width(uint8_batch(ring(64, 1), ring(64, 1))) == pytest.approx(1.0, abs=0.3)
    assert stroke_width(uint8_batch(ring(64, 5), ring(64, 5))) == pytest.approx(5.0, abs=1.0)
    assert stroke_width(torch.zeros(2, 1, 16, 16, dtype=torch.uint8)) == 0.0


def test_edge_maps_are_cached_by_content(tmp_path):
    images = uint8_batch(ring(16, 2), ring(16, 3))
    first = edge_maps(images, "canny", tmp_path, progress=False)
    assert torch.equal(first, canny_edges(images))
    (entry,) = tmp_path.glob("edges-*.safetensors")
    assert torch.equal(edge_maps(images, "canny", tmp_path, progress=False), first)
    entry.write_bytes(b"damaged")  # a damaged entry is recomputed
    assert torch.equal(edge_maps(images, "canny", tmp_path, progress=False), first)
    with pytest.raises(ValueError, match="unknown edge detector 'sobel'; choose one of: canny, hed"):
        edge_maps(images, "sobel", tmp_path)


# --- a user's drawing -----------------------------------------------------------------------------


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far two (1, H, W) line maps agree, within one pixel (lines one pixel apart are the same stroke):
    the smaller of the shares of each map's pixels that have one of the other's in their 3x3 neighbourhood."""
    a, b = a[0].numpy() > 0, b[0].numpy() > 0
    near = lambda p, q: (p & (cv2.dilate(q.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)).sum() / p.sum()  # noqa: E731
    return float(min(near(a, b), near(b, a)))


def test_a_drawing_of_another_size_is_resized_with_a_warning_to_what_a_drawing_of_the_model_size_gives(recwarn):
    small = normalise_sketch(ring(28, 1, bright=False), 28, stroke_width=2.0)
    assert not recwarn.list  # the model's own size: no warning
    with pytest.warns(UserWarning, match="the sketch is 280x280: resized to the model's 28x28"):
        large = normalise_sketch(ring(280, 10, bright=False), 28, stroke_width=2.0)
    assert small.shape == large.shape == (1, 28, 28) and small.dtype == torch.float32
    assert set(large.unique().tolist()) == {0.0, 1.0}
    assert agreement(small, large) > 0.95
    one = Image.new("L", (28, 28), 255)
    ImageDraw.Draw(one).line([(14, 4), (14, 24)], fill=0, width=1)
    assert agreement(small, normalise_sketch(one, 28, stroke_width=2.0)) < 0.5  # (the measure tells a 1 from a 0)


def test_a_drawing_gives_the_same_map_whatever_its_pen_width():
    with pytest.warns(UserWarning, match="resized"):
        maps = [normalise_sketch(ring(280, pen, bright=False), 28, stroke_width=2.0) for pen in (3, 12, 30)]
    with_thin_pen = normalise_sketch(ring(28, 1, bright=False), 28, stroke_width=2.0)
    for m in maps:
        assert agreement(m, with_thin_pen) > 0.85
    # the map is what the detector gives for a training digit of the measured stroke width
    digit = canny_edges(uint8_batch(ring(28, 2)))[0].float() / 255
    assert agreement(with_thin_pen, digit) > 0.95


def test_a_drawing_that_is_not_square_is_padded_not_stretched():
    # an ellipse 0.4 x 0.7 of the canvas height on a 2:1 canvas: 1.75 times as tall as wide; stretched, 3.5
    with pytest.warns(UserWarning, match="is 560x280: resized to the model's 28x28 \\(padded to a square"):
        wide = normalise_sketch(ring(0, 8, bright=False, size=(560, 280)), 28, stroke_width=0)
    rows, cols = np.nonzero(wide[0].numpy())
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 1.4 < height / width < 2.2
    assert abs((rows.max() + rows.min()) / 2 - 13.5) <= 1 and abs((cols.max() + cols.min()) / 2 - 13.5) <= 1


def test_a_blank_page_gives_an_empty_map_and_a_bad_file_is_a_clear_error(tmp_path):
    assert not normalise_sketch(Image.new("L", (28, 28), 255), 28, stroke_width=2.0).any()
    bad = tmp_path / "drawing.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"sketch {bad}"):
        normalise_sketch(bad, 28)
    with pytest.raises(ValueError, match="file path or a PIL image"):
        normalise_sketch(42, 28)


def test_a_sketch_hashes_the_same_as_a_file_and_as_the_image_read_from_it(tmp_path):
    im = ring(40, 3, bright=False)
    im.save(tmp_path / "a.png")
    assert read_sketch(tmp_path / "a.png")[1] == read_sketch(im)[1]
    assert read_sketch(im)[1] == hashlib.sha256(b"L (40, 40)\n" + im.tobytes()).hexdigest()


def test_drawing_lines_are_one_pixel_centre_lines():
    with pytest.warns(UserWarning):
        lines = drawing_lines(ring(280, 20, bright=False), 28)
    assert lines.dtype == bool and lines.shape == (28, 28)
    # one pixel wide: no 2x2 block is all line
    blocks = lines[:-1, :-1] & lines[1:, :-1] & lines[:-1, 1:] & lines[1:, 1:]
    assert not blocks.any()


# --- the network ----------------------------------------------------------------------------------


def tiny(**fields) -> DiffusionConfig:
    return DiffusionConfig(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, depth=2,
                           **fields)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_an_edge_model_adds_one_zero_initialised_weight_and_keeps_all_others(backbone):
    plain = DiffusionModel(tiny(backbone=backbone)).state_dict()
    edges = DiffusionModel(tiny(backbone=backbone, spatial_condition="edges")).state_dict()
    (extra,) = set(edges) - set(plain)
    assert extra in ("net.spatial_in.weight", "net.spatial_embed.weight")
    assert edges[extra].shape[1] == 2  # the edge map and its flag
    assert not edges[extra].any()
    assert all(torch.equal(plain[k], edges[k]) for k in plain)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_the_network_tells_a_blank_sketch_from_no_sketch_and_guidance_contrasts_them(backbone):
    model = _randomize_zero_init(DiffusionModel(tiny(backbone=backbone, spatial_condition="edges"))).eval()
    x, sigma = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((2,), 1.0)
    blank = Cond(spatial=torch.zeros(2, 1, 8, 8))
    drawn = Cond(spatial=torch.ones(2, 1, 8, 8))
    with torch.no_grad():
        d_blank, d_none = model.denoise(x, sigma, blank), model.denoise(x, sigma, blank.empty())
        assert not torch.allclose(d_blank, d_none)
        assert not torch.allclose(model.denoise(x, sigma, drawn), d_blank)
        assert torch.equal(d_none, model.denoise(x, sigma, None))  # no sketch at all = the empty condition
        guided = model.guided_denoiser(3.0)(x, sigma, drawn)
        d_drawn = model.denoise(x, sigma, drawn)
        assert torch.allclose(guided, d_none + 3.0 * (d_drawn - d_none), atol=1e-5)


def test_a_spatial_condition_of_the_wrong_shape_is_a_clear_error():
    model = DiffusionModel(tiny(spatial_condition="edges"))
    with pytest.raises(ValueError, match=r"Cond.spatial must be \(2, 1, 8, 8\).*got \(2, 1, 4, 4\)"):
        model.denoise(torch.zeros(2, 1, 8, 8), torch.ones(2), Cond(spatial=torch.zeros(2, 1, 4, 4)))


def test_condition_dropout_empties_the_sketch_with_the_label():
    cond = Cond(labels=torch.tensor([1, 2, 3, 4]), spatial=torch.ones(4, 1, 8, 8))
    dropped = cond.drop(0.5, torch.Generator().manual_seed(1))
    gone = dropped.labels < 0
    assert gone.any() and (~gone).any()
    assert torch.equal(~dropped.present, gone)
    assert not dropped.spatial[gone].any() and dropped.spatial[~gone].all()


def test_config_fields_are_checked_with_clear_errors():
    with pytest.raises(ValueError, match="spatial_condition must be"):
        tiny(spatial_condition="depth")
    with pytest.raises(ValueError, match="edge_detector 'sobel' is not known; choose one of: canny, hed"):
        tiny(spatial_condition="edges", edge_detector="sobel")
    with pytest.raises(ValueError, match="sketch_stroke_width must be 0 where edge_detector is \"\""):
        tiny(spatial_condition="edges", edge_detector="", sketch_stroke_width=1.0)
    with pytest.raises(ValueError, match="edge_detector \\['canny'\\] is not known"):
        tiny(spatial_condition="edges", edge_detector=["canny"])  # a hostile config.json's list
    for bad in (-1, float("nan"), "2"):
        with pytest.raises(ValueError, match=r"sketch_stroke_width must be a number of pixels in \[0, 64\]"):
            tiny(spatial_condition="edges", sketch_stroke_width=bad)
    assert "sketch_stroke_width" in tiny().unused_fields()


# --- training -------------------------------------------------------------------------------------


def edge_run_config(make_run_config, **train_fields):
    cfg = make_run_config(model={"num_classes": 0, "spatial_condition": "edges", "sketch_stroke_width": 1.0},
                          **train_fields)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, crop="random", hflip=True))


def test_an_edge_map_gets_the_crop_and_flip_of_its_image(make_run_config, pixelforge_cache):
    from pixelforge.data import augment, load_dataset
    from pixelforge.train.conditions import TrainingConditions

    cfg = edge_run_config(make_run_config)
    data = load_dataset(cfg.data, progress=False)
    model = DiffusionModel(cfg.model_config())
    conds = TrainingConditions(data, model, pixelforge_cache, progress=False)
    idx = torch.arange(16)
    x, cond = conds.augmented(data, idx, cfg.data, torch.Generator().manual_seed(3), "cpu")
    # the images are exactly what augment gives without a condition: the random stream is unchanged
    assert torch.equal(x, augment(data.images[idx], cfg.data, torch.Generator().manual_seed(3)))
    edges = (augment(canny_edges(data.images[idx]), cfg.data, torch.Generator().manual_seed(3)) + 1) / 2
    assert torch.equal(cond.spatial, edges) and cond.present.all()
    assert data.images.shape[-1] > cfg.data.image_size  # random crops did happen


@pytest.fixture(scope="module")
def resume_pair(tmp_path_factory, make_run_config):
    """An 8-step edge-conditioned run trained straight and stopped at 4 then resumed."""
    root = tmp_path_factory.mktemp("sketch-resume")
    cfg = edge_run_config(make_run_config, steps=8, ckpt_every=4, val_every=4, sample_every=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        return (root, *train_straight_and_resumed(cfg, root, stop_at=4))


def test_an_edge_run_resumes_exactly(resume_pair):
    root, full, second, a, b = resume_pair
    for step in range(4, 8):
        assert second.losses[step] == full.losses[step], step
    assert "net.spatial_in.weight" in a["model"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["model"]["net.spatial_in.weight"].any()  # the sketch weights did train
    with open(root / "full" / "metrics.csv", newline="") as f:
        assert [r["val_loss"] for r in csv.DictReader(f) if r["val_loss"]]  # validation ran with edge maps
    assert (root / "full" / "samples" / "step_0000008.png").is_file()


# --- the command and the API ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sketch_run(tmp_path_factory):
    """`pixelforge train digits --condition edges` (4 tiny steps): (runs dir, config.json model fields)."""
    root = tmp_path_factory.mktemp("sketch-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "digits", "--name", "edges", "--runs-dir", str(root / "runs"), "--condition", "edges",
                         "--no-labels", *TINY])
        assert code == 0, out.getvalue()
        plain = main(["train", "digits", "--name", "plain", "--runs-dir", str(root / "runs"), *TINY])
        assert plain == 0
    return root / "runs"


def test_train_condition_edges_records_the_detector_and_the_measured_stroke_width(sketch_run):
    g = pixelforge.load("edges", runs_dir=sketch_run, device="cpu")
    assert g.inputs == ("spatial",)
    cfg = g.model.config
    assert (cfg.spatial_condition, cfg.edge_detector) == ("edges", "canny")
    assert 0.5 < cfg.sketch_stroke_width < 4  # the 8x8 digits' strokes


def test_sample_sketch_records_it_and_sample_from_regenerates_the_image(sketch_run, tmp_path, capsys):
    drawing = tmp_path / "drawing.png"
    ring(64, 5, bright=False).save(drawing)
    out = tmp_path / "out"
    code = main(["sample", "edges", "--runs-dir", str(sketch_run), "--sketch", str(drawing), "-n", "2", "--steps", "2",
                 "--guidance", "2", "-o", str(out), "--device", "cpu"])
    assert code == 0
    assert "pixelforge sample: warning: sketch" in capsys.readouterr().err  # 64x64 resized to 8x8
    s = read_settings(out / "seed000001.png")
    digest = read_sketch(drawing)[1]
    assert s["sketch_sha256"] == digest and s["guidance"] == 2.0
    assert read_sketch(out / s["sketch"])[1] == digest  # the copy beside the images
    again = tmp_path / "again"
    assert main(["sample", "--from", str(out / "seed000001.png"), "--runs-dir", str(sketch_run), "-o", str(again),
                 "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(again / "seed000001.png")), np.asarray(Image.open(out / "seed000001.png")))
    # the copy gone, or another drawing in its place: a clear error
    (out / s["sketch"]).unlink()
    capsys.readouterr()
    assert main(["sample", "--from", str(out / "seed000001.png"), "--runs-dir", str(sketch_run), "-o",
                 str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert f"was drawn from the sketch {s['sketch']}" in capsys.readouterr().err
    ring(64, 9, bright=False).save(out / s["sketch"])
    assert main(["sample", "--from", str(out / "seed000001.png"), "--runs-dir", str(sketch_run), "-o",
                 str(tmp_path / "y"), "--device", "cpu"]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err


def test_the_sketch_steers_the_image_and_a_folder_gives_n_images_per_sketch(sketch_run, tmp_path):
    g = pixelforge.load("edges", runs_dir=sketch_run, device="cpu")
    with torch.no_grad():
        for p in g.model.net.spatial_in.parameters():  # 4 steps hardly move the zero init: make it count
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    a, b = ring(8, 1, bright=False), Image.new("L", (8, 8), 255)
    one = g.generate_tensor(2, sketch=a, seed=3, steps=2)[0]
    other = g.generate_tensor(2, sketch=b, seed=3, steps=2)[0]
    assert not torch.equal(one, other)
    both, settings = g.generate_tensor(2, sketch=[a, b], seed=3, steps=2)
    assert torch.equal(both[0], one[0]) and torch.equal(both[1], other[1])
    assert settings[0]["sketch_sha256"] != settings[1]["sketch_sha256"]
    folder = tmp_path / "drawings"
    folder.mkdir()
    a.save(folder / "a.png")
    b.save(folder / "b.png")
    out = tmp_path / "out"
    assert main(["sample", "edges", "--runs-dir", str(sketch_run), "--sketch", str(folder), "-n", "2", "--steps", "1",
                 "-o", str(out), "--device", "cpu"]) == 0
    assert len(list(out.glob("seed*.png"))) == 4 and len(list(out.glob("sketch-*.png"))) == 2


def test_a_sketch_for_a_model_that_takes_none_is_a_clear_error(sketch_run, tmp_path, capsys):
    drawing = tmp_path / "d.png"
    ring(8, 1, bright=False).save(drawing)
    code = main(["sample", "plain", "--runs-dir", str(sketch_run), "--sketch", str(drawing), "-n", "1", "--device", "cpu",
                 "-o", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("pixelforge sample: error: plain takes no sketch (it was not trained with --condition edges); "
                   "the conditions it takes: labels")
    g = pixelforge.load("edges", runs_dir=sketch_run, device="cpu")
    with pytest.raises(ValueError, match="3 sketches given for 2 images"):
        g.generate_tensor(2, sketch=[drawing] * 3)


def test_condition_edges_on_another_family_or_an_unknown_detector_is_a_clear_error(tmp_path, capsys, pixelforge_cache):
    assert main(["train", "digits", "--name", "g", "--runs-dir", str(tmp_path), "--model", "gan", "--condition", "edges",
                 *TINY]) == 2
    assert "gan models take no edge maps" in capsys.readouterr().err
    assert main(["train", "digits", "--name", "h", "--runs-dir", str(tmp_path), "--edge-detector", "sobel", *TINY]) == 2
    assert "unknown edge detector 'sobel'; choose one of: canny, hed" in capsys.readouterr().err
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()
