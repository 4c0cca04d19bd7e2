"""Specifications of the transformer family: a VQ-VAE (stage 1) and a token prior over its codes (stage 2)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.data import DataConfig
from pixelforge.models import FAMILIES, OptimConfig, TokenTransformerModel, TransformerConfig
from pixelforge.models.nets.token_transformer import TokenTransformer
from pixelforge.train import RunConfig, TrainConfig, train
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint

TINY_VQ = {"downsample": 2, "codebook_size": 16, "code_dim": 8, "base_channels": 8}  # 8x8 images -> 4x4 codes
TINY = dict(image_size=8, channels=1, vq=TINY_VQ, stage1_steps=2, d_model=32, depth=2, heads=2, decode_steps=4)
PRIORS = ["autoregressive", "maskgit"]


def tiny_model(*, seed: int = 0, optim: OptimConfig | None = None, **changes) -> TokenTransformerModel:
    return TokenTransformerModel(TransformerConfig(**{**TINY, **changes}), optim or OptimConfig(), seed=seed)


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, Cond]:
    """n smooth 8x8 images in [-1, 1] (ramps of 4 directions) and their labels 0..3."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.linspace(-1, 1, 8)
    ramps = torch.stack([r[None, :].expand(8, 8), r[:, None].expand(8, 8), -r[None, :].expand(8, 8), -r[:, None].expand(8, 8)])
    labels = torch.arange(n) % 4
    x = ramps[labels] * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=gen))
    return x[:, None], Cond(labels=labels)


def trained(prior: str = "autoregressive", *, steps: int = 4, **changes) -> TokenTransformerModel:
    """A model past the stage change (stage1_steps=2), its prior weights made non-trivial."""
    m = tiny_model(prior=prior, num_classes=4, optim=OptimConfig(lr=1e-2, warmup_steps=0), **changes)
    x, cond = batch()
    for step in range(steps):
        m.training_step(x, cond, step)
    with torch.no_grad():  # a random head, so samples depend on codes, labels and seeds
        m.prior.head.weight.copy_(0.3 * torch.randn(m.prior.head.weight.shape, generator=torch.Generator().manual_seed(1)))
    return m


@pytest.fixture(scope="module", params=PRIORS)
def model(request):
    return trained(request.param)


def test_the_family_is_registered():
    assert FAMILIES["transformer"] is TokenTransformerModel
    assert TokenTransformerModel.family == "transformer"
    assert TokenTransformerModel.sample_options == {"temperature": 1.0, "top_k": 0}


# --- the prior network --------------------------------------------------------------------------


def random_prior(causal: bool, randomize_zero_init) -> TokenTransformer:
    torch.manual_seed(0)
    return randomize_zero_init(TokenTransformer(vocab_size=20, num_outputs=16, seq_len=9, d_model=32, depth=2, heads=2, causal=causal))


def test_autoregressive_logits_at_t_do_not_depend_on_later_tokens(randomize_zero_init):
    net = random_prior(True, randomize_zero_init)
    tokens = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = net(tokens)
    for t in range(8):
        changed = tokens.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 20
        other = net(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6)
        assert (other[:, t + 1] - logits[:, t + 1]).abs().max() > 1e-4  # the next position does see it


def test_autoregressive_gradient_reaches_only_earlier_positions(randomize_zero_init):
    net = random_prior(True, randomize_zero_init)
    emb = net.tok_embed(torch.arange(9)[None]).detach().requires_grad_(True)  # (1, 9, D)
    h = emb + net.pos_embed
    for block in net.blocks:
        h = block(h)
    net.head(net.ln_f(h))[0, 4].sum().backward()
    per_position = emb.grad[0].abs().sum(1)
    assert (per_position[:5] > 0).all() and (per_position[5:] == 0).all()


def test_maskgit_prior_is_bidirectional(randomize_zero_init):
    net = random_prior(False, randomize_zero_init)
    tokens = torch.randint(0, 20, (1, 9), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 20
    assert (net(changed)[0, 0] - net(tokens)[0, 0]).abs().max() > 1e-4


def test_cached_decoding_gives_the_full_forward_logits(randomize_zero_init):
    net = random_prior(True, randomize_zero_init)
    tokens = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(1))
    cache = net.new_cache()
    stepwise = torch.cat([net(tokens[:, t : t + 1], cache) for t in range(9)], dim=1)
    torch.testing.assert_close(stepwise, net(tokens), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="seq_len"):
        net(tokens[:, :1], cache)


# --- the two stages -----------------------------------------------------------------------------


@pytest.mark.parametrize("prior", PRIORS)
def test_the_vq_vae_trains_until_stage1_steps_then_only_the_prior(prior):
    m = tiny_model(prior=prior, num_classes=4, stage1_steps=3)
    x, cond = batch()
    snapshot = lambda module: {k: v.clone() for k, v in module.state_dict().items()}  # noqa: E731
    vq0, prior0 = snapshot(m.vq), snapshot(m.prior)
    stages = [m.training_step(x, cond, step)["stage"] for step in range(3)]
    vq1, prior1 = snapshot(m.vq), snapshot(m.prior)
    assert stages == [1.0, 1.0, 1.0] and int(m.stage) == 1
    assert any(not torch.equal(vq0[k], vq1[k]) for k in vq0)
    assert all(torch.equal(prior0[k], prior1[k]) for k in prior0)

    stages = [m.training_step(x, cond, step)["stage"] for step in range(3, 6)]
    vq2, prior2 = snapshot(m.vq), snapshot(m.prior)
    assert stages == [2.0, 2.0, 2.0] and int(m.stage) == 2
    assert all(torch.equal(vq1[k], vq2[k]) for k in vq1), "the VQ-VAE (weights and codebook) is frozen in stage 2"
    assert any(not torch.equal(prior1[k], prior2[k]) for k in prior1 if k.startswith("blocks"))


def test_an_untrained_prior_predicts_uniformly_so_validation_is_vq_loss_plus_log2_k():
    m = tiny_model(num_classes=4)
    x, cond = batch()
    m.training_step(x, cond, 0)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    expected = m.vq.validation_loss(x, Cond(), gen()) + math.log2(16)
    torch.testing.assert_close(m.validation_loss(x, cond, gen()), expected)


@pytest.mark.parametrize("prior", PRIORS)
def test_stage2_training_lowers_the_priors_bits_per_token(prior):
    m = tiny_model(prior=prior, num_classes=4, stage1_steps=20, optim=OptimConfig(lr=3e-3, warmup_steps=0))
    x, cond = batch(32)
    for step in range(20):
        m.training_step(x, cond, step)
    codes = m.encode_codes(x)
    start = m._start_tokens(cond.labels, 32, x.device)

    def bits() -> float:
        with torch.no_grad():
            return float(m.prior_bits(codes, start, torch.Generator().manual_seed(0)).mean())

    before = bits()
    assert before == pytest.approx(math.log2(16), abs=1e-4)
    for step in range(20, 50):
        m.training_step(x, cond, step)
    assert bits() < 0.7 * before


def test_training_uses_only_the_models_own_random_stream():
    x, cond = batch()
    runs = []
    for global_seed in (0, 1):
        m = tiny_model(prior="maskgit", num_classes=4, stage1_steps=1, seed=3)
        torch.manual_seed(global_seed)
        runs.append([m.training_step(x, cond, step)["loss"] for step in range(3)])
    assert runs[0] == runs[1]


# --- sampling -----------------------------------------------------------------------------------


def test_sample_shape_unsaturated_values_and_seeds(model, assert_unsaturated):
    cond = Cond(labels=torch.tensor([0, 1, 2, -1]))
    a = model.sample(4, cond, seed=7)
    assert a.shape == (4, 1, 8, 8) and a.dtype == torch.float32
    assert_unsaturated(a)
    assert torch.equal(a, model.sample(4, cond, seed=7))
    assert torch.equal(a, model.sample(4, cond, seeds=[7, 8, 9, 10]))
    assert not torch.equal(a, model.sample(4, cond, seed=8))
    with pytest.raises(ValueError, match="seeds"):
        model.sample(2, seeds=[1, 2, 3])


def test_image_i_of_a_batch_equals_sampling_it_alone(model):
    labels = torch.tensor([3, 1, -1, 0])
    together = model.sample(4, Cond(labels=labels), seed=20, temperature=1.5)
    for i in range(4):
        alone = model.sample(1, Cond(labels=labels[i : i + 1]), seed=20 + i, temperature=1.5)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-5)


def test_top_k_1_decoding_is_greedy_and_ignores_the_seed():
    m = trained("autoregressive")
    cond = Cond(labels=torch.tensor([2, 2]))
    a = m.sample(2, cond, seed=0, top_k=1)
    assert torch.equal(a[0], a[1])
    assert torch.equal(a, m.sample(2, cond, seed=100, top_k=1))


def test_unconditional_sampling_and_bad_options_are_refused_clearly(model):
    assert model.sample(2, None, seed=0).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        model.sample(1, top_k=-1)


def test_callback_reports_every_decoding_step():
    for prior, total in (("autoregressive", 16), ("maskgit", 4)):
        calls = []
        trained(prior).sample(2, seed=0, callback=lambda i, n: calls.append((i, n)))
        assert calls == [(i, total) for i in range(total)]


# --- weights, configs, the EMA copy -------------------------------------------------------------


def test_save_load_round_trip_gives_the_same_samples(model, tmp_path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    other = TokenTransformerModel(model.config, OptimConfig(), seed=99)
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    assert int(other.stage) == 2
    cond = Cond(labels=torch.tensor([1, -1]))
    assert torch.equal(other.sample(2, cond, seed=3), model.sample(2, cond, seed=3))


def test_an_ema_copy_decodes_with_the_frozen_vq_vae_not_its_average(model):
    # The trainer's EMA averages parameters (so its VQ-VAE weights drift from the frozen ones) but copies
    # buffers exactly; the frozen copy in the buffers is what sampling and validation use.
    ema = TokenTransformerModel(model.config, OptimConfig(), seed=0)
    ema.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in ema.vq.parameters():
            p.add_(0.1)
    x, cond = batch(4)
    assert torch.equal(ema.sample(3, seed=1), model.sample(3, seed=1))
    torch.testing.assert_close(ema.validation_loss(x, cond, torch.Generator().manual_seed(0)),
                               model.validation_loss(x, cond, torch.Generator().manual_seed(0)))


def test_config_round_trips_through_json_and_fills_the_vq_shape():
    cfg = TransformerConfig(**TINY)
    again = TransformerConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg and hash(again) == hash(cfg)
    assert (cfg.vq.image_size, cfg.vq.channels, cfg.vq.codebook_size) == (8, 1, 16)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prior": "diffusion"}, "autoregressive, maskgit"),
        ({"vq": {"downsample": 2, "codebooks": 3}}, "codebook_size"),
        ({"vq": {"image_size": 16}}, "image_size"),
        ({"vq": {"downsample": 3}}, "power of 2"),
        ({"d_model": 30, "heads": 4}, "divisible"),
        ({"label_dropout": 1.0}, "label_dropout"),
        ({"stage1_steps": -1}, "stage1_steps"),
    ],
)
def test_invalid_configs_are_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**TINY, **changes})


# --- through the trainer and the CLI -------------------------------------------------------------


def test_training_resumes_exactly_across_the_stage_change(tmp_path):
    cfg = RunConfig(
        family="transformer",
        model={**TINY, "num_classes": 10, "stage1_steps": 3},
        data=DataConfig(source="digits", image_size=8, channels=1),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(steps=6, batch_size=16, ckpt_every=3, log_every=1, val_every=3, val_images=32,
                          sample_every=100, sample_count=4),
    )

    def run(name, **kwargs):
        return train(cfg, tmp_path / name, device="cpu", progress=False, cache_dir=tmp_path / "cache", **kwargs)

    full = run("full")
    # metrics.csv logs the rate each stage used: the VQ-VAE's warm-up to step 3, then the prior's from 0.
    logged = [float(r["lr"]) for r in csv.DictReader((tmp_path / "full" / "metrics.csv").open()) if r.get("lr")]
    assert logged == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4, 1e-3, 1e-3])
    first = run("resumed", stop_at=4)
    parts, _ = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])
    assert int(parts["model"]["stage"]) == 2 and "optim.prior" in parts
    second = run("resumed")
    assert (first.step, second.step) == (4, 6)
    assert sorted(second.losses) == [4, 5]
    assert {**first.losses, **second.losses} == full.losses
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}/{name}"


def test_cli_trains_both_stages_and_samples(tmp_path, pixelforge_cache):
    runs, out = tmp_path / "runs", tmp_path / "out"
    sets = ["stage1_steps=3", f"vq={json.dumps(TINY_VQ)}", "d_model=32", "depth=2", "heads=2"]
    args = ["train", "digits", "--model", "transformer", "--name", "t", "--runs-dir", str(runs), "--steps", "6",
            "--batch-size", "16", "--quiet", "--sample-every", "100", "--val-every", "3"]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    assert main(["sample", "t", "--runs-dir", str(runs), "-n", "2", "-o", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and "grid.png" in pngs
