"""A GAN in the latents of a frozen autoencoder (`--model gan --set latent=ae-32`, GANConfig.latent): G makes
latents, D judges them, sampling decodes them; trained, resumed, sampled, compressed and planned like any run."""

from __future__ import annotations

import pytest
import torch

import pixelforge
from pixelforge.condition import Cond
from pixelforge.models import OptimConfig
from pixelforge.models.gan import LATENT_STD, GANConfig, GANModel
from pixelforge.runs import BUNDLED_MODELS_DIR

from run_files import assert_holds_ae32, checkpoint_tensors, cli, run_losses  # tests/run_files.py

# what the bundled ae-32 is: 32x32 RGB -> 4 x 8 x 8
AE32 = {"base_channels": 32, "channel_mult": (1, 2, 2), "latent_channels": 4}
RUN = ["--model", "gan", "--batch-size", "16", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
       "--sample-every", "100", "--device", "cpu", "--quiet", "--set", "latent=ae-32", "--set", "base_channels=8",
       "--set", "z_dim=16", "--set", "diffaugment=translation"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Latent GAN runs on the bundled shapes in ae-32's latents: `straight` (4 steps at once) and `r` (2 steps,
    then resumed by the same command to 4)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        runs = tmp_path_factory.mktemp("gan-latent") / "runs"
        cli("train", "shapes", "--name", "straight", "--steps", "4", "--runs-dir", runs, *RUN)
        cli("train", "shapes", "--name", "r", "--steps", "2", "--runs-dir", runs, *RUN)
        out = cli("train", "shapes", "--name", "r", "--steps", "4", "--runs-dir", runs, *RUN)
        assert "resuming" in out and "finished at step 4" in out
        yield runs


def test_a_latent_gan_run_keeps_ae32s_config_and_weights_and_samples_images(runs):
    assert_holds_ae32(runs / "straight")
    assert float(checkpoint_tensors(runs / "straight")["ema/latent_scale"].min()) > 0  # fitted by the first batch, carried by the EMA weights
    g = pixelforge.load(runs / "straight", device="cpu")
    images, _ = g.generate_tensor(3, labels=[0, 1, 2], seed=0)
    assert images.shape == (3, 3, 32, 32) and float(images.abs().max()) <= 1
    assert not torch.equal(images[0], images[1])


def test_a_resumed_latent_gan_run_replays_the_straight_run_exactly(runs):
    assert run_losses(runs / "r") == run_losses(runs / "straight") and len(run_losses(runs / "r")) == 4
    straight, resumed = checkpoint_tensors(runs / "straight"), checkpoint_tensors(runs / "r")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_latent_gan_compresses_to_onnx_with_its_decoder(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    out = cli("compress", runs / "straight", "-o", tmp_path / "onnx", "--export", "onnx", "--device", "cpu")
    assert "onnx-fp32" in out
    want, _ = pixelforge.load(runs / "straight", device="cpu").generate_tensor(2, labels=[3, 4], seed=5)
    got, _ = pixelforge.load(tmp_path / "onnx", device="cpu").generate_tensor(2, labels=[3, 4], seed=5)
    assert got.shape == (2, 3, 32, 32) and torch.allclose(got, want, atol=1e-4)  # the graph decodes, as sampling does


def test_the_first_batch_fixes_each_latent_channels_shift_and_scale_and_only_g_and_d_train():
    cfg = GANConfig(image_size=32, channels=3, num_classes=0, z_dim=8, base_channels=8, diffaugment="translation",
                    autoencoder=AE32)
    model = GANModel(cfg, OptimConfig(lr=1e-3), seed=0)
    frozen = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    later = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert float(model.latent_scale.max()) == 0  # not fitted yet
    model.training_step(x, Cond(), 0)
    latents = model.encode_latents(x)  # (6, 4, 8, 8)
    assert latents.shape == (6, 4, 8, 8)
    assert torch.allclose(latents.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(latents.std(dim=(0, 2, 3)), torch.full((4,), LATENT_STD), rtol=1e-4)
    scale = model.latent_scale.clone()
    model.training_step(later, Cond(), 1)  # fixed from then on
    assert torch.equal(model.latent_scale, scale)
    assert all(torch.equal(v, frozen[k]) for k, v in model.autoencoder.state_dict().items())
    trained = {id(p) for opt in model.optimizers().values() for group in opt.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in model.autoencoder.parameters())
    # sampling decodes G's latents: what the decoder makes of them, shift and scale undone
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.G(z)
        want = model.autoencoder.decode(out / model.latent_scale[:, None, None] + model.latent_shift[:, None, None])
        assert torch.allclose(model.synthesize(z), want)


def test_a_pixel_gan_is_unchanged_by_the_latent_fields():
    cfg = GANConfig(image_size=8, channels=1, num_classes=2, z_dim=8, base_channels=8)
    assert cfg.net_shape == (1, 8, 8) and {"latent", "autoencoder"} <= set(cfg.unused_fields())
    model = GANModel(cfg, seed=0)
    assert model.autoencoder is None and not any("autoencoder" in k or "latent" in k for k in model.state_dict())
    assert model.frozen_parts() == () and model.network_call is GANModel.network_call


def test_latent_gan_settings_that_cannot_work_are_refused_with_their_reason():
    with pytest.raises(ValueError, match="latent 'ae-32': the autoencoder's config is read from that run"):
        GANConfig(latent="ae-32")
    with pytest.raises(ValueError, match="autoencoder image_size 16 differs from the model's 32"):
        GANConfig(image_size=32, autoencoder={**AE32, "image_size": 16})
    with pytest.raises(ValueError, match="the autoencoder's latents are 4 on a side"):
        GANConfig(image_size=16, autoencoder=AE32)  # 16 / 4: too small for G's 4x4 start and one doubling


def test_a_time_budget_plans_a_latent_gan_on_its_latents(tmp_path, pixelforge_cache, monkeypatch):
    from pixelforge.train import budget
    from pixelforge.train.budget import (GAN_AUGMENT_EPOCHS, GAN_SHORT_AUGMENT, GAN_WIDTHS, LATENT_GAN_DEPTH,
                                         LATENT_GAN_MBSTD, StepTiming, describe_plan, plan_run)

    monkeypatch.setattr(budget, "BASE_MODELS", ())  # every width timed: no base GAN to start from
    seen, timed = [], []

    def measure(cfg, candidates, device, **kw):  # records what is timed; a planner needs one timing
        seen.append(cfg.model_config().net_shape)
        timed.append(candidates)
        return [StepTiming(model_fields=dict(c), parameters=1000, points=((16, 0.01), (64, 0.04))) for c in candidates]

    # 10 minutes of these steps are hundreds of passes over the set: a pixel GAN would get the family's full
    # DiffAugment policy, a latent one keeps translation (colour is no colour in latent channels)
    cfg, plan = plan_run("shapes", 10.0, model="gan", device="cpu", progress=False, measure=measure,
                         model_fields={"latent": "ae-32"})
    assert plan.steps * plan.batch_size / plan.n_train >= GAN_AUGMENT_EPOCHS
    assert seen == [(4, 8, 8)] and cfg.model_config().net_shape == (4, 8, 8)
    assert cfg.model["latent"] == str((BUNDLED_MODELS_DIR / "ae-32").resolve())
    assert cfg.model["diffaugment"] == GAN_SHORT_AUGMENT
    # steps cost in proportion to the batch here, as on a CPU: a latent GAN takes the batch of more steps (32), as
    # diffusion does, and a pixel GAN (below) the largest that gets the step floor
    assert plan.batch_size == cfg.train.batch_size == 32
    # a latent GAN's networks have one level: every width is timed, and trained, with more blocks per level, and
    # D with the minibatch standard deviation
    assert timed[0] == [{"base_channels": w, "depth": LATENT_GAN_DEPTH, "mbstd_group": LATENT_GAN_MBSTD}
                        for w in GAN_WIDTHS] and LATENT_GAN_DEPTH > 1 and LATENT_GAN_MBSTD > 1
    assert (cfg.model_config().depth, cfg.model_config().mbstd_group) == (LATENT_GAN_DEPTH, LATENT_GAN_MBSTD)
    assert any(f"GAN base width {cfg.model['base_channels']}, depth {LATENT_GAN_DEPTH}, DiffAugment translation, "
               f"minibatch std over {LATENT_GAN_MBSTD}" in line for line in describe_plan(cfg, plan))
    pixel, pixel_plan = plan_run("shapes", 10.0, model="gan", device="cpu", progress=False, measure=measure,
                                 model_fields={"latent": ""})  # --set latent= : pixels
    assert pixel.model["diffaugment"] == GANConfig.diffaugment != GAN_SHORT_AUGMENT
    assert pixel_plan.batch_size == 64
    assert timed[1] == [{"base_channels": w} for w in GAN_WIDTHS] and pixel.model_config().depth == 1
    assert pixel.model_config().mbstd_group == 0 and not any("minibatch" in line for line in describe_plan(pixel, pixel_plan))
    given, _ = plan_run("shapes", 10.0, model="gan", device="cpu", progress=False, measure=measure,
                        model_fields={"latent": "ae-32", "depth": 2, "mbstd_group": 0})  # a depth or group given wins
    assert {(c["depth"], c["mbstd_group"]) for c in timed[2]} == {(2, 0)}
    assert (given.model_config().depth, given.model_config().mbstd_group) == (2, 0)
    # a latent GAN learns at the budget's rate (LATENT_GAN_LR, twice the family's default), a pixel GAN at the
    # family's, and a rate given wins
    assert cfg.optim.lr == plan.lr == budget.LATENT_GAN_LR == 2 * GANModel.default_lr
    assert any("lr        0.001, warm-up" in line and "a latent GAN's budget rate" in line
               for line in describe_plan(cfg, plan))
    assert pixel.optim.lr == GANModel.default_lr and pixel_plan.lr is None
    lr_given, lr_plan = plan_run("shapes", 10.0, model="gan", device="cpu", progress=False, measure=measure,
                                 model_fields={"latent": "ae-32"}, lr=3e-4)
    assert lr_given.optim.lr == 3e-4 and not any("budget rate" in line for line in describe_plan(lr_given, lr_plan))


def test_a_gan_budget_trains_in_ae32s_latents_where_it_reconstructs_the_images_well(pixelforge_cache):
    from pixelforge.train import budget
    from pixelforge.train.budget import GAN_LATENT, GAN_LATENT_PSNR, StepTiming, describe_plan, plan_run

    shapes, said = [], []

    def measure(cfg, candidates, device, **kw):
        shapes.append(cfg.model_config().net_shape)
        return [StepTiming(model_fields=dict(c), parameters=1000, points=((16, 0.01), (64, 0.04))) for c in candidates]

    def plan(data="shapes", **settings):
        return plan_run(data, 5.0, model="gan", device="cpu", progress=False, measure=measure, say=said.append,
                        **settings)

    # 32x32 RGB shapes with labels, nothing said about latents: ae-32 reconstructs them well, so its latents
    cfg, p = plan()
    assert cfg.model["latent"] == str((BUNDLED_MODELS_DIR / GAN_LATENT).resolve()) and shapes[-1] == (4, 8, 8)
    assert cfg.model_config().depth > 1 and cfg.model["diffaugment"] == "translation"  # the latent plan's
    assert any(f"in the latents of {GAN_LATENT} (--set latent= trains in pixels)" in line for line in describe_plan(cfg, p))
    db = float(said[-1].split(" dB")[0].split()[-1])
    assert db >= GAN_LATENT_PSNR and "trains in its latents" in said[-1]
    # --set latent= (an empty name) keeps pixels; so do images ae-32 does not take and a prompt-conditioned GAN,
    # without reconstructing anything
    for settings in ({"model_fields": {"latent": ""}}, {"image_size": 16}, {"channels": 1}, {"text": True}):
        said.clear()
        cfg, p = plan(**settings)
        assert not cfg.model_config().latent and cfg.model_config().autoencoder is None, settings
        assert shapes[-1][1] == cfg.data.image_size and not said
        assert not any("in the latents" in line for line in describe_plan(cfg, p))
    # images it reconstructs under the bound keep pixels, and it says why
    said.clear()
    original = budget.GAN_LATENT_PSNR
    try:
        budget.GAN_LATENT_PSNR = db + 0.5  # the same shapes, under a bound just above their figure
        cfg, _ = plan()
    finally:
        budget.GAN_LATENT_PSNR = original
    assert not cfg.model_config().latent and f"{db:.1f} dB PSNR (under {db + 0.5:g}): the GAN trains in pixels" in said[-1]


# --- a latent GAN budget run starts from a GAN of the same latents where one fits -------------------------------


def _timings(record: list):
    from pixelforge.train.budget import StepTiming

    def measure(cfg, candidates, device, **kw):
        record.append(candidates)
        return [StepTiming(model_fields=dict(c), parameters=1000, points=((16, 0.01), (64, 0.04))) for c in candidates]
    return measure


def test_a_latent_gan_budget_run_starts_from_a_gan_in_the_same_autoencoders_latents(runs, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from pixelforge.train import budget
    from pixelforge.train.budget import describe_plan, plan_run

    source = runs / "straight"  # 8x8 latents of ae-32, width 8, z 16, depth 1, no minibatch std
    monkeypatch.setattr(budget, "BASE_MODELS", ("no-such-model", str(source)))
    timed = []
    plan = lambda **kw: plan_run("shapes", 5.0, model="gan", device="cpu", progress=False, measure=_timings(timed), **kw)  # noqa: E731
    cfg, p = plan()
    assert p.init_from == str(source)
    assert timed[-1] == [{"base_channels": 8, "depth": 1, "mbstd_group": 0, "z_dim": 16}]  # its network alone
    assert (cfg.model["base_channels"], cfg.model["z_dim"], cfg.model["depth"]) == (8, 16, 1)
    assert any(f"from {source}'s weights (--init-from none" in line for line in describe_plan(cfg, p))
    # from scratch, in pixels, with a width it does not have, or with a prompt: no start
    for settings in ({"init_from": "none"}, {"model_fields": {"latent": ""}}, {"model_fields": {"base_channels": 16}},
                     {"text": True}):
        _, p = plan(**settings)
        assert p.init_from is None, settings
    # the same config in the latents of an autoencoder with other weights: its G's latents would mean nothing there
    exported = tmp_path / "exported"
    cli("export", source, exported)
    weights = load_file(exported / "model.safetensors")
    key = next(k for k in weights if k.startswith("autoencoder.") and weights[k].is_floating_point())
    save_file({**weights, key: weights[key] + 0.01}, exported / "model.safetensors")
    monkeypatch.setattr(budget, "BASE_MODELS", (str(exported),))
    _, p = plan()
    assert p.init_from is None
    save_file(weights, exported / "model.safetensors")  # the very same weights: it fits again
    _, p = plan()
    assert p.init_from == str(exported)


def test_a_gan_started_from_a_gan_of_other_classes_gives_each_class_the_mean_of_the_sources(runs):
    from pixelforge.train import loop

    source = loop.load_weights(runs / "straight")  # 6 classes (shapes)
    cfg = pixelforge.runs.new_run_config("textures", model="gan", image_size=32, channels=3, steps=1,
                                         model_fields={"latent": "ae-32", "base_channels": 8, "z_dim": 16,
                                                       "diffaugment": "translation"})
    model = loop.build_model(cfg, torch.device("cpu"))
    ema = loop.copy.deepcopy(model)
    skipped = loop._init_from(model, ema, str(runs / "straight"))
    state = model.state_dict()
    tables = [k for k in state if k.startswith("G.") and k.endswith(".embed.weight")]  # G's per-class gains and shifts
    assert tables and all(state[k].shape[0] == 3 and source[k].shape[0] == 6 for k in tables)
    for k in tables:
        assert torch.allclose(state[k], source[k].mean(dim=0, keepdim=True).expand_as(state[k]))
        assert torch.equal(ema.state_dict()[k], state[k])
    # D's class projection has no row to start from: it starts fresh and says so; every other weight is the source's
    assert skipped and all(k.startswith("D.embed.") for k in skipped)
    assert all(torch.equal(v, source[k]) for k, v in state.items() if k not in tables and k not in skipped)


def test_the_bundled_gan_base_starts_a_gan_budget_run_on_shapes_and_no_pixel_one(pixelforge_cache):
    from pixelforge.train.budget import BASE_MODELS, plan_run

    timed = []
    plan = lambda **kw: plan_run("shapes", 5.0, model="gan", device="cpu", progress=False, measure=_timings(timed), **kw)  # noqa: E731
    assert "gan-base-32" in BASE_MODELS
    cfg, p = plan()  # shapes reconstruct well in ae-32: latents, and the bundled base in them
    assert p.init_from == "gan-base-32" and cfg.model_config().latent
    assert timed[-1] == [{"base_channels": 64, "depth": 3, "mbstd_group": 4, "z_dim": 128}]
    _, p = plan(model_fields={"latent": ""})
    assert p.init_from is None and len(timed[-1]) > 1
