"""Every bundled model's config.json writes out every field of its family's config, as a run's does,
so a later change of a family default never changes what a shipped model means."""

import dataclasses
import json

import pytest
import torch

import pixelforge
from pixelforge.models import get_family
from pixelforge.train.runs import BUNDLED_MODELS_DIR

BUNDLED = sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def test_there_is_a_bundled_model_to_check():
    assert "mnist-diffusion" in BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_config_holds_every_field_of_its_family_config(name):
    d = json.loads((BUNDLED_MODELS_DIR / name / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(get_family(d["family"]).Config)}
    missing = sorted(fields - set(d["model"]))
    assert not missing, f"{name}/config.json lacks model fields {missing}"
    unknown = sorted(set(d["model"]) - fields)
    assert not unknown, f"{name}/config.json has fields its family does not know: {unknown}"


def test_mnist_diffusion_config_keeps_the_values_it_was_trained_with():
    model = json.loads((BUNDLED_MODELS_DIR / "mnist-diffusion" / "config.json").read_text())["model"]
    # MODEL.md: EDM's noise-level distribution ln(sigma) ~ N(-1.2, 1.2^2), a UNet, EDM's sigma range.
    assert (model["P_mean"], model["P_std"], model["backbone"]) == (-1.2, 1.2, "unet")
    assert (model["sigma_data"], model["sigma_min"], model["sigma_max"]) == (0.5, 0.002, 80.0)


def test_mnist_diffusion_samples_as_before_its_config_was_written_out():
    # Golden sums taken from the shipped weights with the earlier config.json, which named only the
    # fields that differed from the defaults; the full config must rebuild the same sampler.
    g = pixelforge.load("mnist-diffusion", device="cpu")
    x, _ = g.generate_tensor(2, labels=[3, 7], seed=0, steps=4)  # (2, 1, 28, 28); Heun, guidance 2
    assert float(x.double().sum()) == pytest.approx(-628.0824, abs=0.05)
    assert float(x.double().abs().sum()) == pytest.approx(1352.0084, abs=0.05)
    assert not torch.equal(x[0], x[1])
