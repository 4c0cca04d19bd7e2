"""Specifications of the VAE family: the discretised likelihood, the ELBO in bits/dim, KL warm-up, the
conditional variant, reconstruction and interpolation, sampling, save/load, exact resume and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.data import DataConfig, load_dataset, to_model
from pixelforge.models import FAMILIES, OptimConfig, VAEConfig, VAEModel
from pixelforge.models.vae import LIKELIHOODS, discretized_log_prob, kl_weight
from pixelforge.train import RunConfig, TrainConfig, train

TINY = dict(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), latent_dim=8, kl_warmup_steps=0)
LEVELS = torch.arange(256) / 127.5 - 1  # the 256 values an 8-bit channel takes in [-1, 1]


def tiny(seed: int = 0, *, lr: float = 2e-3, **changes) -> VAEModel:
    return VAEModel(VAEConfig(**{**TINY, **changes}), OptimConfig(lr=lr, warmup_steps=0), seed=seed)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """16 of the bundled 8x8 digits, (16, 1, 8, 8) in [-1, 1], and their labels (16,)."""
    cfg = DataConfig(source="digits", image_size=8, channels=1)
    data = load_dataset(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return to_model(data.images[:16], cfg), data.labels[:16]


@pytest.fixture(scope="module")
def conditional(randomize_zero_init) -> VAEModel:
    """A conditional model whose zero-initialised layers are made random, so labels change its output."""
    return randomize_zero_init(tiny(num_classes=10))


# --- the likelihood and the bound -----------------------------------------------------------------


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("mean, log_scale", [(0.3, -2.0), (-1.0, -6.0), (0.99, -7.0), (4.0, 2.0), (-0.2, -9.0)])
def test_discretized_likelihood_sums_to_one_over_the_256_levels(likelihood, mean, log_scale):
    lp = discretized_log_prob(LEVELS, torch.full((256,), mean), torch.full((256,), log_scale), likelihood)
    assert torch.isfinite(lp).all() and float(lp.max()) <= 1e-6
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_discretized_likelihood_is_the_mass_of_the_pixels_bin(likelihood):
    """Inner levels get F((x + 1/255 - mean) / s) - F((x - 1/255 - mean) / s), computed plainly in float64."""
    mean, s = 0.2, 0.3
    cdf = torch.sigmoid if likelihood == "discretized_logistic" else torch.special.ndtr
    x = LEVELS[1:-1].double()
    expected = (cdf((x + 1 / 255 - mean) / s) - cdf((x - 1 / 255 - mean) / s)).log()
    lp = discretized_log_prob(LEVELS[1:-1], torch.full((254,), mean), torch.full((254,), math.log(s)), likelihood)
    torch.testing.assert_close(lp.double(), expected, rtol=0, atol=1e-4)


def test_bits_per_dim_is_positive_and_finite_and_log_likelihood_equals_the_validation_loss(digits):
    x, labels = digits
    m = tiny(beta=4.0, num_classes=10)  # beta weights training only: the bound always uses 1
    cond = Cond(labels=labels)
    bpd = m.log_likelihood(x, cond, seed=3)
    assert bpd.shape == (16,) and torch.isfinite(bpd).all() and float(bpd.min()) > 0
    torch.testing.assert_close(bpd, m.validation_loss(x, cond, torch.Generator().manual_seed(3)), rtol=0, atol=0)
    assert not torch.equal(bpd, m.log_likelihood(x, cond, seed=4))  # one posterior sample from the seed


def test_importance_weighted_bound_is_finite_and_deterministic(digits):
    x, _ = digits
    m = tiny()
    iw = m.log_likelihood(x, samples=8, seed=1)
    assert iw.shape == (16,) and torch.isfinite(iw).all() and float(iw.min()) > 0
    assert torch.equal(iw, m.log_likelihood(x, samples=8, seed=1))
    with pytest.raises(ValueError, match="samples"):
        m.log_likelihood(x, samples=0)


# --- training ---------------------------------------------------------------------------------------


def test_training_steps_reduce_the_validation_bits_per_dim(digits):
    x, _ = digits
    m = tiny(lr=3e-3)

    def val_loss() -> float:
        return float(m.validation_loss(x, Cond(), torch.Generator().manual_seed(0)).mean())

    losses = []
    for step in range(60):
        figures = m.training_step(x, Cond(), step)
        if step < 5 or step >= 55:
            losses.append(val_loss())
    assert {"loss", "recon", "kl", "bits_per_dim", "kl_weight", "grad_norm"} <= set(figures)
    assert figures["bits_per_dim"] == pytest.approx(figures["recon"] + figures["kl"])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)  # about 4.7 -> 4.0 bits/dim here


def test_kl_warmup_ramps_the_weight_from_0_to_beta(digits):
    assert [kl_weight(s, 2.0, 4) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(0, 0.5, 0) == 0.5
    x, _ = digits
    m = tiny(beta=2.0, kl_warmup_steps=4)
    figures = [m.training_step(x, Cond(), step) for step in range(5)]
    assert [f["kl_weight"] for f in figures] == [0.5, 1.0, 1.5, 2.0, 2.0]
    for f in figures:  # the objective weights the KL, the reported bound does not
        assert f["loss"] == pytest.approx(f["recon"] + f["kl_weight"] * f["kl"], rel=1e-5)


def test_training_step_uses_only_the_models_own_random_stream(digits):
    x, labels = digits
    runs = []
    for global_seed in (0, 1):
        m = tiny(seed=3, num_classes=10)
        torch.manual_seed(global_seed)
        runs.append([m.training_step(x, Cond(labels=labels), step)["loss"] for step in range(2)])
    assert runs[0] == runs[1]


# --- images -------------------------------------------------------------------------------------------


def test_sample_has_the_configured_shape_unsaturated_values_and_seeds(conditional, assert_unsaturated):
    cond = Cond(labels=torch.tensor([3, 1, 4, 1]))
    x = conditional.sample(4, cond, seed=7)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert_unsaturated(x)
    assert torch.equal(x, conditional.sample(4, cond, seeds=[7, 8, 9, 10]))
    assert not torch.equal(x, conditional.sample(4, cond, seed=8))
    for i in range(4):
        alone = conditional.sample(1, cond.index(slice(i, i + 1)), seed=7 + i)
        torch.testing.assert_close(alone, x[i : i + 1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="seeds"):
        conditional.sample(2, seeds=[1])


def test_temperature_zero_decodes_the_prior_mean_whatever_the_seed(conditional):
    cond = Cond(labels=torch.tensor([2, 2]))
    a = conditional.sample(2, cond, seed=0, temperature=0.0)
    torch.testing.assert_close(a[0], a[1], rtol=0, atol=1e-6)
    assert not torch.equal(a, conditional.sample(2, cond, seed=0, temperature=1.0))


def test_conditional_samples_depend_on_the_label(conditional):
    a = conditional.sample(2, Cond(labels=torch.tensor([1, 1])), seed=5)
    b = conditional.sample(2, Cond(labels=torch.tensor([7, 7])), seed=5)
    assert (a - b).abs().max() > 1e-3
    unlabelled = conditional.sample(2, None, seed=5)  # the "no label" embedding
    assert unlabelled.shape == a.shape and (unlabelled - a).abs().max() > 1e-3


def test_interpolation_ends_are_the_reconstructions(conditional, digits):
    x, labels = digits
    cond = Cond(labels=labels[:3])
    path = conditional.interpolate(x[:3], x[3:6], steps=5, cond=cond)
    assert path.shape == (3, 5, 1, 8, 8)
    torch.testing.assert_close(path[:, 0], conditional.reconstruct(x[:3], cond), rtol=0, atol=1e-5)
    torch.testing.assert_close(path[:, -1], conditional.reconstruct(x[3:6], cond), rtol=0, atol=1e-5)
    assert (path[:, 2] - path[:, 0]).abs().max() > 1e-4  # the middle is somewhere else
    single = conditional.interpolate(x[0], x[3], steps=4)
    assert single.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="steps"):
        conditional.interpolate(x[0], x[1], steps=1)


def test_state_dict_round_trip_through_safetensors_gives_identical_samples(conditional, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in conditional.state_dict().items()}, str(path))
    other = VAEModel(conditional.config, seed=99)
    cond = Cond(labels=torch.tensor([0, 9]))
    assert not torch.equal(other.sample(2, cond, seed=1), conditional.sample(2, cond, seed=1))
    other.load_state_dict(load_file(str(path)))
    assert torch.equal(other.sample(2, cond, seed=1), conditional.sample(2, cond, seed=1))


# --- config, registry, trainer, CLI ---------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    (dict(image_size=9), "divisible"),
    (dict(likelihood="gaussian"), "discretized_logistic"),
    (dict(beta=-1.0), "beta"),
    (dict(label_dropout=1.0), "label_dropout"),
    (dict(channels=2), "channels"),
])
def test_invalid_config_raises_a_clear_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**{**TINY, **changes})


def test_family_registry_offers_the_vae_contract():
    cls = FAMILIES["vae"]
    assert cls is VAEModel and cls.Config is VAEConfig and cls.family == "vae"
    assert cls.capabilities == ("log_likelihood", "edit") and cls.sample_options == {"temperature": 1.0}
    assert VAEConfig(**{**TINY, "channel_mult": [1, 2]}) == VAEConfig(**TINY)
    m = tiny()
    assert set(m.optimizers()) == {"net"} and isinstance(m.train_generator, torch.Generator)


def test_resumed_training_repeats_the_uninterrupted_losses_exactly(tmp_path):
    cfg = RunConfig(
        family="vae", model={**TINY, "num_classes": 10, "kl_warmup_steps": 4},
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
    assert all(math.isfinite(v) and v > 0 for v in full.losses.values())


def test_cli_trains_and_samples_a_conditional_vae_and_the_api_takes_temperature(tmp_path, pixelforge_cache):
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert main(["train", "digits", "--model", "vae", "--name", "v", "--runs-dir", str(runs), "--steps", "4",
                 "--batch-size", "16", "--base-channels", "8", "--device", "cpu", "--quiet"]) == 0
    assert main(["sample", "v", "--runs-dir", str(runs), "-n", "3", "-o", str(out), "--device", "cpu"]) == 0
    assert len([p for p in out.glob("*.png") if p.name != "grid.png"]) == 3
    g = pixelforge.api.load(runs / "v", device="cpu")
    assert g.num_classes == 10 and g.sample_options == {"temperature": 1.0}
    images, settings = g.generate_tensor(2, label=3, temperature=0.5)
    assert images.shape == (2, 1, 8, 8) and settings[0]["temperature"] == 0.5
    with pytest.raises(ValueError, match="temperature"):
        g.generate_tensor(1, steps=3)
