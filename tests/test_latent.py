"""Latent diffusion (docs/latent.md): the autoencoder family, its reconstruction figures, and a diffusion run
in the latents of a frozen autoencoder run, through the same commands as any other run."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.metrics.reconstruction import psnr, reconstruction_figures, ssim
from pixelforge.models import AutoencoderConfig, AutoencoderModel, DiffusionConfig, DiffusionModel, OptimConfig
from pixelforge.runs import RunConfig, build_model, load_weights

from run_files import assert_holds_ae32, checkpoint_tensors, cli, run_losses  # tests/run_files.py

# 8x8 digits; the autoencoder halves the side once (channel_mult 1,2): 4x4x4 latents.
AE = ["--model", "autoencoder", "--base-channels", "8", "--channel-mult", "1,2"]
LATENT = ["--base-channels", "8", "--channel-mult", "1", "--num-res-blocks", "1"]


def cli_error(capsys, *args) -> str:
    """The one stderr line of a command refused with exit status 2."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _common(runs) -> list:
    return ["--runs-dir", runs, "--batch-size", "16", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
            "--sample-every", "100", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pixelforge_cache_module):
    """An autoencoder run `ae` (6 steps), then latent diffusion runs on it: `straight` (4 steps at once) and
    `r` (2 steps, then resumed by the same command to 4); the autoencoder run's weights kept aside."""
    runs = tmp_path_factory.mktemp("latent") / "runs"
    cli("train", "digits", "--name", "ae", "--steps", "6", "--lr", "2e-3", *_common(runs), *AE)
    ae_weights = load_weights(runs / "ae")
    latent = ["--set", "latent=ae", *LATENT, *_common(runs)]
    cli("train", "digits", "--name", "straight", "--steps", "4", *latent)
    cli("train", "digits", "--name", "r", "--steps", "2", *latent)
    out = cli("train", "digits", "--name", "r", "--steps", "4", *latent)
    assert "resuming" in out and "finished at step 4" in out
    return runs, ae_weights


@pytest.fixture(scope="module")
def pixelforge_cache_module(tmp_path_factory):
    """$PIXELFORGE_CACHE in a temporary folder for the module's runs (pixelforge_cache, per module)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# --- the autoencoder on its own ------------------------------------------------------------------------

def _blocks(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """(n, 3, size, size) images in [-1, 1]: a square of random place and colour on a dark ground."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, size, size), -0.8)
    side = size * 3 // 8
    for i in range(n):
        top, left = torch.randint(0, size - side, (2,), generator=gen).tolist()
        x[i, :, top:top + side, left:left + side] = torch.rand(3, 1, 1, generator=gen) * 2 - 1
    return x


def test_the_autoencoder_learns_to_reconstruct_a_tiny_set():
    model = AutoencoderModel(AutoencoderConfig(image_size=8, base_channels=8, channel_mult=(1, 2)),
                             OptimConfig(lr=3e-3, warmup_steps=1), seed=0)
    x = _blocks(8, seed=0, size=8)
    before = reconstruction_figures(_u8(x), _u8(model.reconstruct(x)))["psnr"]
    figures = [model.training_step(x, Cond(), step) for step in range(40)]
    assert figures[-1]["loss"] < 0.5 * figures[0]["loss"], (figures[0], figures[-1])
    assert set(figures[0]) >= {"loss", "l1", "edge", "kl", "grad_norm"}
    after = reconstruction_figures(_u8(x), _u8(model.reconstruct(x)))["psnr"]
    assert after > before + 3, (before, after)
    assert model.reconstruct(x).shape == x.shape
    a, b = model.sample(3, seed=5), model.sample(3, seed=5)
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b) and float(a.abs().max()) <= 1


def test_the_default_autoencoder_is_ldms_kl_f4():
    model = AutoencoderModel(AutoencoderConfig(image_size=16, base_channels=8), seed=0)
    mean, logvar = model.net.encode(_blocks(2, seed=0))
    assert mean.shape == logvar.shape == (2, 4, 4, 4)  # 4x smaller on a side, 4 channels
    assert model.config.kl_weight == 1e-6


def test_the_edge_term_penalises_a_blurred_edge_that_l1_alone_barely_sees():
    from pixelforge.models.autoencoder import image_gradients

    x = _blocks(4, seed=1)
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    (gx, gy), (bx, by) = image_gradients(x), image_gradients(blurred)
    l1 = (x - blurred).abs().mean()
    edge = ((gx - bx).abs().sum() + (gy - by).abs().sum()) / x.numel()
    assert float(edge) > float(l1)  # where the blur moves little mass, it flattens every edge it touches


def test_autoencoder_config_fields_are_checked_with_their_names():
    with pytest.raises(ValueError, match="image_size 10 must be divisible by 4"):
        AutoencoderConfig(image_size=10)
    with pytest.raises(ValueError, match="kl_weight must be a number of at least 0"):
        AutoencoderConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="latent_channels must be in 1..64"):
        AutoencoderConfig(latent_channels=0)


# --- reconstruction figures -----------------------------------------------------------------------------

def _u8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def test_psnr_matches_the_hand_computed_value():
    real = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    fake = real.clone()
    fake[0] += 16  # MSE 256: 10 log10(255^2 / 256) = 24.0484 dB
    fake[1, 0, 0, 0] = 255  # one of 48 values off by 255: MSE 255^2 / 48, PSNR 10 log10(48) = 16.8124 dB
    assert psnr(real, fake) == pytest.approx([24.0484, 16.8124], abs=1e-4)
    assert math.isinf(psnr(real, real)[0])
    figures = reconstruction_figures(real, fake)
    assert figures["psnr"] == pytest.approx((24.0484 + 16.8124) / 2, abs=1e-4) and figures["n"] == 2
    # an exact copy counts at the rounding-noise ceiling, 10 log10(255^2 * 12) = 58.92 dB, not infinity
    assert reconstruction_figures(real, real)["psnr"] == pytest.approx(58.9226, abs=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        psnr(real.float(), fake.float())


def test_ssim_is_one_for_a_copy_and_lower_for_noise():
    pytest.importorskip("skimage")
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (2, 3, 8, 8), generator=gen, dtype=torch.uint8)
    noise = torch.randint(-1, 2, real.shape, generator=gen)  # (2, 3, 8, 8) in {-1, 0, 1}

    def noisy(amplitude: int) -> torch.Tensor:
        return (real.int() + amplitude * noise).clamp(0, 255).to(torch.uint8)

    assert ssim(real, real) == pytest.approx([1.0, 1.0])
    light, heavy = ssim(real, noisy(10)), ssim(real, noisy(80))
    assert (heavy < light).all() and (light < 1).all()


# --- latent diffusion ------------------------------------------------------------------------------------

def test_a_latent_run_keeps_the_autoencoder_config_and_weights_and_fits_the_scale(runs):
    runs, ae_weights = runs
    cfg = RunConfig.load(runs / "r" / "config.json")
    model = cfg.model_config()
    assert model.latent == str((runs / "ae").resolve())
    assert model.autoencoder == RunConfig.load(runs / "ae" / "config.json").model_config()
    assert model.net_shape == (4, 4, 4) and (model.image_size, model.channels) == (8, 1)
    tensors = checkpoint_tensors(runs / "r")
    for name, t in ae_weights.items():  # the autoencoder run's EMA network, frozen in both copies
        if name.startswith("net."):
            assert torch.equal(tensors[f"model/autoencoder.{name[4:]}"], t), name
            assert torch.equal(tensors[f"ema/autoencoder.{name[4:]}"], t), name
    assert not any(k.startswith("optim.net/") and "autoencoder" in k for k in tensors)
    scale = float(tensors["model/latent_scale"])
    assert scale > 0 and float(tensors["ema/latent_scale"]) == scale


def test_info_shows_the_latents_and_the_autoencoder_on_a_line_of_their_own(runs, capsys):
    runs, _ = runs
    assert main(["info", str(runs / "r")]) == 0
    lines = {line[:9]: line for line in capsys.readouterr().out.splitlines()}
    assert "autoencoder" not in lines["model:   "] and "latent=" not in lines["model:   "]
    latent = lines["latent:  "]
    assert f"4x4x4 latents of the autoencoder {(runs / 'ae').resolve()} (frozen)" in latent
    assert "latent_channels=4" in latent


def test_a_resumed_latent_run_replays_the_straight_run_exactly(runs):
    runs, _ = runs
    assert run_losses(runs / "r") == run_losses(runs / "straight") and len(run_losses(runs / "r")) == 4
    straight, resumed = checkpoint_tensors(runs / "straight"), checkpoint_tensors(runs / "r")
    assert set(straight) == set(resumed)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_latent_run_samples_edits_and_reloads_without_its_autoencoder_run(runs, tmp_path):
    runs, _ = runs
    run = tmp_path / "copy"
    shutil.copytree(runs / "r", run)
    shutil.copytree(runs / "ae", tmp_path / "ae-kept")
    shutil.rmtree(runs / "ae")  # the run is rebuilt from its own folder alone
    try:
        g = pixelforge.load(run, device="cpu")
        first, _ = g.generate_tensor(3, labels=[0, 1, 2], seed=11, steps=4)
        assert first.shape == (3, 1, 8, 8) and float(first.abs().max()) <= 1
        again, _ = g.generate_tensor(3, labels=[0, 1, 2], seed=11, steps=4)
        assert torch.equal(first, again)
        one, _ = g.generate_tensor(1, labels=[1], seed=12, steps=4)  # image i depends on its seed alone
        torch.testing.assert_close(one[0], first[1], atol=1e-5, rtol=0)
        assert not torch.equal(first, g.generate_tensor(3, labels=[0, 1, 2], seed=20, steps=4)[0])
        # inpainting: the kept pixels are the input's, the masked ones repainted
        image = first[:1]
        mask = torch.zeros(1, 1, 8, 8)
        mask[..., :, 4:] = 1
        edited = g.model.edit(image, mask, strength=1.0, steps=4, seed=3)
        assert edited.shape == (1, 1, 8, 8)
        assert torch.equal(edited[..., :, :4], image[..., :, :4]) and not torch.equal(edited, image)
        cli("sample", run, "-n", "2", "--seed", "7", "--label", "3", "--steps", "4", "-o", tmp_path / "out", "--device", "cpu")
        assert Image.open(tmp_path / "out" / "seed000007-label3.png").size == (8, 8)
    finally:
        shutil.copytree(tmp_path / "ae-kept", runs / "ae")


def test_a_latent_run_evaluates_exports_and_compresses_to_onnx(runs, tmp_path):
    runs, _ = runs
    figures = json.loads(cli("evaluate", "r", "--runs-dir", runs, "-n", "20", "--steps", "4", "--json", "--no-report",
                             "--device", "cpu"))
    assert math.isfinite(figures["fid"]) and figures["n_fake"] == 20 and "reconstruction" not in figures
    g = pixelforge.load(runs / "r", device="cpu")
    reference, _ = g.generate_tensor(2, labels=[4, 5], seed=1, steps=4)
    cli("export", "r", tmp_path / "exported", "--runs-dir", runs)
    exported, _ = pixelforge.load(tmp_path / "exported", device="cpu").generate_tensor(2, labels=[4, 5], seed=1, steps=4)
    assert torch.equal(exported, reference)
    pytest.importorskip("onnxruntime")
    cli("compress", "r", "--runs-dir", runs, "--export", "onnx", "-o", tmp_path / "onnx", "--device", "cpu", "--quiet")
    onnx, _ = pixelforge.load(tmp_path / "onnx", device="cpu").generate_tensor(2, labels=[4, 5], seed=1, steps=4)
    torch.testing.assert_close(onnx, reference, atol=1e-3, rtol=0)


def test_a_latent_run_is_served(runs, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import time

    from fastapi.testclient import TestClient

    from pixelforge.serve import create_app

    runs, _ = runs
    app = create_app(["r"], runs_dir=runs, device="cpu", db_path=tmp_path / "ratings.sqlite",
                     allowed_hosts=["testserver"])
    with TestClient(app) as client:
        (m,) = client.get("/api/v1/models").json()["models"]
        assert (m["family"], m["image_size"], m["channels"]) == ("diffusion", 8, 1)
        job_id = client.post("/api/v1/jobs", json={"model": "r", "n": 2, "seed": 3, "label": 2,
                                                   "options": {"steps": 4}}).json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["status"] == "done", job
        png = client.get(f"/api/v1/jobs/{job_id}/images/0.png")
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (8, 8)


def test_an_autoencoder_run_shows_input_and_reconstruction_and_its_held_out_psnr(runs, tmp_path, capsys):
    runs, _ = runs
    grid = Image.open(sorted((runs / "ae" / "samples").glob("step_*.png"))[-1])
    # 16 cells: 8 (input, reconstruction) pairs, 3 pairs a row, each 8x8 cell shown at twice its size
    assert grid.size == (6 * 16 + 7 * 2, 3 * 16 + 4 * 2)
    # sampling works, with a note that the images are no generator's
    assert main(["sample", "ae", "--runs-dir", str(runs), "-n", "1", "-o", str(tmp_path / "s"), "--device", "cpu"]) == 0
    assert "note: an autoencoder's samples are decoded random latents, not meant as images" in capsys.readouterr().err
    out = cli("evaluate", "ae", "--runs-dir", runs, "-n", "20", "--no-report", "--device", "cpu")
    line = next(line for line in out.splitlines() if line.startswith("reconstruction of"))
    assert "held-out images: PSNR" in line
    from pixelforge.evaluate import evaluate_reconstruction

    figures = evaluate_reconstruction(str(runs / "ae"), n=20, device="cpu", progress=False)
    assert figures["n"] == min(20, len(json.loads((runs / "ae" / "split.json").read_text())["val"]))
    assert 5 < figures["psnr"] < 60
    assert f"PSNR {figures['psnr']:.2f} dB" in line


def test_latent_settings_that_cannot_work_are_refused_in_one_line(runs, capsys):
    runs, _ = runs
    common = ["--steps", "1", *_common(runs)]
    err = cli_error(capsys, "train", "digits", "--name", "x", "--set", "latent=r", *common)
    assert "latent '" in err and "is a diffusion run; latent diffusion needs an autoencoder run" in err
    err = cli_error(capsys, "train", "digits", "--name", "x", "--image-size", "16", "--set", "latent=ae", *common)
    assert "its autoencoder takes 8x8 images with 1 channel(s), this run's are 16x16" in err
    err = cli_error(capsys, "train", "digits", "--name", "x", "--set", "latent=ae", "--condition", "edges", *common)
    assert "spatial_condition (--condition edges) works in pixel space only" in err
    err = cli_error(capsys, "train", "digits", "--name", "x", "--set", "latent=nothing-here", *common)
    assert "no run or model named 'nothing-here'" in err
    assert not (runs / "x").exists()
    with pytest.raises(ValueError, match="latent 'ae': the autoencoder's config is read from that run"):
        DiffusionConfig(latent="ae")
    with pytest.raises(ValueError, match="autoencoder image_size 16 differs from the model's 8"):
        DiffusionConfig(image_size=8, autoencoder={"image_size": 16})
    with pytest.raises(ValueError, match="the latent side 2 must be divisible by 4"):
        DiffusionConfig(image_size=8, channel_mult=(1, 2, 2), autoencoder={"channel_mult": (1, 2, 2)})


def test_a_pixel_model_is_unchanged_by_the_latent_fields():
    cfg = DiffusionConfig(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    assert cfg.net_shape == (1, 8, 8) and {"latent", "autoencoder"} <= set(cfg.unused_fields())
    model = DiffusionModel(cfg, seed=0)
    assert model.autoencoder is None and not any("autoencoder" in k or "latent" in k for k in model.state_dict())
    assert model.frozen_parts() == ()


def test_the_first_batch_fixes_the_latent_scale_and_only_the_denoiser_trains():
    cfg = DiffusionConfig(image_size=8, channels=3, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                          autoencoder={"base_channels": 8, "channel_mult": (1, 2)})
    model = DiffusionModel(cfg, OptimConfig(lr=1e-3, warmup_steps=1), seed=0)
    frozen = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    x, later = _blocks(4, seed=0, size=8), _blocks(4, seed=1, size=8)
    assert float(model.latent_scale) == 0  # not fitted yet
    model.training_step(x, Cond(), 0)
    std = model.autoencoder.encode(x)[0].std()
    assert float(model.latent_scale) == pytest.approx(cfg.sigma_data / float(std), rel=1e-6)
    scale = float(model.latent_scale)
    model.training_step(later, Cond(), 1)  # fixed from then on
    assert float(model.latent_scale) == scale
    assert all(torch.equal(v, frozen[k]) for k, v in model.autoencoder.state_dict().items())
    assert torch.allclose(model.encode_latents(x), model.autoencoder.encode(x)[0] * scale)


def test_the_latent_cache_encodes_each_image_once_alone_and_a_copy_starts_empty():
    import copy

    from pixelforge.models.autoencoder import LatentCache, make_first_stage

    ae = make_first_stage(AutoencoderConfig(image_size=8, channels=3, base_channels=8, channel_mult=(1, 2)))
    x = _blocks(6, seed=0, size=8)
    cache = LatentCache()
    first = cache.means(ae, x)
    alone = torch.cat([ae.encode(x[i:i + 1])[0] for i in range(6)])
    assert torch.equal(first, alone)  # each image encoded in a batch of one: the same bits whatever batch it came in
    assert torch.allclose(first, ae.encode(x)[0], atol=1e-5)
    assert cache.encoded == 6 and len(cache) == 6
    again = cache.means(ae, torch.cat([x[3:], x[:3]]))  # the same images in another order: nothing encoded
    assert cache.encoded == 6 and torch.equal(again, torch.cat([first[3:], first[:3]]))
    changed = x[:2].clone()
    changed[0, 0, 0, 0] += 0.5  # one pixel changed (as augmentation would): another image
    out = cache.means(ae, changed)
    assert cache.encoded == 7 and torch.equal(out[1], first[1]) and not torch.equal(out[0], first[0])
    assert len(copy.deepcopy(cache)) == 0  # the EMA copy of a model does not carry the training images' latents
    full = LatentCache(max_bytes=0)  # over the cap: still encoded alone, not kept
    assert torch.equal(full.means(ae, x), first) and len(full) == 0
    full.means(ae, x)
    assert full.encoded == 12


def test_a_latent_model_encodes_each_training_image_once_over_epochs():
    from pixelforge.models import GANConfig, GANModel

    x = _blocks(4, seed=0, size=8)
    ae = {"base_channels": 8, "channel_mult": (1, 2)}
    diffusion = DiffusionModel(DiffusionConfig(image_size=8, channels=3, base_channels=8, channel_mult=(1,),
                                               num_res_blocks=1, autoencoder=ae), seed=0)
    gan = GANModel(GANConfig(image_size=16, channels=3, base_channels=8, diffaugment="", autoencoder=ae), seed=0)
    for model, images in ((diffusion, x), (gan, _blocks(4, seed=0, size=16))):
        for step in range(3):  # three epochs of the same four images
            model.training_step(images, Cond(), step)
        assert model._latent_cache.encoded == 4


@pytest.mark.slow  # runs the bench script end to end: ~11 s
def test_the_cache_bench_times_both_ways_and_the_cached_model_encodes_nothing_after_the_first_pass(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "latent_cache.py"
    spec = importlib.util.spec_from_file_location("bench_latent_cache", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.main(["--quick", "--json", "--threads", "1"])
    assert r["quick"] and r["model"] == "gan" and 0 < r["cached_images"] <= r["images"] == 64
    assert r["encoded_in_steps"] == 0  # every timed step's images were in the cache
    assert set(r["s_per_step"]) == {"cached", "every batch"} and all(s > 0 for s in r["s_per_step"].values())
    assert r["speedup"] == pytest.approx(r["s_per_step"]["every batch"] / r["s_per_step"]["cached"])


def test_the_onnx_example_inputs_and_the_budget_planner_take_the_latent_shape(runs):
    from pixelforge.compress.graph import example_inputs
    from pixelforge.train.budget import plan_run

    runs, _ = runs
    g = pixelforge.load(runs / "r", device="cpu")
    x_in, c_noise, *_ = example_inputs(g.model, 2, torch.Generator().manual_seed(0))
    assert x_in.shape == (2, 4, 4, 4) and c_noise.shape == (2,)

    seen = []

    def measure(cfg, candidates, device, **kw):  # records the candidates; a planner needs one timing
        from pixelforge.train.budget import StepTiming

        seen.extend(candidates)
        return [StepTiming(model_fields=dict(candidates[0]), parameters=1000, points=((16, 0.01), (64, 0.04)))]

    cfg, _ = plan_run("digits", 1.0, device="cpu", progress=False, measure=measure,
                      model_fields={"latent": str(runs / "ae")})
    # 8x8 digits have 4x4 latents here: every candidate UNet keeps them at one level
    assert seen and all(len(c["channel_mult"]) == 1 for c in seen)
    assert cfg.model_config().net_shape == (4, 4, 4)


# --- the bundled general autoencoder ae-32 -------------------------------------------------------------

# Held-out PSNR each bundled set's reconstructions must keep: a few dB under what the shipped weights score
# (pixelforge/assets/models/ae-32/MODEL.md gives both).
AE32_PSNR_FLOOR = {"emoji": 24.0, "mnist": 30.5, "shapes": 29.5, "textures": 25.5}
HELD_OUT_TESTED = 24  # held-out images per set the test reconstructs (a random draw: the split's first ones)


def _make_base_data():
    """scripts/make_base_data.py as a module: the pictures of ae-32's training folder, rebuilt from the bundled sets."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("make_base_data", Path(__file__).parent.parent / "scripts" /
                                                  "make_base_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bundled_ae32_reconstructs_the_held_out_images_of_every_bundled_set():
    from pixelforge.runs import BUNDLED_MODELS_DIR

    g = pixelforge.load("ae-32", device="cpu")
    assert (g.config.family, g.model.config.latent_side, g.model.config.latent_channels) == ("autoencoder", 8, 4)
    heldout = json.loads((BUNDLED_MODELS_DIR / "ae-32" / "heldout.json").read_text())
    assert set(heldout["held_out"]) == set(AE32_PSNR_FLOOR)
    make_base_data = _make_base_data()
    for name, positions in heldout["held_out"].items():
        assert len(positions) >= 30, name  # about 5% of each set
        pictures = make_base_data.set_pictures(name, heldout["per_set"], positions[:HELD_OUT_TESTED])
        real = torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2)  # (n, 3, 32, 32) uint8
        fake = _u8(g.model.reconstruct(real.float() / 127.5 - 1))
        figures = reconstruction_figures(real, fake)
        assert figures["psnr"] > AE32_PSNR_FLOOR[name], (name, figures)
        flat = real.float().mean((0, 2, 3), keepdim=True).round().to(torch.uint8).expand_as(real).contiguous()
        assert figures["psnr"] > reconstruction_figures(real, flat)["psnr"] + 5, name  # far better than a flat colour


def _colour_folder(folder, n: int = 12, size: int = 32):
    """n size x size RGB PNGs of a random square on a random ground, in folder."""
    folder.mkdir()
    for i, image in enumerate(_u8(_blocks(n, seed=1, size=size))):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    return folder


def test_set_latent_ae32_names_the_bundled_autoencoder(tmp_path, pixelforge_cache):
    data = _colour_folder(tmp_path / "colour")
    runs = tmp_path / "runs"
    cli("train", data, "--name", "l", "--image-size", "32", "--steps", "2", "--set", "latent=ae-32", *LATENT,
        *_common(runs))
    assert_holds_ae32(runs / "l")
    images, _ = pixelforge.load(runs / "l", device="cpu").generate_tensor(2, seed=0, steps=2)
    assert images.shape == (2, 3, 32, 32) and float(images.abs().max()) <= 1


def test_a_time_budget_on_ae32_sizes_the_unet_for_its_latents_and_trains_from_scratch(tmp_path, pixelforge_cache):
    from pixelforge.train.budget import StepTiming, describe_plan, plan_run

    data = _colour_folder(tmp_path / "colour", n=24)
    seen = []

    def measure(cfg, candidates, device, **kw):  # records the candidates; a planner needs one timing
        seen.extend(candidates)
        return [StepTiming(model_fields=dict(candidates[0]), parameters=1000, points=((16, 0.01), (64, 0.04)))]

    cfg, plan = plan_run(str(data), 1.0, device="cpu", progress=False, measure=measure, image_size=32,
                         model_fields={"latent": "ae-32"})
    # base-32 is a pixel-space UNet (3x32x32): its weights cannot start a denoiser of 4x8x8 latents
    assert plan.init_from is None and cfg.model_config().net_shape == (4, 8, 8)
    assert seen and all(8 % 2 ** (len(c["channel_mult"]) - 1) == 0 for c in seen)
    assert any("from scratch" in line for line in describe_plan(cfg, plan))


def test_a_budget_counts_the_parameters_it_trains_and_names_the_frozen_autoencoder_apart(tmp_path, pixelforge_cache,
                                                                                         monkeypatch):
    from pixelforge.runs import new_run_config
    from pixelforge.train import budget

    monkeypatch.setattr(budget, "_time_steps", lambda model, batch, step, clock: (0.01 * batch / 16, step + 1))
    cfg = new_run_config(str(_colour_folder(tmp_path / "colour", n=24)), image_size=32, model_fields={"latent": "ae-32"},
                         minutes=1.0)
    candidate = budget.size_candidates(8)[0]
    (t,) = budget.measure_step_times(cfg, [candidate], torch.device("cpu"), minutes=0.001, n_train=24)
    model = build_model(dataclasses.replace(cfg, model={**cfg.model, **candidate}), "cpu")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert t.parameters == trained and t.frozen == sum(p.numel() for p in model.autoencoder.parameters()) > 0
    plan = budget.plan_budget(1.0, 24, [t])
    assert plan.frozen == t.frozen
    line = next(x for x in budget.describe_plan(cfg, plan) if x.lstrip().startswith("model"))
    assert f"{trained:,} parameters trained, {t.frozen:,} frozen" in line


def test_the_time_to_quality_latent_row_is_the_minutes_row_on_ae32():
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_time_to_quality_latent",
                                                  Path(__file__).parent.parent / "bench" / "time_to_quality.py")
    ttq = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ttq  # its dataclasses look their module up there
    spec.loader.exec_module(ttq)
    (_, name, argv), = ttq.train_commands("latent", "photos", "runs", [10.0])
    (_, _, minutes), = ttq.train_commands("minutes", "photos", "runs", [10.0])
    assert name == "latent-10min" and ttq.CONFIGS["latent"].kind == "budget"
    assert argv[argv.index("--name") + 1:] == ["latent-10min", "--minutes", "10", "--set", "latent=ae-32"]
    assert [a for a in argv if a not in ("--set", "latent=ae-32")] == [a if a != "minutes-10min" else "latent-10min"
                                                                       for a in minutes]
