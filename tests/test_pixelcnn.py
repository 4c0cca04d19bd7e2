"""Specifications of the PixelCNN family: causality without a blind spot, an exact likelihood in
bits/dim, cached sampling equal to full recomputation, per-image seeds, training, save/load, resume, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.data import DataConfig, load_dataset, to_model
from pixelforge.models import FAMILIES, OptimConfig, PixelCNNConfig, PixelCNNModel
from pixelforge.models.pixelcnn import discretized_logistic_log_prob, from_levels, mixture_log_prob, to_levels
from pixelforge.train import RunConfig, TrainConfig, train

TINY = dict(image_size=8, channels=1, hidden_channels=8, num_layers=3, kernel_size=3)
VARIANTS = {  # name -> config changes; every output and channel count
    "softmax-gray": dict(output="softmax256"),
    "softmax-rgb": dict(output="softmax256", channels=3),
    "mixture-gray": dict(output="logistic_mixture", n_mixtures=2),
    "mixture-rgb": dict(output="logistic_mixture", channels=3, n_mixtures=2),
}


def tiny_model(randomize, *, seed: int = 0, **changes) -> PixelCNNModel:
    """A tiny model whose zero-initialised output layer is made random, so every input matters."""
    return randomize(PixelCNNModel(PixelCNNConfig(**{**TINY, **changes}), OptimConfig(), seed=seed), seed=seed)


def random_image(b: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    """(b, c, side, side) on the 8-bit grid of [-1, 1], as the data pipeline delivers images."""
    gen = torch.Generator().manual_seed(seed)
    return from_levels(torch.randint(0, 256, (b, c, side, side), generator=gen))


def outputs(model: PixelCNNModel, x: torch.Tensor) -> torch.Tensor:
    """The head's raw output: softmax logits (B, C, 256, H, W) or mixture parameters (B, P, H, W)."""
    return model.head(model.net(x), x)


# --- config and registry ----------------------------------------------------------------------------


def test_family_is_registered_with_its_capabilities_and_options():
    assert FAMILIES["pixelcnn"] is PixelCNNModel
    assert PixelCNNModel.family == "pixelcnn"
    # both are abilities it has: log_likelihood (exact bits/dim) and classifier-free guidance on the
    # logits, each exercised below
    assert set(PixelCNNModel.capabilities) == {"log_likelihood", "guidance"}
    assert PixelCNNModel.sample_options == {"temperature": 1.0, "guidance": 1.0}


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(output="mixture"), "softmax256, logistic_mixture"),
        (dict(channels=2), "channels"),
        (dict(kernel_size=4), "odd"),
        (dict(num_layers=0), "num_layers"),
        (dict(label_dropout=1.0), "label_dropout"),
    ],
)
def test_bad_config_values_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        PixelCNNConfig(**{**TINY, **changes})


# --- causality ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outputs_at_a_pixel_depend_only_on_earlier_pixels_with_no_blind_spot(randomize_zero_init, variant):
    model = tiny_model(randomize_zero_init, **VARIANTS[variant])  # 3 layers, kernel 3
    c = model.config.channels
    i, j = 4, 3
    x = random_image(1, c, 8).requires_grad_(True)
    out = outputs(model, x)
    # Softmax: the first channel's logits; mixture: all parameters of the pixel (the current pixel's
    # own channels enter only through the likelihood's coefficients, never through the network).
    target = out[0, 0, :, i, j] if model.config.output == "softmax256" else out[0, :, i, j]
    (grad,) = torch.autograd.grad(target.sum(), x)
    influence = grad.abs().sum(dim=(0, 1))  # (H, W)
    raster = torch.arange(64).reshape(8, 8)
    assert influence[raster >= i * 8 + j].max() == 0  # the pixel itself and everything after it
    for k in range(1, 5):  # up and to the right: the region a plain masked-convolution stack misses
        assert influence[i - 1, j + k] > 0, k
    for pos in [(i, j - 1), (i, j - 3), (i - 1, j), (i - 2, j - 3), (i - 3, j + 2), (0, 0)]:
        assert influence[pos] > 0, pos


def test_rgb_softmax_channel_sees_the_earlier_channels_of_its_own_pixel(randomize_zero_init):
    model = tiny_model(randomize_zero_init, channels=3)
    i, j = 2, 5
    x = random_image(1, 3, 8).requires_grad_(True)
    logits = outputs(model, x)  # (1, 3, 256, 8, 8)
    for ch in range(3):
        (grad,) = torch.autograd.grad(logits[0, ch, :, i, j].sum(), x, retain_graph=True)
        here = grad[0, :, i, j].abs()  # (3,): influence of this pixel's R, G, B
        assert (here[:ch] > 0).all() and (here[ch:] == 0).all(), (ch, here)
        assert grad[0, :, i, j + 1 :].abs().max() == 0 and grad[0, :, i + 1 :].abs().max() == 0


# --- exact likelihood -------------------------------------------------------------------------------


def test_an_untrained_softmax_model_is_uniform_exactly_8_bits_per_dim():
    for channels in (1, 3):
        model = PixelCNNModel(PixelCNNConfig(**{**TINY, "channels": channels}), seed=0)
        bpd = model.log_likelihood(random_image(3, channels, 8))
        torch.testing.assert_close(bpd, torch.full((3,), 8.0), rtol=0, atol=1e-5)


def test_log_likelihood_maps_inputs_to_their_8_bit_values():
    model = PixelCNNModel(PixelCNNConfig(**TINY), seed=0)
    x = random_image(2, 1, 8)
    assert torch.equal(to_levels(x), ((x + 1) * 127.5).round().long())
    assert torch.equal(from_levels(to_levels(x)), x)
    nudged = x + 0.3 / 127.5  # less than half a level away: the same 8-bit image
    torch.testing.assert_close(model.log_likelihood(nudged), model.log_likelihood(x), rtol=0, atol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_log_likelihood_is_the_sum_of_per_pixel_conditionals_from_a_slow_loop(randomize_zero_init, variant):
    """Recompute -log p one pixel (and channel) at a time, with everything later in raster order
    replaced by noise, and compare with the one-pass exact bits/dim."""
    model = tiny_model(randomize_zero_init, **{**VARIANTS[variant], "image_size": 4}).eval()
    c, side = model.config.channels, 4
    x = random_image(2, c, side, seed=1)
    k = to_levels(x)
    noise = random_image(2, c, side, seed=2)
    log_p = torch.zeros(2)
    with torch.no_grad():
        for i in range(side):
            for j in range(side):
                for ch in range(c) if model.config.output == "softmax256" else [None]:
                    xc = x.clone()
                    xc[:, :, i + 1 :] = noise[:, :, i + 1 :]
                    xc[:, :, i, j + 1 :] = noise[:, :, i, j + 1 :]
                    if ch is None:  # mixture: the pixel's channels jointly
                        xc[:, :, i, j] = noise[:, :, i, j]
                        params = outputs(model, xc)[:, :, i : i + 1, j : j + 1]
                        log_p += mixture_log_prob(params, k[:, :, i : i + 1, j : j + 1], model.config.n_mixtures)[:, 0, 0]
                    else:  # softmax: channel ch given the pixels before and the channels before ch
                        xc[:, ch:, i, j] = noise[:, ch:, i, j]
                        logits = outputs(model, xc)[:, ch, :, i, j]
                        log_p += logits.log_softmax(dim=-1).gather(1, k[:, ch, i, j][:, None])[:, 0]
    expected_bpd = -log_p / (c * side * side * math.log(2))
    torch.testing.assert_close(model.log_likelihood(x), expected_bpd, rtol=1e-5, atol=1e-5)


def test_discretised_logistic_puts_exactly_all_mass_on_the_256_values():
    k = torch.arange(256)[None, :]  # (1, 256)
    for mean, log_scale in [(0.0, -7.0), (0.3, -3.0), (-1.0, 0.0), (0.99, 2.0), (3.0, -5.0), (-0.5, -7.0)]:
        # In float64 the sum is 1 to rounding; in float32 the bin edges of a narrow logistic carry
        # rounding of about 1e-7 x 1/scale, so the sum is 1 within a few 1e-5.
        for dtype, atol in [(torch.float64, 1e-12), (torch.float32, 1e-4)]:
            mean_t, log_scale_t = torch.tensor([[mean]], dtype=dtype), torch.tensor([[log_scale]], dtype=dtype)
            logp = discretized_logistic_log_prob(k, mean_t, log_scale_t)
            assert torch.isfinite(logp).all() and logp.dtype == dtype
            torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=dtype), rtol=0, atol=atol)


def test_grayscale_mixture_distribution_over_a_pixel_sums_to_one(randomize_zero_init):
    model = tiny_model(randomize_zero_init, output="logistic_mixture", n_mixtures=3)
    params = outputs(model, random_image(1, 1, 8))[:, :, 3:4, 5:6].expand(-1, -1, 1, 256)  # (1, P, 1, 256)
    logp = mixture_log_prob(params, torch.arange(256).reshape(1, 1, 1, 256), 3)
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0), rtol=0, atol=1e-5)


def test_labels_change_the_likelihood_of_a_conditional_model(randomize_zero_init):
    model = tiny_model(randomize_zero_init, num_classes=10)
    x = random_image(2, 1, 8).repeat(2, 1, 1, 1)
    bpd = model.log_likelihood(x, Cond(labels=torch.tensor([0, 0, 7, 7])))
    assert (bpd[:2] - bpd[2:]).abs().min() > 1e-4


@pytest.fixture(scope="module")
def digits16(tmp_path_factory) -> torch.Tensor:
    cfg = DataConfig(source="digits", image_size=8, channels=1)
    data = load_dataset(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return to_model(data.images[:16], cfg), data.labels[:16]


def test_a_few_training_steps_lower_the_bits_per_dim(digits16):
    x, labels = digits16
    model = PixelCNNModel(PixelCNNConfig(**TINY, num_classes=10), OptimConfig(lr=1e-3, warmup_steps=1), seed=0)
    cond = Cond(labels=labels)
    gen = torch.Generator()
    before = float(model.validation_loss(x, cond, gen).mean())
    for step in range(40):
        figures = model.training_step(x, cond, step)
        assert set(figures) >= {"loss", "grad_norm"} and math.isfinite(figures["loss"])
    after = float(model.validation_loss(x, cond, gen).mean())
    assert before == pytest.approx(8.0, abs=1e-4)
    assert after < before - 0.5, (before, after)


# --- sampling ---------------------------------------------------------------------------------------


@pytest.fixture
def model(randomize_zero_init):
    return tiny_model(randomize_zero_init, num_classes=10)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sample_has_the_configured_shape_and_values_on_the_8_bit_grid(randomize_zero_init, variant, assert_unsaturated):
    m = tiny_model(randomize_zero_init, **VARIANTS[variant])
    x = m.sample(2, seed=0)
    assert x.shape == (2, m.config.channels, 8, 8) and x.dtype == torch.float32
    assert_unsaturated(x)
    assert torch.equal(from_levels(to_levels(x)), x)


def test_same_seed_gives_the_same_samples_and_another_seed_others(model):
    cond = Cond(labels=torch.tensor([4, 5]))
    a, b, c = model.sample(2, cond, seed=11), model.sample(2, cond, seed=11), model.sample(2, cond, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_image_i_of_a_batch_equals_sampling_seed_plus_i_alone(model):
    labels = torch.tensor([3, 1, 4])
    batch = model.sample(3, Cond(labels=labels), seed=20)
    for i in range(3):
        alone = model.sample(1, Cond(labels=labels[i : i + 1]), seed=20 + i)
        assert torch.equal(batch[i : i + 1], alone), i


def test_explicit_seeds_match_seed_plus_i_and_must_match_n(model):
    assert torch.equal(model.sample(2, seed=5), model.sample(2, seeds=[5, 6]))
    with pytest.raises(ValueError, match="seeds"):
        model.sample(2, seeds=[1, 2, 3])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_sampling_gives_the_same_images_as_full_recomputation(randomize_zero_init, variant):
    m = tiny_model(randomize_zero_init, **VARIANTS[variant], num_classes=10, kernel_size=5, num_layers=2)
    cond = Cond(labels=torch.tensor([2, 9]))
    fast = m.sample(2, cond, seed=3, temperature=0.9)
    slow = m.sample_full_recompute(2, cond, seed=3, temperature=0.9)
    assert torch.equal(fast, slow)


def test_callback_is_called_once_per_row(model):
    calls = []
    model.sample(1, seed=0, callback=lambda i, total: calls.append((i, total)))
    assert calls == [(i, 8) for i in range(8)]


def test_temperature_changes_the_samples_and_must_be_positive(model):
    hot, cold = model.sample(2, seed=0, temperature=1.0), model.sample(2, seed=0, temperature=0.3)
    assert not torch.equal(hot, cold)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=0.0)



@pytest.mark.parametrize("channels", [1, 3])
def test_guided_sampling_combines_the_labelled_and_unlabelled_logits(randomize_zero_init, channels):
    m = tiny_model(randomize_zero_init, channels=channels, num_classes=10, num_layers=2)
    cond = Cond(labels=torch.tensor([2, 9, 4]))
    plain = m.sample(3, cond, seed=3)
    guided = m.sample(3, cond, seed=3, guidance=3.0)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    assert torch.equal(m.sample(3, cond, seed=3, guidance=1.0), plain)
    # the cache gives the same pixels as rerunning the network, and each image depends only on its seed
    assert torch.equal(guided, m.sample_full_recompute(3, cond, seed=3, guidance=3.0))
    assert torch.equal(guided[1:2], m.sample(1, Cond(labels=cond.labels[1:2]), seed=4, guidance=3.0))


def test_guidance_zero_samples_the_unlabelled_model(randomize_zero_init):
    m = tiny_model(randomize_zero_init, num_classes=10, num_layers=2)
    unlabelled = m.sample(2, Cond(labels=torch.tensor([-1, -1])), seed=8)
    assert torch.equal(m.sample(2, Cond(labels=torch.tensor([3, 7])), seed=8, guidance=0.0), unlabelled)


def test_guidance_is_ignored_without_labels_and_refused_where_it_cannot_apply(randomize_zero_init):
    m = tiny_model(randomize_zero_init, num_classes=10, num_layers=2)
    assert torch.equal(m.sample(2, seed=1, guidance=2.0), m.sample(2, seed=1))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance"):
            m.sample(1, Cond(labels=torch.tensor([1])), guidance=bad)
    mixture = tiny_model(randomize_zero_init, num_classes=10, num_layers=2, output="logistic_mixture")
    with pytest.raises(ValueError, match="softmax256"):
        mixture.sample(1, Cond(labels=torch.tensor([1])), guidance=2.0)

# --- save / load, resume, CLI ----------------------------------------------------------------------


def test_weights_round_trip_through_safetensors(model, tmp_path):
    state = model.state_dict()
    assert not any(name.endswith("mask") for name in state)  # rebuilt from the config, not saved
    save_file(state, tmp_path / "w.safetensors")
    other = PixelCNNModel(model.config, OptimConfig(), seed=99)
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x = random_image(2, 1, 8)
    assert torch.equal(other.log_likelihood(x), model.log_likelihood(x))
    assert torch.equal(other.sample(2, seed=1), model.sample(2, seed=1))


def test_resumed_training_repeats_the_uninterrupted_losses_exactly(tmp_path):
    cfg = RunConfig(
        family="pixelcnn",
        model={**TINY, "num_classes": 10},
        data=DataConfig(source="digits", image_size=8, channels=1),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        train=TrainConfig(steps=6, batch_size=16, ckpt_every=3, log_every=1, val_every=3, val_images=32,
                          sample_every=100, sample_count=4),
    )

    def run(name, **kwargs):
        return train(cfg, tmp_path / name, device="cpu", progress=False, cache_dir=tmp_path / "cache", **kwargs)

    full = run("full")
    first = run("resumed", stop_at=3)
    second = run("resumed")
    assert first.stopped == "interrupted" and second.stopped == full.stopped == "finished"
    assert {**first.losses, **second.losses} == full.losses
    assert sorted(full.losses) == list(range(6))
    # It learns within the test (lr 1e-2): from the zero-initialised head's uniform 8 bits/dim to well below,
    # so the equal losses above are those of a model that changes, not of one standing still.
    assert full.losses[0] == pytest.approx(8.0, abs=1e-4)
    assert full.losses[5] < 8.0 - 0.3, full.losses


def test_cli_trains_a_pixelcnn_and_samples_pngs(tmp_path, pixelforge_cache):
    runs, out = tmp_path / "runs", tmp_path / "out"
    code = main(["train", "digits", "--model", "pixelcnn", "--name", "p", "--runs-dir", str(runs), "--steps", "4",
                 "--batch-size", "16", "--quiet", "--device", "cpu", "--set", "hidden_channels=8", "--set", "num_layers=3"])
    assert code == 0
    assert RunConfig.load(runs / "p" / "config.json").family == "pixelcnn"
    assert main(["sample", "p", "--runs-dir", str(runs), "-n", "2", "-o", str(out), "--device", "cpu"]) == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 2
    assert Image.open(pngs[0]).size == (8, 8)
    assert (out / "grid.png").is_file()
