"""Specifications of the VQ-VAE family: the tokeniser interface, codebook EMA and restarts, usage figures,
sampling, save/load, exact resume through the trainer, and the CLI."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.data import DataConfig, load_dataset, to_model
from pixelforge.models import FAMILIES, OptimConfig, VQVAEConfig, VQVAEModel
from pixelforge.train import RunConfig, TrainConfig, train
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint

TINY = dict(image_size=8, channels=1, base_channels=8, downsample=2, codebook_size=32, code_dim=8)


def tiny(seed: int = 0, *, lr: float = 2e-3, **changes) -> VQVAEModel:
    return VQVAEModel(VQVAEConfig(**{**TINY, **changes}), OptimConfig(lr=lr, warmup_steps=0), seed=seed)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> torch.Tensor:
    """16 of the bundled 8x8 digits, (16, 1, 8, 8) in [-1, 1]."""
    cfg = DataConfig(source="digits", image_size=8, channels=1)
    data = load_dataset(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return to_model(data.images[:16], cfg)


@pytest.fixture(scope="module")
def trained(digits) -> VQVAEModel:
    m = tiny()
    for step in range(15):
        m.training_step(digits, Cond(), step)
    return m


# --- the tokeniser interface ----------------------------------------------------------------------


def test_encode_indices_and_decode_indices_round_trip_to_the_input(trained, digits):
    assert trained.codebook_size == 32 and trained.latent_side == 4
    idx = trained.encode_indices(digits)
    assert idx.shape == (16, 4, 4) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < 32
    images = trained.decode_indices(idx)
    assert images.shape == (16, 1, 8, 8)
    # each decoded image is nearer its own digit than the other digits are on average
    own = (images - digits).pow(2).mean()
    others = torch.stack([(images - digits.roll(k, 0)).pow(2).mean() for k in range(1, 16)]).mean()
    assert own < 0.7 * others, (float(own), float(others))
    assert torch.equal(trained.decode_indices(idx.flatten(1)), images)  # (B, h*w) is accepted too
    assert torch.equal(trained.reconstruct(digits), images)


def test_downsample_sets_the_code_grid_side():
    assert VQVAEModel(VQVAEConfig(image_size=28, channels=1, base_channels=4, downsample=4)).latent_side == 7
    m = VQVAEModel(VQVAEConfig(image_size=16, channels=3, base_channels=4, downsample=8, codebook_size=16))
    assert m.encode_indices(torch.zeros(2, 3, 16, 16)).shape == (2, 2, 2)


# --- training and the codebook --------------------------------------------------------------------


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_training_steps_reduce_the_validation_loss(digits, codebook_update):
    m = tiny(codebook_update=codebook_update)

    def val_loss() -> float:
        per_sample = m.validation_loss(digits, Cond(), torch.Generator().manual_seed(0))
        assert per_sample.shape == (16,)
        return float(per_sample.mean())

    losses = []
    for step in range(40):
        figures = m.training_step(digits, Cond(), step)
        losses.append(val_loss())
    assert {"loss", "recon", "commit", "perplexity", "used_codes", "grad_norm"} <= set(figures)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)  # about 0.3 here


def test_codebook_usage_reports_perplexity_between_1_and_k(trained, digits):
    usage = trained.codebook_usage(digits)
    assert 1 <= usage["perplexity"] <= 32
    assert 0 < usage["used_fraction"] <= 1
    assert usage["used_fraction"] == usage["used_codes"] / 32
    figures = copy.deepcopy(trained).training_step(digits, Cond(), 15)
    assert 1 <= figures["perplexity"] <= 32 and 1 <= figures["used_codes"] <= 32


def test_first_step_starts_the_codebook_at_encoder_outputs(digits):
    m = tiny()
    z = m.encode(digits).detach().permute(0, 2, 3, 1).reshape(-1, 8)  # (256, 8) before any update
    assert not bool(m.quantizer.initialized)
    m.quantizer.initialize(z, torch.Generator().manual_seed(0))
    assert bool(m.quantizer.initialized)
    gap = (m.quantizer.codebook[:, None] - z[None]).abs().amax(-1).min(1).values  # (K,) to the nearest output
    assert float(gap.max()) == 0  # every code is one of the batch's encoder outputs


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_dead_codes_are_restarted_at_encoder_outputs_of_the_batch(digits, codebook_update):
    m = tiny(codebook_update=codebook_update)
    m.training_step(digits, Cond(), 0)
    q = m.quantizer
    with torch.no_grad():  # all codes but 0 far from the data and unused for a long time
        q.codebook[1:] = 100.0
        q.cluster_size[1:] = 0.0
        if codebook_update == "ema":
            q.embed_sum[1:] = 0.0
    figures = m.training_step(digits, Cond(), 1)
    assert figures["restarted"] == 31
    assert float(q.codebook.detach()[1:].abs().max()) < 100
    assert m.codebook_usage(digits)["used_codes"] > 1
    assert torch.equal(m.code_frequencies[:, 1:], torch.zeros(16, 31))  # their old counts are forgotten


def test_without_restarts_far_codes_stay_unused(digits):
    m = tiny(codebook_update="loss", dead_code_threshold=0.0)
    m.training_step(digits, Cond(), 0)
    with torch.no_grad():
        m.quantizer.codebook[1:] = 100.0
    figures = m.training_step(digits, Cond(), 1)
    assert figures["restarted"] == 0 and figures["used_codes"] == 1
    assert float(m.quantizer.codebook.detach()[1:].min()) > 99.9  # only Adam's momentum from step 0 moved them


def test_codebook_ema_state_lives_in_the_state_dict(trained):
    state = trained.state_dict()
    for name in ("quantizer.codebook", "quantizer.embed_sum", "quantizer.cluster_size", "quantizer.initialized",
                 "code_frequencies"):
        assert name in state, name
    assert state["quantizer.codebook"].shape == (32, 8) and state["code_frequencies"].shape == (16, 32)
    assert not any(p is trained.quantizer.codebook for p in trained.parameters())  # EMA: no gradient updates
    assert "quantizer.embed_sum" not in tiny(codebook_update="loss").state_dict()


def test_training_step_uses_only_the_models_own_random_stream(digits):
    runs = []
    for global_seed in (0, 1):
        m = tiny(seed=3)
        torch.manual_seed(global_seed)
        runs.append([m.training_step(digits, Cond(), step)["loss"] for step in range(2)])
    assert runs[0] == runs[1]


# --- sampling -------------------------------------------------------------------------------------


def test_sample_has_the_configured_shape_unsaturated_values_and_seeds(trained, assert_unsaturated):
    x = trained.sample(4, seed=7)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert_unsaturated(x)
    assert torch.equal(x, trained.sample(4, seed=7))
    assert torch.equal(x, trained.sample(4, seeds=[7, 8, 9, 10]))
    for i in range(4):
        torch.testing.assert_close(trained.sample(1, seed=7 + i), x[i : i + 1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="seeds"):
        trained.sample(2, seeds=[1])


def test_sample_draws_codes_from_the_per_position_code_frequencies(trained):
    m = VQVAEModel(trained.config)
    m.load_state_dict(trained.state_dict())
    with torch.no_grad():
        m.code_frequencies.zero_()
        m.code_frequencies[:, 5] = 1.0  # every position has only ever seen code 5
    expected = m.decode_indices(torch.full((1, 4, 4), 5))
    torch.testing.assert_close(m.sample(3, seed=0), expected.expand(3, -1, -1, -1), rtol=0, atol=1e-5)


def test_state_dict_round_trip_through_safetensors_gives_identical_samples(trained, digits, tmp_path):
    path = tmp_path / "vqvae.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    other = VQVAEModel(trained.config, seed=99)
    other.load_state_dict(load_file(str(path)))
    assert torch.equal(other.sample(3, seed=1), trained.sample(3, seed=1))
    assert torch.equal(other.encode_indices(digits), trained.encode_indices(digits))


# --- config, registry, trainer, CLI ---------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    (dict(downsample=3), "power of 2"),
    (dict(image_size=12, downsample=8), "divisible"),
    (dict(codebook_update="kmeans"), "ema, loss"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(channels=2), "channels"),
])
def test_invalid_config_raises_a_clear_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**{**TINY, **changes})


def test_family_registry_offers_the_vqvae_contract():
    cls = FAMILIES["vqvae"]
    assert cls is VQVAEModel and cls.Config is VQVAEConfig and cls.family == "vqvae"
    assert cls.capabilities == ("edit",) and cls.sample_options == {}
    m = tiny()
    assert set(m.optimizers()) == {"net"} and isinstance(m.train_generator, torch.Generator)


def test_resumed_training_repeats_the_uninterrupted_losses_exactly(tmp_path):
    # A fast EMA and a high threshold restart codes at every step, so the restarts' random draws,
    # the EMA sums and the code counts must all come back from the checkpoint.
    cfg = RunConfig(
        family="vqvae", model={**TINY, "ema_decay": 0.5, "dead_code_threshold": 0.5},
        data=DataConfig(source="digits", image_size=8, channels=1),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(steps=6, batch_size=16, ckpt_every=3, log_every=1, val_every=3, sample_every=100, val_images=32),
    )
    kw = dict(device="cpu", progress=False, cache_dir=tmp_path / "cache")
    full = train(cfg, tmp_path / "full", **kw)
    first = train(cfg, tmp_path / "resumed", stop_at=3, **kw)
    second = train(cfg, tmp_path / "resumed", **kw)
    assert first.stopped == "interrupted" and second.stopped == "finished"
    assert {**first.losses, **second.losses} == full.losses
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])
    for name in ("quantizer.codebook", "quantizer.embed_sum", "quantizer.cluster_size", "code_frequencies"):
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert all(math.isfinite(v) for v in full.losses.values())


def test_cli_trains_and_samples_a_vqvae(tmp_path, pixelforge_cache):
    runs, out = str(tmp_path / "runs"), tmp_path / "out"
    assert main(["train", "digits", "--model", "vqvae", "--name", "q", "--runs-dir", runs, "--steps", "4",
                 "--batch-size", "16", "--base-channels", "8", "--set", "downsample=2", "--device", "cpu", "--quiet"]) == 0
    assert main(["sample", "q", "--runs-dir", runs, "-n", "3", "-o", str(out), "--device", "cpu"]) == 0
    assert len([p for p in out.glob("*.png") if p.name != "grid.png"]) == 3
