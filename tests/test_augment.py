"""Specifications of DiffAugment (models/augment.py) and of its use by the GAN: each transform keeps
shape, dtype and device, lets gradients through, follows its generator alone, changes what the paper
says it changes; the GAN applies it to real and generated images in D's and G's updates, takes R1 on
the un-augmented reals, and refuses a bad policy with one clear line. (That a GAN run with augmentation
resumes exactly is tests/test_gan.py's resume test: it runs with the default policy, all three.)"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch

from pixelforge.condition import Cond
from pixelforge.models import GANConfig, GANModel, OptimConfig
from pixelforge.models import augment
from pixelforge.models.augment import POLICIES, diff_augment, parse_policy

TRANSFORMS = {t.__name__: t for ts in POLICIES.values() for t in ts}  # brightness, ..., cutout
POLICY = "color,translation,cutout"


def images(b: int = 8, c: int = 3, side: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """(b, c, side, side) random images in [-1, 1]."""
    return (torch.rand(b, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1).to(dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- each transform --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_each_transform_keeps_shape_dtype_and_device(name, dtype):
    x = images(dtype=dtype)
    out = TRANSFORMS[name](x, gen(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_lets_gradients_reach_its_input(name):
    x = images().requires_grad_(True)
    # weighted, so that ops which keep an image's mean still pass a gradient on
    (TRANSFORMS[name](x, gen(0)) * torch.linspace(-1, 1, 16)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_is_fixed_by_its_generator_and_differs_across_seeds(name):
    x = images(b=16)
    a, b, c = (TRANSFORMS[name](x, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_transforms_draw_from_their_generator_alone():
    x = images()
    torch.manual_seed(0)
    a = diff_augment(x, POLICY, gen(5))
    torch.manual_seed(1)
    state = torch.get_rng_state()
    b = diff_augment(x, POLICY, gen(5))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_a_random_stream_does_not_depend_on_the_dtype():
    x = images()
    wide = diff_augment(x.double(), "color", gen(3)).float()
    assert torch.allclose(wide, diff_augment(x, "color", gen(3)), atol=1e-6)


def test_color_moves_brightness_saturation_and_contrast_within_the_papers_ranges():
    x = images(b=256, side=8)
    mean = x.mean(dim=(1, 2, 3))
    shift = augment.brightness(x, gen(0)).mean(dim=(1, 2, 3)) - mean  # one offset per image
    assert shift.min() >= -0.5 and shift.max() < 0.5 and shift.max() - shift.min() > 0.8
    spread = x - x.mean(dim=(1, 2, 3), keepdim=True)
    moved = augment.contrast(x, gen(0)) - x.mean(dim=(1, 2, 3), keepdim=True)
    ratio = moved.flatten(1).norm(dim=1) / spread.flatten(1).norm(dim=1)
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() < 1.5 and ratio.max() - ratio.min() > 0.8
    grey = x.mean(dim=1, keepdim=True)
    sat = (augment.saturation(x, gen(0)) - grey).flatten(1).norm(dim=1) / (x - grey).flatten(1).norm(dim=1)
    assert sat.min() >= 0 and sat.max() < 2 and sat.max() - sat.min() > 1.6
    assert torch.allclose(augment.saturation(x, gen(0)).mean(dim=1), x.mean(dim=1), atol=1e-5)  # grey kept


def test_translation_shifts_whole_pixels_by_up_to_an_eighth_of_the_side_with_zero_fill():
    side = 32
    x = images(b=200, c=2, side=side) * 0.5 + 0.75  # no zero pixel in the originals
    out = augment.translation(x, gen(0))
    seen = set()
    for i in range(len(x)):
        # the shift that reproduces image i: every kept pixel equals an original pixel moved by (dy, dx)
        matches = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                   if torch.equal(out[i], torch.roll(x[i], (dy, dx), dims=(1, 2)) * (out[i] != 0))]
        assert len(matches) == 1, i
        dy, dx = matches[0]
        seen.add((dy, dx))
        zero = float((out[i] == 0).all(dim=0).float().mean())  # the uncovered share of the image
        assert zero == pytest.approx(1 - (side - abs(dy)) * (side - abs(dx)) / side**2)
    assert {abs(dy) for dy, _ in seen} == set(range(5)) and {abs(dx) for _, dx in seen} == set(range(5))  # 32 / 8 = 4


def test_cutout_zeroes_a_square_of_half_the_side_in_every_channel_clipped_at_the_borders():
    side = 16
    x = images(b=300, c=3, side=side) * 0.5 + 0.75  # no zero pixel in the originals
    out = augment.cutout(x, gen(0))
    cut = out == 0  # (B, C, H, W)
    assert torch.equal(cut.all(dim=1), cut.any(dim=1))  # all channels or none
    kept = ~cut
    assert torch.equal(out[kept], x[kept])
    share = cut[:, 0].float().mean(dim=(1, 2))  # (B,)
    assert float(share.max()) == pytest.approx(0.25)  # (side/2)^2 of side^2 where the square lies inside
    assert share.min() >= 0.0625 - 1e-6  # a quarter of the square at worst: its centre stays in the image
    for m in cut[:, 0]:  # the cut pixels form a rectangle
        rows, cols = m.any(dim=1).nonzero().flatten(), m.any(dim=0).nonzero().flatten()
        assert m.sum() == len(rows) * len(cols) and len(rows) <= side // 2 and len(cols) <= side // 2


def test_one_channel_images_take_brightness_and_contrast_and_skip_saturation():
    x = images(c=1)
    assert torch.equal(augment.saturation(x, gen(0)), x)
    out = diff_augment(x, POLICY, gen(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    # the same draws as a colour image's: the saturation factor is drawn (and ignored)
    g1, g3 = gen(4), gen(4)
    augment.saturation(x, g1), augment.saturation(images(c=3), g3)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g3))


def test_the_policy_applies_its_transforms_in_order_and_empty_is_the_identity():
    x = images()
    g = gen(7)
    expected = x
    for t in (augment.brightness, augment.saturation, augment.contrast, augment.translation, augment.cutout):
        expected = t(expected, g)
    assert torch.equal(diff_augment(x, POLICY, gen(7)), expected)
    assert diff_augment(x, "", gen(0)) is x
    assert parse_policy(" color , cutout ") == ("color", "cutout") and parse_policy("") == ()


@pytest.mark.parametrize("policy, message", [
    ("color,zoom", r"diffaugment: unknown transform\(s\) 'zoom'; valid: \"\" \(off\) or .*color, translation, cutout"),
    ("color,,cutout", r"unknown transform\(s\) ''"),
    ("color,color", "each transform at most once"),
    (3, "diffaugment must be a string"),
])
def test_a_bad_policy_is_a_value_error_naming_the_field_and_the_valid_values(policy, message):
    with pytest.raises(ValueError, match=message):
        parse_policy(policy)
    with pytest.raises(ValueError, match=message):
        GANConfig(image_size=8, channels=1, base_channels=8, z_dim=8, diffaugment=policy)


# --- in the GAN --------------------------------------------------------------------------------------

TINY = dict(image_size=8, channels=1, base_channels=8, z_dim=8)


def test_the_gan_shows_d_augmented_reals_and_fakes_in_both_updates_and_takes_r1_before_augmentation(monkeypatch):
    """D sees T(real) and T(fake) in its update and T(fake) in G's; R1 is a gradient w.r.t. the un-augmented reals."""
    m = GANModel(GANConfig(**TINY, diffaugment="translation,cutout"), OptimConfig(), seed=0)
    x = images(b=4, c=1, side=8) * 0.5 + 0.75  # no zero pixel: augmented inputs show zeros
    calls, inputs = [], []
    real_augment = augment.diff_augment

    def spy(t, policy, generator):
        calls.append((t.shape[0], t.requires_grad, t.grad_fn is None))
        return real_augment(t, policy, generator)

    monkeypatch.setattr("pixelforge.models.gan.diff_augment", spy)
    forward = m.D.forward
    monkeypatch.setattr(m.D, "forward", lambda x_in, *a, **k: (inputs.append(x_in.detach()), forward(x_in, *a, **k))[1])
    m.training_step(x, Cond(), step=0)  # step 0: an R1 step
    # D's update: reals (a leaf asking for R1's gradient), fakes; then G's update: fakes (with G's graph)
    assert calls == [(4, True, True), (4, False, True), (4, True, False)]
    d_in, g_in = inputs
    assert (d_in[:4] == 0).any() and (d_in[4:] == 0).any() and (g_in == 0).any()
    assert not torch.equal(d_in[:4], x)


def test_with_augmentation_off_the_gan_shows_d_the_images_themselves(monkeypatch):
    m = GANModel(GANConfig(**TINY, diffaugment=""), OptimConfig(), seed=0)
    x = images(b=4, c=1, side=8)
    inputs = []
    forward = m.D.forward
    monkeypatch.setattr(m.D, "forward", lambda x_in, *a, **k: (inputs.append(x_in.detach()), forward(x_in, *a, **k))[1])
    m.training_step(x, Cond(), step=0)
    assert torch.equal(inputs[0][:4], x)


def test_r1_is_taken_through_the_augmentation_with_respect_to_the_un_augmented_reals():
    """With cutout alone, grad_x D(T(x)) is zero on the cut pixels; R1 equals the penalty computed by hand that way."""
    m = GANModel(GANConfig(**TINY, diffaugment="cutout", r1_every=1, r1_gamma=1.0), OptimConfig(), seed=0)
    x = images(b=4, c=1, side=8)
    ref, g = copy.deepcopy(m), torch.Generator().manual_seed(11)  # ref: the same D, spectral-norm vectors included
    m.train_generator.manual_seed(11)
    # replay the D update's draws: G's z, then T(real)'s (then T(fake)'s, which R1 does not see)
    z = ref._z(4, g)
    real = x.clone().requires_grad_(True)
    real_in = diff_augment(real, "cutout", g)
    (grad,) = torch.autograd.grad(ref.D(real_in, None).sum(), real)
    expected = float(grad.square().sum(dim=(1, 2, 3)).mean())
    assert (grad == 0).any()  # the cut square gets no gradient
    figures = m.discriminator_step(x, None, None, 0, r1_now=True)
    assert z.shape == (4, 8) and figures["r1"] == pytest.approx(expected, rel=1e-5)


def test_the_cli_sets_the_policy_and_refuses_a_bad_one_with_one_line_and_exit_2(tmp_path, pixelforge_cache, capsys):
    from pixelforge.cli import main
    runs = tmp_path / "runs"
    base = ["train", "digits", "--model", "gan", "--runs-dir", str(runs), "--steps", "1", "--batch-size", "8",
            "--base-channels", "8", "--device", "cpu", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*base, "--name", "a", "--set", "diffaugment=translation,cutout"]) == 0
    assert json.loads((runs / "a" / "config.json").read_text())["model"]["diffaugment"] == "translation,cutout"
    capsys.readouterr()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*base, "--name", "b", "--set", "diffaugment=color,zoom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diffaugment" in err[0] and "'zoom'" in err[0] and "translation" in err[0], err
    assert not (runs / "b").exists()
