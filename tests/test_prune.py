"""Structured channel pruning (pixelforge compress --prune): explicit per-level widths that leave old configs
bit-identical, a pruned UNet that is smaller and needs fewer FLOPs, keeps the channels of largest weights,
loads, samples, edits and evaluates like any run (API, CLI, server, with ONNX int8 too), fine-tunes at its own
widths with --init-from, and the clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pixelforge
from pixelforge.cli import main
from pixelforge.compress.prune import kept_width, prune_model
from pixelforge.compression import compress_run
from pixelforge.condition import Cond
from pixelforge.models import DiffusionConfig, DiffusionModel, GANConfig, GANModel
from pixelforge.models.limits import parameter_count
from pixelforge.runs.store import BUNDLED_MODELS_DIR

# a tiny UNet with every part pruning must keep consistent: labels, attention at a level and in the middle,
# the position embedding and its vector layout, three levels (identity skips inside a level, convolutions
# between widths), the up path's concatenated skips
SHAPED = {"image_size": 8, "channels": 1, "num_classes": 10, "base_channels": 16, "channel_mult": (1, 2, 2),
          "num_res_blocks": 2, "attn_resolutions": (4,), "position_embedding": True}
TEXT = {"text_encoder": "all-MiniLM-L6-v2", "text_dim": 16, "text_tokens": 4}


def _model(fields: dict, randomize_zero_init, seed: int = 0) -> DiffusionModel:
    return randomize_zero_init(DiffusionModel(DiffusionConfig(**fields), seed=seed), seed=seed).eval()


def _inputs(b: int = 3, side: int = 8) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, side, side, generator=g)  # (B, C, H, W)
    return x, torch.linspace(-1, 1, b), Cond(labels=torch.arange(b) % 10)


def _flops(model: DiffusionModel) -> int:
    x, c_noise, cond = _inputs()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.network(x, c_noise, cond)
    return counter.get_total_flops()


# --- per-level widths ---------------------------------------------------------------------------------


def test_explicit_default_widths_build_the_same_network_bit_for_bit(randomize_zero_init):
    """level_channels = base_channels * channel_mult and stem_channels = base_channels is today's network: the
    same weights drawn and the same output, bit for bit."""
    plain = _model(SHAPED, randomize_zero_init)
    explicit = _model({**SHAPED, "level_channels": (16, 32, 32), "stem_channels": 16}, randomize_zero_init)
    a, b = plain.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(plain.network(*_inputs()), explicit.network(*_inputs()))


def test_bundled_configs_and_configs_without_the_fields_mean_today_s_network():
    from pixelforge.runs.config import RunConfig

    for path in sorted(BUNDLED_MODELS_DIR.glob("*/config.json")):
        d = json.loads(path.read_text())
        if d["family"] != "diffusion":
            continue
        written = RunConfig.from_dict(d).model_config()
        assert written.level_channels == () and written.stem_channels == 0, path
        for name in ("level_channels", "stem_channels"):  # a config.json written before the fields existed
            del d["model"][name]
        assert RunConfig.from_dict(d).model_config() == written, path


@pytest.mark.parametrize("fields, message", [
    ({"level_channels": (8,)}, r"level_channels \[8\] must give one width per level of channel_mult \[1, 2, 2\]"),
    ({"level_channels": (8, 0, 8)}, r"level_channels\[1\] must be in 1..2048, got 0"),
    ({"stem_channels": -1}, "stem_channels must be in 0..2048, got -1"),
    ({"level_channels": (8, 8, 8), "backbone": "dit"}, "level_channels and stem_channels shape a UNet"),
])
def test_bad_widths_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**{**SHAPED, **fields})


def test_attention_takes_a_width_that_is_no_multiple_of_its_head_size(randomize_zero_init):
    """A pruned width (45, 70) splits into heads that divide it; the old widths keep their head counts."""
    from pixelforge.models.nets.unet import AttnBlock

    assert [AttnBlock(c).heads for c in (32, 64, 96, 128, 45, 70)] == [1, 2, 3, 4, 1, 2]
    model = _model({**SHAPED, "level_channels": (9, 45, 70), "stem_channels": 7}, randomize_zero_init)
    with torch.no_grad():
        assert model.network(*_inputs()).shape == (3, 1, 8, 8)


# --- pruning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_a_pruned_network_is_smaller_and_needs_fewer_flops_by_about_the_share(fraction, randomize_zero_init):
    """Both sides of most weights lose the share, so parameters and FLOPs fall to about (1 - share)^2; the
    noise-level embedding, kept whole, adds a little. FLOPs are counted, not timed: they cannot flake."""
    model = _model(SHAPED, randomize_zero_init)
    small = prune_model(model, fraction)
    kept = (1 - fraction) ** 2
    assert small.config.level_channels == tuple(kept_width(w, fraction) for w in (16, 32, 32))
    assert small.config.stem_channels == kept_width(16, fraction)
    assert kept - 0.03 < parameter_count(small) / parameter_count(model) < kept + 0.12
    assert kept - 0.05 < _flops(small) / _flops(model) < kept + 0.05
    with torch.no_grad():
        assert small.network(*_inputs()).shape == (3, 1, 8, 8)


def test_a_text_model_prunes_its_cross_attention_too(randomize_zero_init):
    model = _model({**SHAPED, "num_classes": 0, **TEXT}, randomize_zero_init)
    small = prune_model(model, 0.5)
    assert parameter_count(small) < 0.5 * parameter_count(model)
    x, c_noise, _ = _inputs()
    cond = Cond(text=torch.randn(3, 16), text_tokens=torch.randn(3, 4, 16), text_mask=torch.ones(3, 4, dtype=torch.bool))
    with torch.no_grad():
        assert small.network(x, c_noise, cond).shape == (3, 1, 8, 8)


def test_pruning_keeps_the_channels_of_largest_weights_and_copies_them(randomize_zero_init):
    model = _model(SHAPED, randomize_zero_init)
    net = model.net
    large = [1, 5, 9, 13]
    with torch.no_grad():  # four stem channels made large where they are written
        net.conv_in.weight[large] *= 50
    small = prune_model(model, 0.5)  # the stem keeps 8 of 16
    w, w_small = net.conv_in.weight, small.net.conv_in.weight  # (16, 1, 3, 3), (8, 1, 3, 3)
    rows = [next(j for j in range(16) if torch.equal(w[j], w_small[i])) for i in range(8)]
    assert set(large) <= set(rows) and rows == sorted(rows)  # the large ones kept, each channel in its order
    # the stream's readers take the same channels: each row of down[0]'s conv1 is a row of the original's
    # restricted to those input channels
    conv1, conv1_small = net.down[0].block.conv1.weight, small.net.down[0].block.conv1.weight  # (16, 16, 3, 3), (8, 8, 3, 3)
    assert all(any(torch.equal(conv1[j][rows], row) for j in range(16)) for row in conv1_small)


def test_a_share_that_keeps_every_channel_reproduces_the_network_exactly(randomize_zero_init):
    """0.01 of widths 16 and 32 rounds to no channel: every tensor goes through the same cut (all indices), so
    the network is the original one, bit for bit."""
    model = _model(SHAPED, randomize_zero_init)
    same = prune_model(model, 0.01)
    assert same.config.level_channels == (16, 32, 32)
    with torch.no_grad():
        assert torch.equal(same.network(*_inputs()), model.network(*_inputs()))


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, float("nan"), True])
def test_a_bad_share_is_refused(fraction, randomize_zero_init):
    with pytest.raises(ValueError, match="prune must be a share of channels above 0 and below 1"):
        prune_model(_model(SHAPED, randomize_zero_init), fraction)


def test_other_families_and_the_dit_are_refused_by_name(randomize_zero_init):
    gan = GANModel(GANConfig(image_size=8, channels=1, num_classes=0, base_channels=8), seed=0)
    with pytest.raises(ValueError, match="gan models cannot be pruned"):
        prune_model(gan, 0.3)
    dit = _model({**SHAPED, "attn_resolutions": (), "position_embedding": False, "backbone": "dit", "depth": 2,
                  "num_heads": 2}, randomize_zero_init)
    with pytest.raises(ValueError, match="backbone is 'dit'"):
        prune_model(dit, 0.3)


# --- a pruned run through the loader, the CLI and the server --------------------------------------------


@pytest.fixture(scope="module")
def pruned(tiny_unet_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "p50"
    compress_run(tiny_unet_run, out, export="none", prune=0.5, device="cpu", progress=False)
    return out


def test_a_pruned_run_records_its_widths_and_variant_and_samples(pruned, tiny_unet_run, assert_unsaturated):
    config = json.loads((pruned / "config.json").read_text())
    assert config["compress"]["prune"] == 0.5 and config["compress"]["source"].endswith("tiny")
    assert config["model"]["level_channels"] == [4, 8] and config["model"]["stem_channels"] == 4
    g = pixelforge.load(pruned, device="cpu")
    assert parameter_count(g.model) < 0.4 * parameter_count(pixelforge.load(tiny_unet_run, device="cpu").model)
    images, _ = g.generate_tensor(4, labels=[0, 1, 2, None], steps=3, guidance=2.0)
    assert_unsaturated(images)
    (im,) = g.generate(1, label=2, steps=2)
    assert im.info["pixelforge"]["variant"] == "pruned50"


def test_a_pruned_run_evaluates_and_edits(pruned, pixelforge_cache):
    from pixelforge.evaluate import evaluate_run

    result = evaluate_run(str(pruned), n=20, extractor="mnist-classifier", device="cpu", progress=False, report=False,
                          steps=2)
    assert result["fid"] >= 0
    g = pixelforge.load(pruned, device="cpu")
    (im,) = g.edit([pixelforge.images.to_pil(torch.zeros(1, 1, 8, 8))[0]], strength=0.5, steps=2)
    assert im.info["pixelforge"]["variant"] == "pruned50"


def test_pruning_then_onnx_int8_loads_and_samples_close_to_the_pruned_network(pruned, tiny_unet_run, tmp_path):
    pytest.importorskip("onnxruntime")
    info = compress_run(tiny_unet_run, tmp_path / "q", export="onnx", quantize="int8", prune=0.5, calibration_images=4,
                        device="cpu", progress=False)
    assert info["variant"] == "pruned50-onnx-int8"
    ref, _ = pixelforge.load(pruned, device="cpu").generate_tensor(4, label=3, steps=3)
    g = pixelforge.load(info["out"], device="cpu")
    out, _ = g.generate_tensor(4, label=3, steps=3)
    assert 0 < (out - ref).abs().mean() < 0.1  # quantised, yet the pruned network's images
    assert json.loads((info["out"] / "config.json").read_text())["model"]["level_channels"] == [4, 8]
    with pytest.raises(ValueError, match="holds its network in an ONNX graph; fine-tune the PyTorch one"):
        pixelforge.train("digits", name="ft", runs_dir=tmp_path / "runs", init_from=str(info["out"]), steps=1)


def test_cli_prunes_and_samples_and_refuses_a_bad_share_in_one_line(tiny_unet_run, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["compress", str(tiny_unet_run), "--prune", "0.3", "-o", str(out), "--quiet"]) == 0
    assert "pruned30 variant" in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "2", "--steps", "2", "-o", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("seed*.png"))) == 2
    capsys.readouterr()
    for share in ("1", "-0.1", "nan"):
        assert main(["compress", str(tiny_unet_run), "--prune", share, "-o", str(tmp_path / "bad"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "compress.prune must be a share of channels in [0, 1)" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_the_server_serves_a_pruned_run(pruned, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.serve import create_app
    from serve_jobs import run_job

    app = create_app([pruned.name], runs_dir=pruned.parent, device="cpu", allowed_hosts=["testserver"],
                     db_path=tmp_path / "r.sqlite")
    with TestClient(app) as client:
        job = run_job(client, {"model": pruned.name, "n": 1, "seed": 4, "label": 2, "options": {"steps": 2}})
    assert job["settings"][0]["variant"] == "pruned50"


# --- fine-tuning ----------------------------------------------------------------------------------------


def test_a_run_started_from_a_pruned_run_keeps_its_widths_and_takes_every_weight(pruned, tmp_path, pixelforge_cache,
                                                                                  capsys):
    assert main(["train", "digits", "--name", "ft", "--runs-dir", str(tmp_path), "--init-from", str(pruned),
                 "--steps", "2", "--batch-size", "8", "--val-every", "2", "--ckpt-every", "2", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"initialised from {pruned}" in said and "not copied" not in said
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["model"]["level_channels"] == [4, 8] and config["model"]["stem_channels"] == 4
    assert "compress" not in config  # a trained run, no longer a compressed variant
    (im,) = pixelforge.load(tmp_path / "ft", device="cpu").generate(1, label=1, steps=2)
    assert "variant" not in im.info["pixelforge"]
    assert main(["train", "digits", "--name", "budget", "--runs-dir", str(tmp_path), "--init-from", str(pruned),
                 "--minutes", "1", "--quiet"]) == 2
    assert "to fine-tune the pruned run" in capsys.readouterr().err


@pytest.mark.slow  # runs the bench script end to end: ~9 s
def test_bench_measures_the_pruned_variant_against_fp32_eager(tiny_unet_run, tmp_path):
    from pixelforge.compression import bench_run

    rows = bench_run(tiny_unet_run, variants=("pruned",), prune=0.5, n=2, steps=2, batch_size=2, repeats=1, device="cpu",
                     work_dir=tmp_path, progress=False)
    assert [r["variant"] for r in rows] == ["fp32", "pruned"]
    assert rows[1]["bytes"] < 0.5 * rows[0]["bytes"] and rows[1]["images_per_s"] > 0
