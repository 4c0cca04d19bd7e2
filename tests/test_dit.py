"""Specifications of the DiT backbone and of the diffusion family running on it (backbone="dit")."""

from __future__ import annotations

import pytest
import torch

from pixelforge.condition import Cond
from pixelforge.data import DataConfig
from pixelforge.models import DiffusionConfig, DiffusionModel, OptimConfig
from pixelforge.models.nets.dit import DiT, sincos_pos_embed_2d
from pixelforge.train import RunConfig, TrainConfig, train

TINY_DIT = dict(image_size=8, channels=1, backbone="dit", patch_size=2, depth=2, num_heads=2, hidden_size=32)


def tiny_dit(**changes) -> DiT:
    torch.manual_seed(0)
    kwargs = dict(image_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    return DiT(**{**kwargs, **changes})


@pytest.mark.parametrize("image_size, channels, patch_size", [(8, 1, 2), (16, 3, 4), (8, 3, 1)])
def test_output_has_the_input_shape(image_size, channels, patch_size, randomize_zero_init):
    net = randomize_zero_init(tiny_dit(image_size=image_size, in_channels=channels, patch_size=patch_size))
    x = torch.randn(3, channels, image_size, image_size)
    out = net(x, torch.randn(3), torch.tensor([0, 5, -1]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_adaln_zero_makes_the_initial_output_exactly_zero():
    net = tiny_dit()
    out = net(torch.randn(4, 1, 8, 8), torch.randn(4), torch.tensor([0, 1, 2, -1]))
    assert torch.equal(out, torch.zeros_like(out))


def test_a_fresh_dit_denoiser_returns_c_skip_times_x():
    m = DiffusionModel(DiffusionConfig(**TINY_DIT, num_classes=10), seed=0)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(m.denoise(x, sigma, Cond(labels=torch.tensor([1, -1]))), c_skip.reshape(-1, 1, 1, 1) * x)


def test_labels_change_the_output_once_weights_are_non_zero(randomize_zero_init):
    net = randomize_zero_init(tiny_dit())
    x, c_noise = torch.randn(1, 1, 8, 8).repeat(3, 1, 1, 1), torch.zeros(3)
    out = net(x, c_noise, torch.tensor([2, 7, -1]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[0] - out[2]).abs().max() > 1e-4
    # labels=None means "no label" (-1) for every image
    torch.testing.assert_close(net(x[:1], c_noise[:1], None), out[2:3])


def test_noise_level_changes_the_output(randomize_zero_init):
    net = randomize_zero_init(tiny_dit(num_classes=0))
    x = torch.randn(1, 1, 8, 8).repeat(2, 1, 1, 1)
    out = net(x, torch.tensor([-1.0, 1.0]))
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_each_output_patch_depends_on_the_whole_image(randomize_zero_init):
    # attention mixes all tokens: changing one corner pixel moves the opposite corner's output
    net = randomize_zero_init(tiny_dit(num_classes=0))
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    net(x, torch.zeros(1))[0, 0, 7, 7].backward()
    assert x.grad[0, 0, 0, 0].abs() > 0


def test_sincos_position_embedding_gives_each_token_its_own_vector():
    pe = sincos_pos_embed_2d(32, 4)
    assert pe.shape == (16, 32)
    assert torch.cdist(pe, pe).add(torch.eye(16)).min() > 0.1
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, 4)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backbone": "vit"}, "unet, dit"),
        ({"backbone": "dit", "patch_size": 3}, "patch_size"),
        ({"backbone": "dit", "hidden_size": 30}, "divisible by 4"),
        ({"backbone": "dit", "hidden_size": 32, "num_heads": 3}, "num_heads"),
    ],
)
def test_invalid_dit_configs_are_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(image_size=8, channels=1, **changes)


def test_dit_ignores_the_unet_channel_mult_constraint_and_hidden_size_defaults_to_4x_base():
    cfg = DiffusionConfig(image_size=6, channels=1, backbone="dit", patch_size=2, channel_mult=(1, 2, 2), base_channels=8, depth=1)
    m = DiffusionModel(cfg)
    assert isinstance(m.net, DiT)
    assert m.net.patch_embed.out_channels == 32


def test_diffusion_on_a_dit_learns_a_tiny_set_and_samples(assert_unsaturated):
    m = DiffusionModel(DiffusionConfig(**TINY_DIT, num_classes=2), OptimConfig(lr=2e-3, warmup_steps=0), seed=0)
    r = torch.linspace(-1, 1, 8)
    base = torch.stack([r[None, :].expand(8, 8), r[:, None].expand(8, 8)])  # (2, 8, 8) two ramps
    x = torch.stack([(base[i % 2] * (0.5 + 0.1 * i) + 0.05 * i).clamp(-1, 1) for i in range(8)])[:, None]
    cond = Cond(labels=torch.arange(8) % 2)
    val_x, val_cond = x.repeat(4, 1, 1, 1), Cond(labels=cond.labels.repeat(4))

    def val_loss() -> float:
        return float(m.validation_loss(val_x, val_cond, torch.Generator().manual_seed(123)).mean())

    losses = []
    for step in range(40):
        m.training_step(x, cond, step)
        losses.append(val_loss())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    out = m.sample(3, Cond(labels=torch.tensor([0, 1, 0])), seed=0, steps=4)
    assert out.shape == (3, 1, 8, 8)
    assert_unsaturated(out)


def test_training_with_the_dit_resumes_exactly(tmp_path):
    cfg = RunConfig(
        family="diffusion",
        model={**TINY_DIT, "num_classes": 10},
        data=DataConfig(source="digits", image_size=8, channels=1),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(steps=6, batch_size=16, ckpt_every=3, log_every=1, val_every=3, val_images=32, sample_every=100, sample_count=4),
    )

    def run(name, **kwargs):
        return train(cfg, tmp_path / name, device="cpu", progress=False, cache_dir=tmp_path / "cache", **kwargs)

    full = run("full")
    first = run("resumed", stop_at=3)
    second = run("resumed")
    assert (first.step, second.step, full.step) == (3, 6, 6)
    assert sorted(second.losses) == [3, 4, 5]
    assert {**first.losses, **second.losses} == full.losses
