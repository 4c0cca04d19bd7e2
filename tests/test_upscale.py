"""Specifications of the upscaler (a super-resolution diffusion model): the low-resolution pipeline, training with
--model upscale, `pixelforge upscale` and Generator.upscale, post's --upscaler, and regenerating with --from."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.condition.lowres import LowresConfig, downsample, lowres_condition, upsample
from pixelforge.data import load_dataset, to_model
from pixelforge.images import read_settings
from pixelforge.models import DiffusionModel
from pixelforge.models.diffusion import DiffusionConfig
from pixelforge.post import PostSettings

from conftest import train_straight_and_resumed

TINY = ["--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--batch-size", "16", "--steps", "4",
        "--ckpt-every", "2", "--val-every", "2", "--log-every", "1", "--sample-every", "4", "--warmup", "2", "--lr", "1e-3",
        "--device", "cpu", "--quiet"]


def images(n: int = 3, side: int = 8, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """(n, C, side, side) in [-1, 1], on the 256 levels of 8-bit images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), generator=g).float() / 127.5 - 1


def pil(x: torch.Tensor) -> Image.Image:
    """(1, H, W) in [-1, 1] -> a grey PIL image."""
    return Image.fromarray(((x[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy(), "L")


# --- the low-resolution pipeline ------------------------------------------------------------------


def test_downsample_is_pillows_antialiased_bicubic_rounded_to_8_bits_and_upsample_brings_it_back():
    x = images(3, 28)
    low = downsample(x, LowresConfig(scale=2))  # (3, 1, 14, 14)
    assert low.shape == (3, 1, 14, 14)
    levels = (low + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # 8-bit values, as a PNG input holds them
    for i in range(3):  # Pillow's BICUBIC resize, which widens its kernel over the scale (antialiasing)
        ref = np.asarray(pil(x[i]).resize((14, 14), Image.Resampling.BICUBIC), dtype=np.int16)
        assert np.abs(levels[i, 0].numpy().astype(np.int16) - ref).max() <= 1
    assert lowres_condition(x, LowresConfig(scale=2)).shape == (3, 1, 28, 28)
    assert upsample(low, 28, LowresConfig(scale=2)).abs().max() <= 1


def test_the_area_filter_averages_each_block_and_scale_4_gives_a_quarter_side():
    x = images(2, 8, channels=3)
    low = downsample(x, LowresConfig(scale=4, down="area"))
    assert low.shape == (2, 3, 2, 2)
    block = x[:, :, :4, :4].mean(dim=(2, 3))
    assert torch.allclose(low[:, :, 0, 0], ((block + 1) * 127.5).round() / 127.5 - 1, atol=1e-6)


def test_lowres_config_and_a_scale_that_does_not_divide_the_size_are_clear_errors():
    with pytest.raises(ValueError, match=r"lowres.scale \(--scale\) must be one of 2, 3, 4"):
        LowresConfig(scale=5)
    with pytest.raises(ValueError, match="lowres.down must be one of"):
        LowresConfig(down="lanczos")
    with pytest.raises(ValueError, match="must divide image_size 28"):
        DiffusionConfig(image_size=28, channels=1, channel_mult=(1, 2), lowres={"scale": 3})
    with pytest.raises(ValueError, match="unknown field"):
        DiffusionConfig(image_size=8, channels=1, lowres={"scale": 2, "filter": "x"})
    with pytest.raises(ValueError, match="both use the spatial input"):
        DiffusionConfig(image_size=8, channels=1, lowres={"scale": 2}, spatial_condition="edges")


def test_an_upscaler_takes_its_low_res_image_as_channels_and_adds_its_sample_to_it():
    cfg = DiffusionConfig(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          lowres={"scale": 2}, label_dropout=0.0)
    model = DiffusionModel(cfg, seed=0)
    assert model.takes() == ("spatial",) and "upscale" in model.capabilities
    assert model.net.spatial_in.weight.shape[1] == 2  # the low-res image's channel and the flag
    base = lowres_condition(images(2), cfg.lowres)
    # a denoiser that always answers 0 (a residual of 0): the ODE ends at 0 and the sample is the input itself
    model.denoise = lambda x, sigma, cond=None: torch.zeros_like(x)
    out = model.sample(2, Cond(spatial=base), seeds=[0, 1], steps=2)
    assert torch.allclose(out, base, atol=1e-6)
    with pytest.raises(ValueError, match="needs Cond.spatial"):
        model.sample(1, None, steps=2)
    with pytest.raises(ValueError, match="does not edit"):
        model.edit(images(1), steps=2)


# --- training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upscale_runs(tmp_path_factory):
    """`pixelforge train digits --model upscale --scale 2` (4 tiny steps), and a plain diffusion run: the runs dir."""
    root = tmp_path_factory.mktemp("upscale-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "digits", "--model", "upscale", "--scale", "2", "--name", "up", "--runs-dir",
                         str(root / "runs"), *TINY])
            assert code == 0, out.getvalue()
            assert main(["train", "digits", "--name", "plain", "--runs-dir", str(root / "runs"), *TINY]) == 0
    return root / "runs"


def test_train_model_upscale_records_the_scale_filters_and_the_residuals_spread(upscale_runs):
    g = pixelforge.load("up", runs_dir=upscale_runs, device="cpu")
    cfg = g.model.config
    assert g.config.family == "diffusion" and g.inputs == ("spatial",)
    assert cfg.lowres == LowresConfig(scale=2, down="bicubic", up="bicubic")
    assert cfg.num_classes == 0 and cfg.label_dropout == 0.0
    assert 0.05 < cfg.sigma_data < 0.5  # measured on the digits' residuals, under the 0.5 of whole images
    with open(upscale_runs / "up" / "metrics.csv", newline="") as f:
        assert [r["val_loss"] for r in csv.DictReader(f) if r["val_loss"]]  # validation ran with the low-res inputs
    grid = Image.open(upscale_runs / "up" / "samples" / "step_0000004.png")
    assert grid.width > grid.height  # rows of low-res | sample | original


def test_scale_with_another_model_or_a_size_it_does_not_divide_is_a_clear_error(tmp_path, capsys, pixelforge_cache):
    assert main(["train", "digits", "--scale", "2", "--name", "x", "--runs-dir", str(tmp_path), *TINY]) == 2
    assert "--scale) is the upscaling factor of --model upscale" in capsys.readouterr().err
    assert main(["train", "digits", "--model", "upscale", "--scale", "3", "--name", "y", "--runs-dir", str(tmp_path),
                 *TINY]) == 2
    assert "must divide image_size 8" in capsys.readouterr().err


@pytest.fixture(scope="module")
def resume_pair(tmp_path_factory, make_run_config):
    """An 8-step upscaler run trained straight, and stopped at 4 then resumed."""
    root = tmp_path_factory.mktemp("upscale-resume")
    cfg = make_run_config(steps=8, ckpt_every=4, val_every=4, sample_every=8,
                          model={"num_classes": 0, "lowres": {"scale": 2}, "label_dropout": 0.0, "sigma_data": 0.3})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        return train_straight_and_resumed(cfg, root, stop_at=4)


def test_an_upscaler_run_resumes_exactly(resume_pair):
    full, second, a, b = resume_pair
    for step in range(4, 8):
        assert second.losses[step] == full.losses[step], step
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["model"]["net.spatial_in.weight"].any()  # the low-res input's weights did train


# --- upscaling ---------------------------------------------------------------------------------------


def test_upscale_is_deterministic_per_seed_and_another_seed_differs(upscale_runs):
    g = pixelforge.load("up", runs_dir=upscale_runs, device="cpu")
    low = [pil(images(1, 4, seed=s)[0]) for s in range(2)]
    a, settings = g.upscale_tensor(low, seed=5, steps=3)
    assert a.shape == (2, 1, 8, 8)
    assert torch.equal(a, g.upscale_tensor(low, seed=5, steps=3)[0])  # the same call, the same pixels
    b, _ = g.upscale_tensor(low[1:], seeds=[6], steps=3)  # image 1 alone, with its seed: the same image
    assert torch.allclose(a[1], b[0], atol=1e-5)  # (a batch of another size rounds its convolutions differently)
    c, _ = g.upscale_tensor(low[1:], seeds=[7], steps=3)
    assert not torch.equal(a[1], c[0])
    assert settings[1]["seed"] == 6 and settings[1]["scale"] == 2 and settings[1]["steps"] == 3


def test_an_input_of_another_size_is_resized_with_a_warning_naming_both_sizes(upscale_runs):
    g = pixelforge.load("up", runs_dir=upscale_runs, device="cpu")
    with pytest.warns(UserWarning, match=r"is 6x6: resized to the model's 4x4"):
        out, _ = g.upscale_tensor([pil(images(1, 6)[0])], steps=2)
    assert out.shape == (1, 1, 8, 8)


def test_pixelforge_upscale_writes_each_input_with_its_copy_and_sample_from_regenerates_it(upscale_runs, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for s in range(2):
        pil(images(1, 4, seed=s)[0]).save(inputs / f"digit{s}.png")
    out = tmp_path / "out"
    assert main(["upscale", "up", str(inputs), "-o", str(out), "--runs-dir", str(upscale_runs), "--steps", "3",
                 "--seed", "10", "--device", "cpu"]) == 0
    s = read_settings(out / "digit1.png")
    assert s["seed"] == 11 and s["scale"] == 2 and Image.open(out / "digit1.png").size == (8, 8)
    assert (out / s["input"]).is_file()  # the input's lossless copy
    again = tmp_path / "again"
    assert main(["sample", "--from", str(out / "digit1.png"), "--runs-dir", str(upscale_runs), "-o", str(again),
                 "--device", "cpu"]) == 0
    regenerated = next(again.glob("seed*.png"))
    assert np.array_equal(np.asarray(Image.open(regenerated)), np.asarray(Image.open(out / "digit1.png")))
    assert main(["post", str(out / "digit1.png"), "-o", str(tmp_path / "sharp"), "--sharpen"]) == 0
    assert (tmp_path / "sharp" / s["input"]).is_file()  # post-processing keeps the input beside its output too
    pil(images(1, 4, seed=9)[0]).save(out / s["input"])  # another input in its place: a clear error
    capsys.readouterr()
    assert main(["sample", "--from", str(out / "digit1.png"), "--runs-dir", str(upscale_runs), "-o",
                 str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err


def test_a_run_that_is_no_upscaler_is_a_clear_error(upscale_runs, tmp_path, capsys):
    pil(images(1, 4)[0]).save(tmp_path / "a.png")
    assert main(["upscale", "plain", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--runs-dir",
                 str(upscale_runs), "--device", "cpu"]) == 2
    assert "plain is not an upscaler" in capsys.readouterr().err
    assert main(["post", str(tmp_path / "a.png"), "-o", str(tmp_path / "p"), "--upscale", "2", "--upscaler",
                 str(upscale_runs / "plain")]) == 2
    assert "is not an upscaler" in capsys.readouterr().err


def test_an_upscaler_cannot_edit_and_says_so_before_any_work(upscale_runs, tmp_path, capsys):
    pil(images(1, 8)[0]).save(tmp_path / "a.png")
    assert main(["edit", "up", "--image", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--runs-dir",
                 str(upscale_runs), "--device", "cpu"]) == 2
    assert "up is an upscaler: it cannot edit images" in capsys.readouterr().err


def test_post_upscaler_uses_the_model_and_differs_from_lanczos(upscale_runs, tmp_path, capsys):
    src = tmp_path / "a.png"
    pil(images(1, 4)[0]).save(src)
    run = str(upscale_runs / "up")
    assert main(["post", str(src), "-o", str(tmp_path / "model"), "--upscale", "2", "--upscaler", run]) == 0
    assert main(["post", str(src), "-o", str(tmp_path / "lanczos"), "--upscale", "2"]) == 0
    g = pixelforge.load(run, device="cpu")
    expected, _ = g.upscale_tensor([src], seeds=[0])  # the model's default options, seed 0
    model = np.asarray(Image.open(tmp_path / "model" / "a.png"))
    assert np.array_equal(model, ((expected[0, 0] + 1) * 127.5).round().to(torch.uint8).numpy())
    assert not np.array_equal(model, np.asarray(Image.open(tmp_path / "lanczos" / "a.png")))
    assert read_settings(tmp_path / "model" / "a.png")["post"]["upscaler"] == run
    capsys.readouterr()
    assert main(["post", str(src), "-o", str(tmp_path / "x"), "--upscale", "4", "--upscaler", run]) == 2
    assert "enlarges 2x, but upscale asks 4x" in capsys.readouterr().err


def test_post_settings_take_an_upscaler_only_with_upscale():
    with pytest.raises(ValueError, match="upscaler needs upscale"):
        PostSettings(upscaler="up")
    assert PostSettings(upscale=2, upscaler="up").to_record() == {"upscale": 2, "upscaler": "up", "order": ["upscale"]}


def test_sample_with_post_upscaler_is_regenerated_by_from(upscale_runs, tmp_path):
    # a plain 8x8 run's samples upscaled by the model to 16x16, then regenerated from the PNG alone
    out = tmp_path / "out"
    assert main(["sample", "plain", "--runs-dir", str(upscale_runs), "-n", "1", "--steps", "2", "--upscale", "2",
                 "--upscaler", str(upscale_runs / "up"), "-o", str(out), "--device", "cpu"]) == 0
    first = next(out.glob("seed*.png"))
    assert Image.open(first).size == (16, 16)
    again = tmp_path / "again"
    assert main(["sample", "--from", str(first), "--runs-dir", str(upscale_runs), "-o", str(again), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(next(again.glob("seed*.png")))), np.asarray(Image.open(first)))


def test_a_server_job_may_name_only_a_served_upscaler():
    pytest.importorskip("fastapi")
    from fastapi import HTTPException

    from pixelforge.serve.app import _job_post

    with pytest.raises(HTTPException) as e:
        _job_post({"upscale": 2, "upscaler": "/etc"}, None, {"mnist-upscale": "/models/mnist-upscale"})
    assert e.value.status_code == 422 and e.value.detail[0]["loc"] == ["body", "post", "upscaler"]
    assert "served upscalers: mnist-upscale" in e.value.detail[0]["msg"]
    post = _job_post({"upscale": 2, "upscaler": "mnist-upscale"}, None, {"mnist-upscale": "/models/mnist-upscale"})
    assert post.upscaler == "/models/mnist-upscale"  # the served model's own folder, not a path the job names


def test_sampling_an_upscaler_without_an_input_or_with_a_sketch_is_a_clear_error(upscale_runs, tmp_path, capsys):
    assert main(["sample", "up", "--runs-dir", str(upscale_runs), "-n", "1", "-o", str(tmp_path / "a"),
                 "--device", "cpu"]) == 2
    assert "upscale images with `pixelforge upscale RUN IMAGE... -o OUT`" in capsys.readouterr().err
    pil(images(1, 8)[0]).save(tmp_path / "drawing.png")
    assert main(["sample", "up", "--runs-dir", str(upscale_runs), "--sketch", str(tmp_path / "drawing.png"), "-o",
                 str(tmp_path / "b"), "--device", "cpu"]) == 2
    assert "takes no sketch" in capsys.readouterr().err


def test_the_benchmark_measures_the_model_lanczos_and_bicubic_on_held_out_images(upscale_runs, capsys, pixelforge_cache):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_upscale", Path(__file__).parent.parent / "bench" / "upscale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["up", "--runs-dir", str(upscale_runs), "--images", "4", "--steps", "2", "--device", "cpu"])
    assert result["images"] == 4 and result["size"] == "4 -> 8" and result["sampling"]["steps"] == 2
    assert set(result["figures"]) == {"model", "lanczos", "bicubic"}
    printed = capsys.readouterr().out
    assert "$ python bench/upscale.py up --runs-dir" in printed and "| lanczos |" in printed
    g = pixelforge.load("up", runs_dir=upscale_runs, device="cpu")
    val = json.loads((upscale_runs / "up" / "split.json").read_text())["val"]
    assert torch.equal(bench.held_out(g), to_model(load_dataset(g.config.data, progress=False).images[val], g.config.data))
