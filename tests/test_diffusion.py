"""Specifications of the diffusion family: EDM preconditioning, sampling, seeds, guidance, training, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelforge.condition import Cond
from pixelforge.models import FAMILIES, DiffusionConfig, DiffusionModel, OptimConfig

TINY = dict(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)


def tiny_model(randomize, *, seed: int = 0, **changes) -> DiffusionModel:
    cfg = DiffusionConfig(**{**TINY, **changes})
    return randomize(DiffusionModel(cfg, OptimConfig(), seed=seed), seed=seed)


@pytest.fixture
def model(randomize_zero_init):
    return tiny_model(randomize_zero_init, num_classes=10)


def test_sample_has_the_configured_shape_unsaturated_values_and_follows_the_label(model, assert_unsaturated):
    x = model.sample(3, Cond(labels=torch.tensor([0, 1, 2])), seed=0, steps=3)
    assert x.shape == (3, 1, 8, 8)
    assert x.dtype == torch.float32
    assert_unsaturated(x)
    other_labels = model.sample(3, Cond(labels=torch.tensor([3, 4, 5])), seed=0, steps=3)
    assert not torch.allclose(x, other_labels, atol=1e-3)  # same seeds, other labels: other images


def test_rgb_16px_model_samples_unconditionally_with_distinct_channels_per_seed(randomize_zero_init, assert_unsaturated):
    m = tiny_model(randomize_zero_init, image_size=16, channels=3)
    x = m.sample(2, seed=0, steps=2, sampler="euler")
    assert x.shape == (2, 3, 16, 16)
    assert_unsaturated(x)
    assert not torch.allclose(x[:, 0], x[:, 1], atol=1e-3) and not torch.allclose(x[:, 1], x[:, 2], atol=1e-3)
    torch.testing.assert_close(x[1:], m.sample(1, seed=1, steps=2, sampler="euler"), rtol=0, atol=1e-5)  # seed 1's


@pytest.mark.parametrize("sampler", ["heun", "ancestral"])
def test_same_seed_gives_the_same_samples(model, sampler):
    cond = Cond(labels=torch.tensor([4, 5]))
    a = model.sample(2, cond, seed=11, steps=4, sampler=sampler)
    b = model.sample(2, cond, seed=11, steps=4, sampler=sampler)
    c = model.sample(2, cond, seed=12, steps=4, sampler=sampler)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "ancestral"])
def test_image_i_of_a_batch_equals_sampling_seed_plus_i_alone(model, sampler):
    labels = torch.tensor([3, 1, 4, 1])
    batch = model.sample(4, Cond(labels=labels), seed=20, steps=4, sampler=sampler)
    for i in range(4):
        alone = model.sample(1, Cond(labels=labels[i : i + 1]), seed=20 + i, steps=4, sampler=sampler)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-5)


def test_explicit_seeds_match_seed_plus_i_and_must_match_n(model):
    a = model.sample(2, seed=5, steps=3)
    b = model.sample(2, seeds=[5, 6], steps=3)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="seeds"):
        model.sample(2, seeds=[1, 2, 3], steps=3)


def test_unknown_schedule_or_sampler_lists_the_choices(model):
    with pytest.raises(ValueError, match="karras"):
        model.sample(1, schedule="cosine", steps=2)
    with pytest.raises(ValueError, match="heun"):
        model.sample(1, sampler="rk4", steps=2)


def test_rho_shapes_the_karras_and_nested_schedules_only_and_is_a_checked_option(model):
    from pixelforge.sampling.schedules import karras_sigmas

    assert torch.equal(model._sigmas("karras", 5), model._sigmas("karras", 5, 7.0))  # EDM's rho by default
    low = model._sigmas("karras", 5, 2.0)
    assert torch.allclose(low.cpu(), karras_sigmas(5, model.config.sigma_min, model.config.sigma_max, rho=2.0))
    assert low[2] > model._sigmas("karras", 5)[2]  # a lower rho keeps the middle steps at higher noise levels
    assert not torch.equal(model._sigmas("nested", 4, 2.0), model._sigmas("nested", 4))
    assert torch.equal(model._sigmas("loglinear", 5, 2.0), model._sigmas("loglinear", 5))  # has no rho
    assert torch.equal(model.sample(1, seed=3, steps=3, rho=7.0), model.sample(1, seed=3, steps=3))
    assert not torch.equal(model.sample(1, seed=3, steps=3, rho=2.0), model.sample(1, seed=3, steps=3))
    spec = {s.name: s for s in DiffusionModel.option_specs}["rho"]
    assert spec.default == 7.0 and DiffusionModel.sample_options["rho"] == 7.0
    with pytest.raises(ValueError, match="rho"):
        spec.check(0.5)


def test_guidance_runs_with_labels_and_changes_the_samples(model):
    cond = Cond(labels=torch.tensor([2, 7]))
    plain = model.sample(2, cond, seed=0, steps=4, guidance=1.0)
    guided = model.sample(2, cond, seed=0, steps=4, guidance=3.0)
    assert guided.shape == plain.shape
    assert torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-3


def test_guidance_of_an_unconditional_model_is_a_no_op(randomize_zero_init):
    m = tiny_model(randomize_zero_init)
    assert torch.equal(m.sample(2, seed=0, steps=3, guidance=1.0), m.sample(2, seed=0, steps=3, guidance=4.0))


def test_training_steps_on_a_fixed_batch_reduce_the_validation_loss():
    m = DiffusionModel(DiffusionConfig(**TINY), OptimConfig(lr=2e-3, warmup_steps=0), seed=0)
    # 8 smooth images (B, 1, 8, 8) in [-1, 1]: ramps of different directions and offsets
    r = torch.linspace(-1, 1, 8)
    base = torch.stack([r[None, :].expand(8, 8), r[:, None].expand(8, 8)])  # (2, 8, 8)
    x = torch.stack([(base[i % 2] * (0.5 + 0.1 * i) + 0.05 * i).clamp(-1, 1) for i in range(8)])[:, None]
    val_x = x.repeat(4, 1, 1, 1)  # (32, 1, 8, 8): four noise draws per image

    def val_loss() -> float:
        per_sample = m.validation_loss(val_x, Cond(), torch.Generator().manual_seed(123))
        assert per_sample.shape == (32,)
        return float(per_sample.mean())

    losses = []
    for step in range(30):
        figures = m.training_step(x, Cond(), step)
        assert set(figures) >= {"loss", "grad_norm"}
        losses.append(val_loss())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)  # about 0.75 here


def test_training_step_uses_only_the_models_own_random_stream():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    cond = Cond(labels=torch.tensor([0, 1, 2, 3]))
    runs = []
    for global_seed in (0, 1):
        m = DiffusionModel(DiffusionConfig(**TINY, num_classes=10), OptimConfig(), seed=3)
        torch.manual_seed(global_seed)
        runs.append(m.training_step(x, cond, 0)["loss"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(image_size=9), "divisible"),
        (dict(image_size=12, channel_mult=(1, 2, 2, 2)), "divisible"),
        (dict(channels=2), "channels"),
        (dict(label_dropout=1.0), "label_dropout"),
    ],
)
def test_invalid_config_raises_a_clear_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**{**TINY, **changes})


def test_config_from_json_lists_compares_equal_to_tuples():
    assert DiffusionConfig(**{**TINY, "channel_mult": [1, 2]}) == DiffusionConfig(**TINY)


def test_state_dict_round_trip_through_safetensors_gives_identical_samples(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = DiffusionModel(model.config, seed=99)
    assert not torch.equal(other.sample(2, seed=1, steps=3), model.sample(2, seed=1, steps=3))
    other.load_state_dict(load_file(str(path)))
    cond = Cond(labels=torch.tensor([1, 9]))
    assert torch.equal(other.sample(2, cond, seed=1, steps=3), model.sample(2, cond, seed=1, steps=3))


def test_denoiser_is_the_identity_at_vanishing_noise(model):
    """EDM preconditioning: c_skip -> 1 and c_out -> 0 as sigma -> 0, whatever the network outputs."""
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    out = model.denoise(x, torch.full((3,), 1e-5), Cond(labels=torch.tensor([0, 1, 2])))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-4)


def test_denoiser_at_huge_noise_returns_about_the_network_scaled_by_sigma_data(model):
    """As sigma -> inf, c_skip -> 0 and c_out -> sigma_data: the estimate no longer follows x."""
    x = torch.randn(2, 1, 8, 8) * 1e4
    out = model.denoise(x, torch.full((2,), 1e4))
    assert out.abs().max() < 50  # far from x's scale of 1e4


def test_fresh_model_denoises_to_c_skip_times_x():
    """The output layer starts at zero, so an untrained model's estimate is c_skip x (EDM eq. 7)."""
    m = DiffusionModel(DiffusionConfig(**TINY), seed=0)
    x = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.5, 2.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(m.denoise(x, sigma), c_skip.reshape(-1, 1, 1, 1) * x)


def test_family_registry_offers_the_diffusion_contract():
    cls = FAMILIES["diffusion"]
    assert cls is DiffusionModel
    assert cls.Config is DiffusionConfig
    assert "guidance" in cls.capabilities
    m = cls(DiffusionConfig(**TINY), OptimConfig(), seed=0)
    assert set(m.optimizers()) == {"net"}
    assert isinstance(m.train_generator, torch.Generator)


def test_a_position_embedding_starts_as_nothing_and_lets_a_global_condition_say_where():
    """position_embedding: zero at the start (the network's output and its other initial weights are as
    without it); once learnt, the same input feature at two places gives different outputs, which a
    convolutional network without it can tell apart only near the borders."""
    from pixelforge.models.nets.unet import UNet

    shape = dict(image_size=16, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    torch.manual_seed(0)
    plain = UNet(**shape)
    torch.manual_seed(0)
    placed = UNet(**shape, position_embedding=True)
    assert placed.position.shape == (1, 8, 16, 16) and not placed.position.any()
    assert all(torch.equal(v, placed.state_dict()[k]) for k, v in plain.state_dict().items())
    with torch.no_grad():
        torch.nn.init.normal_(plain.conv_out.weight, std=0.1)
        placed.conv_out.weight.copy_(plain.conv_out.weight)
        x, c = torch.zeros(1, 1, 16, 16), torch.tensor([0.0])
        assert torch.allclose(plain(x, c), placed(x, c), atol=1e-6)
        placed.position.normal_()
        inner = lambda out: out[0, 0, 4:12, 4:12]  # noqa: E731  away from the borders
        assert float(inner(plain(x, c)).std()) < 1e-5  # a constant input stays constant inside
        assert float(inner(placed(x, c)).std()) > 1e-3
        placed.position.zero_()
        torch.nn.init.normal_(placed.vector_layout.weight)
        left, right = torch.zeros(1, 32), torch.zeros(1, 32)  # two condition vectors (emb_dim 4 * 8)
        left[0, 0], right[0, 1] = 1.0, 1.0
        a, b = inner(placed(x, c, vector=left)), inner(placed(x, c, vector=right))
        assert float(a.std()) > 1e-3 and float((a - b).abs().max()) > 1e-3  # the vector draws a layout


def test_position_embedding_is_checked_and_is_unused_by_the_dit():
    with pytest.raises(ValueError, match="position_embedding must be true or false"):
        DiffusionConfig(image_size=8, channels=1, position_embedding="yes")
    assert "position_embedding" in DiffusionConfig(image_size=8, channels=1, backbone="dit", patch_size=2).unused_fields()
