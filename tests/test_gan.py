"""Specifications of the GAN family: sampling and seeds, truncation, hinge/R1 training, projection
discriminator, DiffAugment, save/load, exact resume through the trainer, the CLI."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pixelforge.condition import Cond
from pixelforge.data import DataConfig
from pixelforge.models import FAMILIES, GANConfig, GANModel, OptimConfig
from pixelforge.models.gan import diff_augment
from pixelforge.train import RunConfig, TrainConfig, train
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint

TINY = dict(image_size=8, channels=1, base_channels=8, z_dim=8)


def tiny_model(*, seed: int = 0, optim: OptimConfig | None = None, **changes) -> GANModel:
    return GANModel(GANConfig(**{**TINY, **changes}), optim or OptimConfig(), seed=seed)


@pytest.fixture
def model() -> GANModel:
    return tiny_model(num_classes=10)


def smooth_images(n: int = 16) -> torch.Tensor:
    """n distinct smooth images (n, 1, 8, 8) in [-1, 1]: ramps of different directions and offsets."""
    r = torch.linspace(-1, 1, 8)
    base = torch.stack([r[None, :].expand(8, 8), r[:, None].expand(8, 8)])  # (2, 8, 8)
    images = [(base[i % 2] * (0.5 + 0.05 * i) * (-1) ** (i // 2) + 0.03 * i).clamp(-1, 1) for i in range(n)]
    return torch.stack(images)[:, None]


# --- sampling -------------------------------------------------------------------------------------


def test_sample_has_the_configured_shape_unsaturated_values_and_follows_the_label(model, assert_unsaturated,
                                                                                  randomize_zero_init):
    randomize_zero_init(model)  # the label embedding starts at zero (plain GroupNorm): give it weights
    x = model.sample(3, Cond(labels=torch.tensor([0, 1, 2])), seed=0)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32
    assert_unsaturated(x)
    assert not torch.allclose(x, model.sample(3, Cond(labels=torch.tensor([3, 4, 5])), seed=0), atol=1e-3)


@pytest.mark.parametrize("size, channels", [(16, 3), (28, 1)])  # 28: MNIST's side, the generator starts at 7x7
def test_other_sizes_sample_and_train_unconditionally(size, channels):
    m = tiny_model(image_size=size, channels=channels)
    assert m.sample(2, seed=0).shape == (2, channels, size, size)
    figures = m.training_step(torch.rand(2, channels, size, size) * 2 - 1, Cond(), 0)
    assert torch.isfinite(torch.tensor(figures["d_loss"]))


def test_depth_adds_blocks_at_each_side_and_depth_1_keeps_the_layout_of_old_checkpoints():
    one, three = tiny_model(image_size=16, num_classes=2), tiny_model(image_size=16, num_classes=2, depth=3)
    # 16 -> 4x4 start, 2 levels: G has one block per level at depth 1 and three at depth 3; D as many, plus its last
    assert [len(one.G.blocks), len(three.G.blocks)] == [2, 6] and [len(one.D.blocks), len(three.D.blocks)] == [3, 7]
    assert [b.up for b in three.G.blocks] == [True, False, False] * 2
    assert [b.down for b in three.D.blocks] == [False, False, True] * 2 + [False]
    # depth 1 is the layout checkpoints hold: every G block doubles the side, with a 1x1 shortcut; an extra
    # block keeps its width and its shortcut is the identity
    assert all(b.up and isinstance(b.skip, torch.nn.Conv2d) for b in one.G.blocks)
    assert "G.blocks.1.skip.weight" in one.state_dict() and "G.blocks.1.skip.weight" not in three.state_dict()
    x = three.sample(2, Cond(labels=torch.tensor([0, 1])), seed=0)
    assert x.shape == (2, 1, 16, 16)
    before = {k: v.clone() for k, v in three.state_dict().items() if ".blocks.4." in k}
    figures = three.training_step(torch.rand(4, 1, 16, 16) * 2 - 1, Cond(labels=torch.tensor([0, 1, 0, 1])), 0)
    assert torch.isfinite(torch.tensor(figures["d_loss"]))
    assert any(not torch.equal(v, three.state_dict()[k]) for k, v in before.items())  # the extra blocks train


def test_minibatch_std_is_zero_for_a_group_of_copies_and_keeps_real_and_generated_halves_apart():
    from pixelforge.models.nets.gan_nets import minibatch_std

    h = torch.randn(8, 5, 4, 4)
    out = minibatch_std(h, 4)
    assert out.shape == (8, 1, 4, 4)
    # one value per group of 4 contiguous images, spread over the positions; the two groups differ
    assert torch.equal(out[:4], out[0, 0, 0, 0].expand(4, 1, 4, 4)) and out[0, 0, 0, 0] != out[4, 0, 0, 0]
    expected = h[4:].var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
    assert torch.allclose(out[4, 0, 0, 0], expected)
    copies = h.clone()
    copies[4:] = h[4]  # the second group: four copies of one image, as a collapsed generator makes
    assert float(minibatch_std(copies, 4)[4:].max()) < 1e-3 and torch.equal(minibatch_std(copies, 4)[:4], out[:4])
    # a batch the group does not divide takes the largest group that does: 6 -> groups of 3
    odd = minibatch_std(torch.randn(6, 2, 2, 2), 4)[:, 0, 0, 0]
    assert torch.equal(odd[:3], odd[0].expand(3)) and torch.equal(odd[3:], odd[3].expand(3))


def test_minibatch_std_groups_stay_within_each_part_of_a_batch_the_group_does_not_divide():
    from pixelforge.models.nets.gan_nets import minibatch_std

    # 6 real then 6 generated: one batch of 12 would take groups of 4, and images 4-7 mix the two halves
    h = torch.randn(12, 3, 2, 2)
    whole, halves = minibatch_std(h, 4)[:, 0, 0, 0], minibatch_std(h, 4, parts=2)[:, 0, 0, 0]
    assert torch.equal(whole[4:8], whole[4].expand(4))
    for start in (0, 3, 6, 9):  # with parts=2, groups of 3 inside each half
        assert torch.equal(halves[start : start + 3], halves[start].expand(3))
    assert len(set(halves.tolist())) == 4
    changed = h.clone()
    changed[6:] = torch.randn(6, 3, 2, 2)  # other generated images leave the real half's channel as it was
    assert torch.equal(minibatch_std(changed, 4, parts=2)[:6], minibatch_std(h, 4, parts=2)[:6])
    with pytest.raises(ValueError, match="12 does not split into 5"):
        minibatch_std(h, 4, parts=5)


def test_d_step_on_a_batch_the_group_does_not_divide_keeps_real_and_generated_apart(monkeypatch):
    from pixelforge.models.nets import gan_nets

    model = tiny_model(num_classes=2, mbstd_group=4)
    seen = []
    real_std = gan_nets.minibatch_std
    monkeypatch.setattr(gan_nets, "minibatch_std", lambda h, group, parts=1: seen.append((h.shape[0], parts))
                        or real_std(h, group, parts))
    x, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1] * 3)
    figures = model.training_step(x, Cond(labels=y), 0)
    assert (12, 2) in seen and all(torch.isfinite(torch.tensor(v)) for v in figures.values())


def test_mbstd_group_gives_d_a_channel_that_sees_collapse_and_0_keeps_the_old_layout():
    off, on = tiny_model(num_classes=2), tiny_model(num_classes=2, mbstd_group=4)
    # the last block's first convolution takes one more channel; every other tensor is as before
    assert on.D.blocks[-1].conv1.weight.shape[1] == off.D.blocks[-1].conv1.weight.shape[1] + 1
    changed = {k for k, v in on.state_dict().items() if v.shape != off.state_dict()[k].shape}
    assert set(on.state_dict()) == set(off.state_dict()) and changed
    assert all(k.startswith(f"D.blocks.{len(on.D.blocks) - 1}.conv1.") for k in changed)
    y = torch.tensor([0, 1] * 4)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    collapsed = x.clone()
    collapsed[4:] = x[4]
    # D's logit for an image now depends on the others of its group: not so without the layer
    on.eval(), off.eval()  # no power iteration between the calls compared
    assert not torch.allclose(on.D(x, y)[4], on.D(collapsed, y)[4])
    assert torch.allclose(off.D(x, y)[4], off.D(collapsed, y)[4])
    on.train()
    figures = on.training_step(x, Cond(labels=y), 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in figures.values())


def test_same_seed_gives_the_same_samples_and_another_seed_others(model):
    cond = Cond(labels=torch.tensor([4, 5]))
    a, b, c = model.sample(2, cond, seed=11), model.sample(2, cond, seed=11), model.sample(2, cond, seed=12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("labels", [[3, 1, 4, 1], [-1, -1, 2, -1]])
def test_image_i_of_a_batch_equals_sampling_seed_plus_i_alone(model, labels):
    labels = torch.tensor(labels)
    batch = model.sample(4, Cond(labels=labels), seed=20)
    for i in range(4):
        alone = model.sample(1, Cond(labels=labels[i : i + 1]), seed=20 + i)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-5)


def test_explicit_seeds_match_seed_plus_i_and_must_match_n(model):
    assert torch.equal(model.sample(2, seed=5), model.sample(2, seeds=[5, 6]))
    with pytest.raises(ValueError, match="seeds"):
        model.sample(2, seeds=[1, 2, 3])


def test_a_missing_label_becomes_a_class_drawn_from_the_images_own_seed(model):
    no_label = model.sample(3, seed=7)
    assert torch.equal(no_label, model.sample(3, Cond(labels=torch.full((3,), -1)), seed=7))
    for i in range(3):  # z does not depend on the label, so one class reproduces the image exactly
        per_class = model.sample(10, Cond(labels=torch.arange(10)), seeds=[7 + i] * 10)
        assert any(torch.allclose(no_label[i], per_class[c], atol=1e-6) for c in range(10))


def test_labels_out_of_range_are_refused(model):
    with pytest.raises(ValueError, match="0..9"):
        model.sample(1, Cond(labels=torch.tensor([10])))


def test_truncation_changes_samples_and_small_truncation_reduces_variety(model):
    cond = Cond(labels=torch.full((16,), 3))
    full = model.sample(16, cond, seed=0)
    assert torch.equal(full, model.sample(16, cond, seed=0, truncation=1.0))  # 1: no truncation
    half, tight = model.sample(16, cond, seed=0, truncation=0.5), model.sample(16, cond, seed=0, truncation=0.1)
    assert (half - full).abs().max() > 1e-3
    spread = [float(x.std(dim=0).mean()) for x in (full, half, tight)]
    assert spread[0] > spread[1] > spread[2], spread
    mean_images = model.sample(4, Cond(labels=torch.full((4,), 3)), seed=0, truncation=0.0)
    assert torch.allclose(mean_images, mean_images[:1].expand(4, -1, -1, -1))  # z' = 0: one image per class
    with pytest.raises(ValueError, match="truncation"):
        model.sample(1, truncation=-0.5)


# --- training -------------------------------------------------------------------------------------


def test_training_steps_return_finite_figures_and_change_both_networks(model):
    x = smooth_images(8)
    cond = Cond(labels=torch.arange(8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(3):
        figures = model.training_step(x, cond, step)
        assert set(figures) >= {"loss", "d_loss", "g_loss", "r1", "grad_norm", "d_grad_norm"}
        assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in figures.values())
        assert figures["loss"] == figures["g_loss"]
    after = model.state_dict()
    for net in ("G.", "D."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net)), net


def test_optimisers_take_the_runs_betas_lr_warmup_and_clip():
    m = tiny_model(optim=OptimConfig(lr=1e-3, beta1=0.0, beta2=0.9, warmup_steps=10, grad_clip=0.5))
    opts = m.optimizers()
    assert list(opts) == ["g", "d"]
    assert {id(p) for p in opts["g"].param_groups[0]["params"]} == {id(p) for p in m.G.parameters()}
    assert {id(p) for p in opts["d"].param_groups[0]["params"]} == {id(p) for p in m.D.parameters()}
    m.training_step(smooth_images(4), Cond(), 0)
    for opt in opts.values():
        assert opt.param_groups[0]["betas"] == (0.0, 0.9)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # step 0 of a 10-step warm-up
    assert all(p.grad is None or float(p.grad.norm()) <= 0.5 + 1e-5 for p in m.G.parameters())


def test_d_lr_scale_multiplies_ds_learning_rate_through_the_warm_up_and_leaves_gs():
    optim = OptimConfig(lr=1e-3, warmup_steps=10)
    m = tiny_model(optim=optim, d_lr_scale=4.0)
    opts = m.optimizers()
    for step in (0, 4, 20):
        m.training_step(smooth_images(4), Cond(), step)
        g_lr, d_lr = (opts[k].param_groups[0]["lr"] for k in ("g", "d"))
        assert g_lr == pytest.approx(1e-3 * min(1.0, (step + 1) / 10))
        assert d_lr == pytest.approx(4 * g_lr)
    # the default leaves both alike and adds nothing to the param groups (checkpoints as before)
    plain = tiny_model(optim=optim).optimizers()
    assert all("lr_scale" not in opt.param_groups[0] for opt in plain.values())


def test_r1_penalty_is_positive_on_every_r1_every_th_d_update_only():
    m = tiny_model(r1_every=3)
    x = smooth_images(8)
    r1 = [m.training_step(x, Cond(), step)["r1"] for step in range(7)]
    assert [v > 0 for v in r1] == [True, False, False, True, False, False, True], r1
    m2 = tiny_model(r1_every=2, d_steps=2)  # counts D updates: one of each step's two
    assert all(m2.training_step(x, Cond(), step)["r1"] > 0 for step in range(2))
    off = tiny_model(r1_gamma=0.0)
    assert off.training_step(x, Cond(), 0)["r1"] == 0.0


def test_discriminator_learns_to_tell_a_tiny_fixed_set_from_generated_images():
    """On 16 images D's hinge loss falls below 2, the least a D that cannot tell real from fake can reach."""
    m = tiny_model(diffaugment="", optim=OptimConfig(lr=2e-3, warmup_steps=0))
    x = smooth_images(16)

    def d_loss() -> float:
        return float(m.validation_loss(x, Cond(), torch.Generator().manual_seed(0)).mean())

    start = d_loss()
    for step in range(40):
        m.training_step(x, Cond(), step)
    end = d_loss()
    assert end < min(start, 1.9), (start, end)


def test_training_step_uses_only_the_models_own_random_stream():
    x = smooth_images(4)
    cond = Cond(labels=torch.tensor([0, 1, 2, 3]))
    runs = []
    for global_seed in (0, 1):
        m = tiny_model(num_classes=10, seed=3)
        torch.manual_seed(global_seed)
        runs.append([m.training_step(x, cond, step)["loss"] for step in range(2)])
    assert runs[0] == runs[1]


def test_validation_loss_is_per_sample_and_fixed_by_its_generator(model):
    x, cond = smooth_images(6), Cond(labels=torch.arange(6))
    a = model.validation_loss(x, cond, torch.Generator().manual_seed(1))
    b = model.validation_loss(x, cond, torch.Generator().manual_seed(1))
    assert a.shape == (6,) and torch.equal(a, b)
    assert (a >= 0).all()


# --- networks -------------------------------------------------------------------------------------


def test_projection_discriminator_output_depends_on_the_label(model):
    model.eval()
    x = smooth_images(2)
    d3, d7 = model.D(x, torch.tensor([3, 3])), model.D(x, torch.tensor([7, 7]))
    assert (d3 - d7).abs().min() > 1e-4
    # label -1 ("no label") keeps the unconditional term alone
    assert torch.equal(model.D(x, torch.tensor([-1, -1])), model.D(x, None))


def test_generator_output_depends_on_the_label(model):
    z = torch.randn(2, TINY["z_dim"])
    model.eval()
    with torch.no_grad():  # the per-class gains start at zero: give them a nudge as training would
        for p in model.G.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape) * 0.1)
    assert (model.G(z, torch.tensor([1, 1])) - model.G(z, torch.tensor([8, 8]))).abs().max() > 1e-3


def test_sampling_and_validation_leave_the_spectral_norm_vectors_alone_and_training_moves_them(model):
    def sn_buffers():
        return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("._u", "._v"))}

    before = sn_buffers()
    assert before and all(k.startswith("D.") for k in before)
    model.sample(2, seed=0)
    model.validation_loss(smooth_images(2), Cond(labels=torch.tensor([0, 1])), torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in sn_buffers().items())
    model.training_step(smooth_images(4), Cond(labels=torch.arange(4)), 0)
    assert any(not torch.equal(before[k], v) for k, v in sn_buffers().items())


def test_state_dict_round_trip_through_safetensors_gives_identical_samples(model, tmp_path):
    model.training_step(smooth_images(4), Cond(labels=torch.arange(4)), 0)  # move weights and SN vectors
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = tiny_model(num_classes=10, seed=99)
    cond = Cond(labels=torch.tensor([1, 9]))
    assert not torch.equal(other.sample(2, cond, seed=1), model.sample(2, cond, seed=1))
    other.load_state_dict(load_file(str(path)))
    assert torch.equal(other.sample(2, cond, seed=1), model.sample(2, cond, seed=1))
    x = smooth_images(2)
    assert torch.equal(other.D(x, cond.labels), model.D(x, cond.labels))


# --- DiffAugment ----------------------------------------------------------------------------------


def test_diffaugment_keeps_the_shape_lets_gradients_through_and_follows_its_generator():
    x = smooth_images(4).requires_grad_(True)
    out = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert diff_augment(x, "", torch.Generator()) is x


def test_translation_shifts_by_at_most_one_eighth_and_cutout_zeroes_a_half_side_square():
    x = torch.ones(64, 1, 8, 8)
    shifted = diff_augment(x, "translation", torch.Generator().manual_seed(0))
    zero_rows = (shifted == 0).all(dim=3).sum(dim=(1, 2))
    zero_cols = (shifted == 0).all(dim=2).sum(dim=(1, 2))
    assert zero_rows.max() == 1 and zero_cols.max() == 1 and (zero_rows + zero_cols).min() == 0
    cut = diff_augment(x, "cutout", torch.Generator().manual_seed(0))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at the borders


# --- config and registry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(image_size=9), "image_size"),
        (dict(image_size=6), "image_size"),
        (dict(channels=2), "channels"),
        (dict(diffaugment="color,zoom"), "zoom.*translation"),
        (dict(r1_every=0), "r1_every"),
        (dict(z_dim=10**7), "z_dim"),
        (dict(base_channels=-4), "base_channels"),
        (dict(depth=0), "depth"),
        (dict(mbstd_group=-1), "mbstd_group"),
        (dict(d_lr_scale=0.0), "d_lr_scale"),
        (dict(d_lr_scale=1000.0), "d_lr_scale"),
    ],
)
def test_invalid_config_raises_a_clear_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        GANConfig(**{**TINY, **changes})


def test_unset_betas_are_the_gans_own_and_set_ones_win():
    assert tiny_model().optimizers()["g"].param_groups[0]["betas"] == (0.0, 0.99)
    assert tiny_model(optim=OptimConfig(beta1=0.5)).optimizers()["d"].param_groups[0]["betas"] == (0.5, 0.99)


def test_a_run_folder_keeps_one_set_of_adam_betas_and_old_folders_still_load():
    data = DataConfig(source="digits", image_size=8, channels=1)
    resolved = RunConfig(family="gan", model=dict(TINY), data=data).resolved()
    assert "adam_betas" not in resolved.model and (resolved.optim.beta1, resolved.optim.beta2) == (0.0, 0.99)
    # written before the betas moved: model.adam_betas beside optim betas the GAN ignored
    old = json.loads(resolved.to_json())
    old["model"]["adam_betas"] = [0.1, 0.95]
    old["optim"].update(beta1=0.9, beta2=0.999)
    cfg = RunConfig.from_dict(old)
    assert "adam_betas" not in cfg.model and (cfg.optim.beta1, cfg.optim.beta2) == (0.1, 0.95)
    assert GANModel(cfg.model_config(), cfg.optim).optimizers()["g"].param_groups[0]["betas"] == (0.1, 0.95)


def test_family_registry_offers_the_gan_contract():
    cls = FAMILIES["gan"]
    assert cls is GANModel and cls.Config is GANConfig and cls.family == "gan"
    assert cls.capabilities == () and cls.sample_options == {"truncation": 1.0}
    m = cls(GANConfig(**TINY), OptimConfig(), seed=0)
    assert set(m.optimizers()) == {"g", "d"}
    assert isinstance(m.train_generator, torch.Generator)


# --- through the trainer and the CLI --------------------------------------------------------------


def _run_config() -> RunConfig:
    return RunConfig(
        family="gan",
        model={**TINY, "num_classes": 10},
        data=DataConfig(source="digits", image_size=8, channels=1),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(steps=6, batch_size=16, ckpt_every=3, log_every=1, val_every=3, val_images=32,
                          sample_every=100, sample_count=4),
    )


@pytest.mark.parametrize("d_lr_scale", [1.0, 2.0])
def test_resumed_run_repeats_the_uninterrupted_losses_and_state_exactly(tmp_path, d_lr_scale):
    cfg, cache = _run_config(), tmp_path / "cache"
    cfg.model["d_lr_scale"] = d_lr_scale
    full = train(cfg, tmp_path / "full", device="cpu", progress=False, cache_dir=cache)
    first = train(cfg, tmp_path / "resumed", device="cpu", progress=False, cache_dir=cache, stop_at=3)
    second = train(cfg, tmp_path / "resumed", device="cpu", progress=False, cache_dir=cache)
    assert first.step == 3 and second.step == full.step == 6
    assert {**first.losses, **second.losses} == full.losses
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])
    for part in ("model", "ema", "optim.g", "optim.d"):
        assert set(a[part]) == set(b[part]) and a[part]
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}/{name}"


def test_cli_trains_a_gan_and_samples_pngs(tmp_path, pixelforge_cache):
    from pixelforge.cli import main

    runs, out = tmp_path / "runs", tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "digits", "--model", "gan", "--name", "g", "--runs-dir", str(runs), "--steps", "4",
                     "--batch-size", "16", "--base-channels", "8", "--device", "cpu", "--quiet"]) == 0
        assert main(["sample", "g", "--runs-dir", str(runs), "-n", "3", "-o", str(out), "--device", "cpu"]) == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 3 and (out / "grid.png").is_file()
    with Image.open(pngs[0]) as im:
        assert im.size == (8, 8)
