"""Text conditioning in the GAN, VAE, PixelCNN and token transformer: the prompt's pooled vector steers
each of them, the absent prompt is what cond=None means, guidance and negative prompts work where the
family has guidance, and models without text draw exactly the weights they drew before text existed.

Prompts here are random embeddings of a made-up width: the families never see the encoder itself
(tests/test_families.py and tests/test_text_conditioning.py run the real one end to end)."""

from __future__ import annotations

import pytest
import torch

from pixelforge.condition import Cond
from pixelforge.models import FAMILIES

TEXT_DIM = 12
TINY = {
    "gan": dict(image_size=8, channels=1, base_channels=8),
    "vae": dict(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2)),
    "pixelcnn": dict(image_size=8, channels=1, hidden_channels=8, num_layers=2),
    "transformer": dict(image_size=8, channels=1, vq={"downsample": 2, "codebook_size": 16, "code_dim": 8, "base_channels": 8},
                        d_model=16, depth=1, heads=2),
}
TEXT = dict(text_encoder="some-encoder", text_dim=TEXT_DIM, text_tokens=4)
# How far the weights are moved: the prior's logits need a larger push before a draw of 16 codes changes.
NOISE = {"gan": 0.05, "vae": 0.05, "pixelcnn": 0.05, "transformer": 0.5}


def text_model(family: str, **extra):
    cls = FAMILIES[family]
    model = cls(cls.Config(**TINY[family], **TEXT, **extra), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised output and conditioning layers would hide the prompt: wake them
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * NOISE[family])
    return model


def prompts(n: int, seed: int) -> Cond:
    gen = torch.Generator().manual_seed(seed)
    pooled = torch.nn.functional.normalize(torch.randn(n, TEXT_DIM, generator=gen), dim=1)
    return Cond(text=pooled, text_tokens=torch.randn(n, 4, TEXT_DIM, generator=gen), text_mask=torch.ones(n, 4, dtype=torch.bool))


def test_every_family_with_a_generator_declares_text_and_the_first_stages_do_not():
    # the VQ-VAE tokeniser and the autoencoder of latent diffusion encode whatever they are given
    assert {name for name, cls in FAMILIES.items() if "text" in cls.inputs} == set(FAMILIES) - {"vqvae", "autoencoder"}


@pytest.mark.parametrize("family", list(TINY))
def test_the_prompt_changes_the_samples_and_no_prompt_is_the_absent_prompt(family):
    model = text_model(family)
    assert model.takes() == ("text",)
    a, b = model.sample(2, prompts(2, 1), seed=5), model.sample(2, prompts(2, 2), seed=5)
    assert a.shape == (2, 1, 8, 8)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, model.sample(2, prompts(2, 1), seed=5))  # seeded
    none = model.sample(2, None, seed=5)
    assert (none - a).abs().max() > 1e-3
    assert torch.equal(none, model.sample(2, prompts(2, 1).empty(), seed=5))  # cond=None: the empty prompt


@pytest.mark.parametrize("family", list(TINY))
def test_with_attention_pooling_the_prompts_tokens_steer_the_samples(family):
    """text_pool "attention": the vector also takes the tokens, so two prompts with the same sentence
    vector and different tokens give different samples (with "mean" they give the same)."""
    same_pooled = prompts(2, 1)
    other_tokens = Cond(text=same_pooled.text, text_tokens=prompts(2, 2).text_tokens, text_mask=same_pooled.text_mask)
    for pool, differs in (("mean", False), ("attention", True)):
        model = text_model(family, text_pool=pool)
        with torch.no_grad():  # the pooled tokens are unit vectors: give them weight enough to change a draw
            for m in model.modules():
                if getattr(m, "pool_vector", None) is not None:
                    m.pool_vector[0].weight.mul_(20)
        a, b = model.sample(2, same_pooled, seed=5), model.sample(2, other_tokens, seed=5)
        assert bool((a - b).abs().max() > 1e-3) == differs, (pool, float((a - b).abs().max()))


@pytest.mark.parametrize("family", list(TINY))
def test_a_text_model_trains_and_its_training_sees_the_prompt(family):
    model = text_model(family, **({"stage1_steps": 0} if family == "transformer" else {}))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("text_")}
    assert before  # the conditioner is built
    figures = model.training_step(x, prompts(4, 3), 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in figures.values())
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, "no text conditioner weight was updated"
    val = model.validation_loss(x, prompts(4, 3), torch.Generator().manual_seed(0))
    other = model.validation_loss(x, prompts(4, 4), torch.Generator().manual_seed(0))
    assert val.shape == (4,) and (val - other).abs().max() > 0


@pytest.mark.parametrize("family", list(TINY))
def test_training_drops_prompts_with_the_familys_dropout_setting(family):
    """With dropout near 1 every prompt of the batch is dropped (seeded: checked for this seed), so two
    different batches of prompts give the same training figures; with none they differ."""
    setting = "text_dropout" if family == "gan" else "label_dropout"
    extra = {"stage1_steps": 0} if family == "transformer" else {}
    x = torch.rand(4, 1, 8, 8) * 2 - 1

    def loss(p: float, seed: int) -> float:
        return text_model(family, **extra, **{setting: p}).training_step(x, prompts(4, seed), 0)["loss"]

    assert loss(0.999, 1) == loss(0.999, 2)
    assert loss(0.0, 1) != loss(0.0, 2)


@pytest.mark.parametrize("family", list(TINY))
def test_a_prompt_of_the_wrong_width_is_a_clear_error(family):
    model = text_model(family)
    with pytest.raises(ValueError, match=f"this model takes \\(2, {TEXT_DIM}\\)"):
        model.sample(2, Cond(text=torch.zeros(2, TEXT_DIM + 1)), seed=0)


def test_text_fields_are_checked_together_in_every_family():
    for family in TINY:
        with pytest.raises(ValueError, match="text_encoder and text_dim go together"):
            FAMILIES[family].Config(**TINY[family], text_dim=8)
        with pytest.raises(ValueError, match="text_dim must be in 0..4096"):
            FAMILIES[family].Config(**TINY[family], text_encoder="e", text_dim=5000)
        with pytest.raises(ValueError, match="text_pool must be one of mean, attention"):
            FAMILIES[family].Config(**TINY[family], **TEXT, text_pool="max")


def test_pixelcnn_guides_on_the_prompt_and_steers_away_from_a_negative_prompt():
    model = text_model("pixelcnn")
    cond, negative = prompts(2, 1), prompts(2, 9)
    plain = model.sample(2, cond, seed=3)
    guided = model.sample(2, cond, seed=3, guidance=4.0)
    steered = model.sample(2, cond, seed=3, guidance=4.0, negative=negative)
    assert (plain - guided).abs().max() > 1e-3 and (guided - steered).abs().max() > 1e-3
    # the sampling cache gives the slow reference's images, guided and with a negative prompt too
    assert torch.equal(steered, model.sample_full_recompute(2, cond, seed=3, guidance=4.0, negative=negative))
    # guidance with no prompt has nothing to contrast: the unguided absent-prompt images
    assert torch.equal(model.sample(2, None, seed=3, guidance=4.0), model.sample(2, None, seed=3))


def test_pixelcnn_guidance_with_labels_and_a_prompt_drops_both_in_the_unconditional_half():
    model = text_model("pixelcnn", num_classes=3)
    assert model.takes() == ("labels", "text")
    cond = Cond(labels=torch.tensor([0, 2]), text=prompts(2, 1).text)
    guided = model.sample(2, cond, seed=3, guidance=3.0)
    assert torch.equal(guided, model.sample_full_recompute(2, cond, seed=3, guidance=3.0))
    assert (guided - model.sample(2, cond, seed=3)).abs().max() > 1e-3


def test_gan_prompt_dropout_is_its_own_setting_and_is_checked():
    with pytest.raises(ValueError, match="text_dropout must be in"):
        FAMILIES["gan"].Config(**TINY["gan"], **TEXT, text_dropout=1.0)
    assert "text_dropout" in FAMILIES["gan"].Config(**TINY["gan"]).unused_fields()


# Sums of |weights| of models without text, seed 3, as drawn before any family took text: building the
# text conditioner only when text_dim > 0 keeps every label and unconditional model's weights.
WEIGHTS_BEFORE_TEXT = {
    ("gan", 0): 1912.321681572652, ("gan", 10): 2045.8275796256733,  # without u and v (below)
    ("vae", 0): 2285.185188301789, ("vae", 10): 3123.022462884809,
    ("pixelcnn", 0): 389.9597088486139, ("pixelcnn", 10): 569.7690190247376,
    ("transformer", 0): 1279.9867224164104, ("transformer", 10): 1281.5111665259924,
}


@pytest.mark.parametrize("family, num_classes", list(WEIGHTS_BEFORE_TEXT))
def test_models_without_text_draw_the_weights_they_drew_before_text(family, num_classes):
    model = FAMILIES[family](FAMILIES[family].Config(**TINY[family], num_classes=num_classes), seed=3)
    state = model.state_dict()
    assert not any("text" in name for name in state)
    # spectral norm's power-iteration vectors (the GAN's u and v) differ in their last bits between CPUs: left out
    total = sum(float(v.double().abs().sum()) for k, v in state.items()
                if v.is_floating_point() and not k.endswith(("._u", "._v")))
    assert total == pytest.approx(WEIGHTS_BEFORE_TEXT[family, num_classes], rel=1e-12)
