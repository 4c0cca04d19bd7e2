"""Specifications of the condition contract (Cond), the helpers the families share, and what every
family declares: the conditions it takes, its sampling options' ranges, and weights seeded without
touching torch's global random state."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import NO_LABEL, Cond, no_labels
from pixelforge.models import FAMILIES, DiffusionConfig, DiffusionModel
from pixelforge.models.common import check_seeds, inverse_cdf_sample
from pixelforge.models.options import OptionSpec

B, T, D = 6, 3, 4


def full_cond(b: int = B) -> Cond:
    """A Cond with every field given, each with distinct non-empty values."""
    g = torch.Generator().manual_seed(0)
    return Cond(
        labels=torch.arange(b),
        text=torch.randn(b, D, generator=g),
        text_tokens=torch.randn(b, T, D, generator=g),
        text_mask=torch.ones(b, T, dtype=torch.bool),
        spatial=torch.randn(b, 2, 5, 5, generator=g),
        audio=torch.randn(b, 7, D, generator=g),  # per-frame form (B, F, D)
    )


FIELDS = [f.name for f in dataclasses.fields(Cond)]


def test_a_full_cond_gives_every_declared_field_and_present_defaults_to_all_true():
    c = full_cond()
    assert c.given_fields() == tuple(FIELDS)
    assert len(c) == B and c.present.dtype == torch.bool and bool(c.present.all())
    assert len(Cond()) == 0 and Cond().given_fields() == ()
    assert Cond(labels=torch.tensor([1, 2])).given_fields() == ("labels",)  # labels need no presence flag


def test_index_cat_and_to_apply_to_every_field():
    c = full_cond()
    idx = torch.tensor([4, 0, 2])
    sub = c.index(idx)
    back = Cond.cat([c.index(slice(0, 2)), c.index(slice(2, B))])
    moved = c.to("meta")
    for name in FIELDS:
        assert torch.equal(getattr(sub, name), getattr(c, name)[idx]), name
        assert torch.equal(getattr(back, name), getattr(c, name)), name
        assert getattr(moved, name).device.type == "meta", name
    assert len(sub) == 3 and len(back) == B


def test_empty_sets_each_field_to_its_declared_empty_value():
    e = full_cond().empty()
    assert torch.equal(e.labels, torch.full((B,), NO_LABEL))
    for name in ("text", "text_tokens", "spatial", "audio"):
        assert not getattr(e, name).any(), name
    assert not e.text_mask.any() and not e.present.any()
    assert torch.equal(e.labels, no_labels(B))


def test_drop_empties_all_fields_of_the_same_samples():
    c = full_cond(64)
    d = c.drop(0.5, torch.Generator().manual_seed(1))
    dropped = d.labels == NO_LABEL
    assert 0 < int(dropped.sum()) < 64
    assert torch.equal(d.present, ~dropped) and torch.equal(d.text_mask.any(1), ~dropped)
    for name in ("text", "text_tokens", "spatial", "audio"):
        value, kept = getattr(d, name), getattr(c, name)
        assert not value[dropped].any() and torch.equal(value[~dropped], kept[~dropped]), name


def test_drop_is_deterministic_for_a_generator_and_drops_the_given_share():
    c = Cond(labels=torch.zeros(20000, dtype=torch.long))
    a = c.drop(0.3, torch.Generator().manual_seed(5))
    b = c.drop(0.3, torch.Generator().manual_seed(5))
    other = c.drop(0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.labels, other.labels)
    share = float((a.labels == NO_LABEL).float().mean())
    assert abs(share - 0.3) < 0.015  # ~5 standard deviations of a binomial share at n = 20000


def test_drop_with_p_0_or_nothing_given_draws_nothing():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    c = full_cond()
    assert c.drop(0.0, g) is c and Cond().drop(0.5, g).given_fields() == ()
    assert torch.equal(g.get_state(), state)  # a family's training stream is not advanced


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=torch.zeros(3, dtype=torch.long), text=torch.zeros(4, D)), "batch size"),
    (dict(labels=torch.zeros(3, 1, dtype=torch.long)), "Cond.labels must have shape (B)"),
    (dict(text_tokens=torch.zeros(3, T, D)), "text_mask go together"),
    (dict(spatial=torch.zeros(3, 5, 5)), "Cond.spatial must have shape (B, C, H, W)"),
    (dict(labels=torch.zeros(3)), "Cond.labels must be"),
    (dict(labels=[1, 2]), "Cond.labels must be a tensor"),
])
def test_an_inconsistent_cond_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Cond(**kwargs)


def test_cat_of_conds_with_different_fields_is_refused():
    with pytest.raises(ValueError, match="different fields"):
        Cond.cat([Cond(labels=torch.zeros(2, dtype=torch.long)), Cond()])


def test_drop_refuses_a_share_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        full_cond().drop(1.5, torch.Generator())


def test_guidance_contrasts_the_labels_with_the_generic_empty_condition(randomize_zero_init):
    model = randomize_zero_init(DiffusionModel(DiffusionConfig(image_size=8, channels=1, num_classes=10, base_channels=8,
                                                               channel_mult=(1, 2), num_res_blocks=1)))
    model.eval()
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(3, 1, 8, 8, generator=g), torch.full((3,), 2.0)
    cond = Cond(labels=torch.tensor([1, 4, 7]))
    with torch.no_grad():
        d_cond = model.denoise(x, sigma, cond)
        d_uncond = model.denoise(x, sigma, Cond(labels=no_labels(3)))
        guided = model.guided_denoiser(3.0)(x, sigma, cond)
    assert not torch.allclose(d_cond, d_uncond)  # the label matters, so the check below can fail
    assert torch.allclose(guided, d_uncond + 3.0 * (d_cond - d_uncond), atol=1e-5)


# --- shared helpers --------------------------------------------------------------------------------


def test_check_seeds_defaults_to_seed_plus_i_and_refuses_a_wrong_count():
    assert check_seeds(3, 10, None) == [10, 11, 12] and check_seeds(2, 0, (7, 9)) == [7, 9]
    with pytest.raises(ValueError, match="3 seeds given for 2 images"):
        check_seeds(2, 0, [1, 2, 3])


def test_inverse_cdf_sample_equals_counting_the_cdf_entries_at_or_below_u():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 256, generator=g) * 3, dim=-1)
    u = torch.rand(500, generator=g)
    reference = (probs.cumsum(-1) <= u[:, None]).sum(-1).clamp(max=255)  # the form PixelCNN used
    assert torch.equal(inverse_cdf_sample(probs, u), reference)


def test_inverse_cdf_sample_with_scaled_u_never_draws_a_zero_probability_entry():
    probs = torch.tensor([[0.5, 0.49, 0.0]] * 3)  # the row sums short of 1, as after rounding
    u = torch.tensor([0.0, 0.6, 0.999])
    assert inverse_cdf_sample(probs, u, scale_u=True).tolist() == [0, 1, 1]
    assert inverse_cdf_sample(probs, u).tolist() == [0, 1, 2]  # unscaled u past the total mass reaches the end


# --- what every family declares --------------------------------------------------------------------

TINY = {
    "diffusion": dict(image_size=8, channels=1, num_classes=10, base_channels=8, channel_mult=(1, 2), num_res_blocks=1),
    "diffusion-dit": dict(image_size=8, channels=1, num_classes=10, backbone="dit", depth=1, num_heads=2, hidden_size=16),
    "gan": dict(image_size=8, channels=1, num_classes=10, base_channels=8, z_dim=8),
    "vae": dict(image_size=8, channels=1, num_classes=10, base_channels=8, channel_mult=(1, 2), latent_dim=4),
    "vqvae": dict(image_size=8, channels=1, base_channels=8, downsample=2, codebook_size=16, code_dim=4),
    "pixelcnn": dict(image_size=8, channels=1, num_classes=10, hidden_channels=8, num_layers=2),
    "transformer": dict(image_size=8, channels=1, num_classes=10, d_model=16, depth=1, heads=2,
                        vq={"downsample": 2, "codebook_size": 16, "code_dim": 4, "base_channels": 8}),
    "autoencoder": dict(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), latent_channels=2),
}
# sha256 (first 16 hex digits) of each tiny model's state dict at seed 0, taken before weight
# initialisation stopped reseeding the global generator: the initial weights must not change.
# Spectral norm's power-iteration vectors (the GAN's u and v) come from 15 matrix products at construction, whose
# last bits differ between CPUs (their kernels sum in another order); the weights drawn are compared bit for bit.
POWER_ITERATION = ("._u", "._v")
WEIGHTS_SHA256 = {
    "diffusion": "6125e330a7f2b7b7", "diffusion-dit": "46e6c3ab5ed6e918", "gan": "8eb4ba4dd84fbe29",
    "vae": "af695f5dd3fba1ec", "vqvae": "7535c04b0fb2309f", "pixelcnn": "634548fa5fd68c44",
    "transformer": "79698d3519049397", "autoencoder": "d9851ba8c1f6c6a3",
}


def test_every_family_is_covered_here():
    assert {entry.split("-")[0] for entry in TINY} == set(FAMILIES)


def _build(entry: str):
    cls = FAMILIES[entry.split("-")[0]]
    return cls(cls.Config(**TINY[entry]), seed=0)


@pytest.mark.parametrize("entry", list(TINY))
def test_building_a_family_leaves_the_global_random_state_unchanged(entry):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _build(entry)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("entry", list(TINY))
def test_seed_0_gives_the_same_initial_weights_as_before(entry):
    h = hashlib.sha256()
    for name, value in sorted(_build(entry).state_dict().items()):
        if name.endswith(POWER_ITERATION):
            continue
        h.update(name.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    assert h.hexdigest()[:16] == WEIGHTS_SHA256[entry]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_declares_its_inputs_and_option_specs(family):
    cls = FAMILIES[family]
    cond_fields = {f.name for f in dataclasses.fields(Cond)}
    assert isinstance(cls.inputs, tuple) and set(cls.inputs) <= cond_fields
    assert all(isinstance(s, OptionSpec) for s in cls.option_specs)
    assert cls.sample_options == {s.name: s.default for s in cls.option_specs}
    for spec in cls.option_specs:
        if spec.kind != "choice":
            assert spec.min is not None and spec.max is not None, spec.name  # every number has a declared range
    if "guidance" in cls.sample_options:
        assert "guidance" in cls.capabilities


def test_option_spec_refuses_a_default_outside_its_own_range():
    with pytest.raises(ValueError, match="steps must be an integer in \\[1, 200\\], got 0"):
        OptionSpec("steps", "int", 0, min=1, max=200)


@pytest.fixture(scope="module")
def bundled():
    return pixelforge.load(device="cpu")


@pytest.mark.parametrize("options, message", [
    ({"guidance": math.nan}, "guidance must be a finite number in [0, 20], got nan"),
    ({"guidance": math.inf}, "guidance must be a finite number in [0, 20], got inf"),
    ({"guidance": 20.5}, "guidance must be a finite number in [0, 20]"),
    ({"steps": 0}, "steps must be an integer in [1, 200], got 0"),
    ({"steps": 2.5}, "steps must be an integer in [1, 200]"),
    ({"steps": True}, "steps must be an integer"),
    ({"sampler": "rk45"}, "sampler must be one of: "),
    ({"guidance": "2"}, "guidance must be a finite number"),
])
def test_resolve_options_refuses_values_outside_the_family_declaration(bundled, options, message):
    with pytest.raises(ValueError) as e:
        bundled.resolve_options(**options)
    assert message in str(e.value)


def test_resolve_options_keeps_valid_values_typed_as_declared(bundled):
    opts = bundled.resolve_options(steps=4.0, guidance=2)
    assert opts["steps"] == 4 and isinstance(opts["steps"], int)
    assert opts["guidance"] == 2.0 and isinstance(opts["guidance"], float)


def test_a_run_default_outside_the_declared_range_is_refused_naming_the_file(bundled, tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "run_dir", tmp_path)
    (tmp_path / "sample_defaults.json").write_text('{"guidance": -1}')
    with pytest.raises(ValueError, match="sample_defaults.json: sampling option guidance must be"):
        bundled.sample_options


@pytest.mark.parametrize("flags, message", [
    # --option NAME=VALUE reaches the API unchecked by the command line's own option types
    (["--option", "guidance=NaN"], "guidance must be a finite number"),
    (["--option", "guidance=Infinity"], "guidance must be a finite number"),
    (["--option", "steps=0"], "steps must be an integer in [1, 200]"),
    (["--option", "schedule=linear-ish"], "schedule must be one of"),
])
def test_the_cli_refuses_bad_sampling_options_through_the_api(flags, message, tmp_path, capsys):
    code = main(["sample", "-n", "1", "-o", str(tmp_path / "out"), "--device", "cpu", *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_condition_the_model_does_not_take_is_refused_naming_what_it_takes(bundled, monkeypatch):
    assert bundled.inputs == ("labels",)
    monkeypatch.setattr(bundled.model, "takes", lambda: ())
    with pytest.raises(ValueError, match="is unconditional: it takes no labels"):
        bundled.generate(1, label=3)
    monkeypatch.setattr(bundled.model, "takes", lambda: ("text",))
    with pytest.raises(ValueError, match="takes no labels; the conditions it takes: text"):
        bundled.generate(1, label=3)
