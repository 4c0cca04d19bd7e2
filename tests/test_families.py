"""The same commands for every model family: train, resume, info, sample, evaluate through the CLI,
then load and generate through the Python API. Each family's own specifications live in its own file;
this one checks that the workflow never asks which family it runs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import pixelforge
from pixelforge.cli import main
from pixelforge.evaluate import evaluate_run
from pixelforge.images import read_settings
from pixelforge.models import FAMILIES
from pixelforge.train import RunConfig
from pixelforge.train.checkpoint import list_checkpoints

from run_files import checkpoint_tensors, cli, run_losses  # tests/run_files.py

# Tiny shapes for 8x8 digits: a few seconds per family on two CPU cores.
TINY = {
    "diffusion": ["--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1"],
    "diffusion-dit": ["--set", "backbone=dit", "--set", "depth=2", "--set", "num_heads=2", "--set", "hidden_size=32"],
    "gan": ["--base-channels", "8"],
    "vae": ["--base-channels", "8"],
    "vqvae": ["--base-channels", "8", "--set", "downsample=2"],
    "pixelcnn": ["--set", "hidden_channels=8", "--set", "num_layers=3"],
    "transformer": ["--set", "stage1_steps=3", "--set", 'vq={"downsample": 2, "codebook_size": 16, "code_dim": 8, '
                    '"base_channels": 8}', "--set", "d_model=32", "--set", "depth=2", "--set", "heads=2"],
    "autoencoder": ["--base-channels", "8", "--channel-mult", "1,2"],
}
UNCONDITIONAL = ("vqvae", "autoencoder")  # first stages: they encode whatever they are given


def test_every_registered_family_is_covered_here():
    assert {entry.split("-")[0] for entry in TINY} == set(FAMILIES)


@pytest.mark.parametrize("entry", list(TINY))
def test_train_resume_info_sample_evaluate_and_the_api(entry, tmp_path, pixelforge_cache, assert_unsaturated):
    family = entry.split("-")[0]
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    common = ["--runs-dir", runs, "--batch-size", "16", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
              "--sample-every", "100", "--device", "cpu", "--quiet"]
    # train 2 of 4 steps (as if interrupted), then the same command resumes to the end
    cli("train", "digits", "--model", family, "--name", "r", "--steps", "2", *common, *TINY[entry])
    cfg = RunConfig.load(run / "config.json")
    assert cfg.family == family and cfg.optim.lr == FAMILIES[family].default_lr
    out = cli("train", "digits", "--model", family, "--name", "r", "--steps", "4", *common)
    assert "resuming" in out and "finished at step 4" in out
    assert list_checkpoints(run / "checkpoints")[-1].stem == "step_0000004"
    losses = [float(r["loss"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["loss"]]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)

    assert f"family:   {family}" in cli("info", "r", "--runs-dir", runs)

    # sample twice with one seed: the same pixels, each PNG carrying its settings (the VQ-VAE alone,
    # a tokeniser, and the autoencoder are unconditional: the transformer and latent diffusion are their priors)
    g = pixelforge.load(run, device="cpu")
    assert g.num_classes == (0 if family in UNCONDITIONAL else 10)
    label = ["--label", "3"] if g.num_classes else []
    for name in ("a", "b"):
        cli("sample", "r", "--runs-dir", runs, "-n", "2", "--seed", "7", *label, "-o", tmp_path / name, "--device", "cpu")
    pngs = sorted(p.name for p in (tmp_path / "a").glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 2
    for name in pngs:
        a, b = Image.open(tmp_path / "a" / name), Image.open(tmp_path / "b" / name)
        assert a.size == (8, 8) and np.array_equal(np.asarray(a), np.asarray(b))
        settings = read_settings(tmp_path / "a" / name)
        assert settings["label"] == (3 if g.num_classes else None) and settings["seed"] in (7, 8)

    figures = json.loads(cli("evaluate", "r", "--runs-dir", runs, "-n", "20", "--json", "--no-report", "--device", "cpu"))
    for key in ("fid", "kid", "precision", "recall"):
        assert math.isfinite(figures[key]), key
    assert figures["n_fake"] == 20
    same = evaluate_run(str(run), n=20, device="cpu", report=False, progress=False)  # the API: the same figures
    assert same["fid"] == pytest.approx(figures["fid"]) and same["kid"] == pytest.approx(figures["kid"])

    labels = [0, 1, 2] if g.num_classes else None
    first, settings = g.generate_tensor(3, labels=labels, seed=11)
    again, _ = g.generate_tensor(3, labels=labels, seed=11)
    assert first.shape == (3, 1, 8, 8) and torch.equal(first, again)
    assert_unsaturated(first)
    assert not torch.equal(first, g.generate_tensor(3, labels=labels, seed=12)[0])  # another seed, other images
    assert set(g.sample_options) == set(FAMILIES[family].sample_options)
    if "log_likelihood" in FAMILIES[family].capabilities:
        x = (first.clamp(-1, 1) * 127.5 + 127.5).round() / 127.5 - 1
        bpd = g.model.log_likelihood(x, None)
        assert bpd.shape == (3,) and bool(torch.isfinite(bpd).all()) and bool((bpd > 0).all())


def test_train_help_states_each_familys_default_learning_rate(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    stated = {}
    for group in text.split("default: the family's (")[1].split(")")[0].split(";"):
        names, rate = group.strip().rsplit(" ", 1)
        stated.update({name.strip(): float(rate) for name in names.split(",")})
    assert stated == {name: cls.default_lr for name, cls in FAMILIES.items()}


# --- text: every family that declares prompts, through the same commands -------------------------

TEXT_ENTRIES = [entry for entry in TINY if "text" in FAMILIES[entry.split("-")[0]].inputs]


# diffusion's in the fast suite; the other families' (15-20 s each on a 2-core CPU) in the slow step
@pytest.mark.parametrize("entry", [e if e == "diffusion" else pytest.param(e, marks=pytest.mark.slow) for e in TEXT_ENTRIES])
def test_a_text_run_resumes_exactly_samples_from_a_prompt_and_regenerates_it(entry, tmp_path, pixelforge_cache):
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    family = entry.split("-")[0]
    runs = tmp_path / "runs"
    common = ["--runs-dir", runs, "--text", "--no-labels", "--image-size", "8", "--batch-size", "8", "--ckpt-every", "2",
              "--val-every", "2", "--log-every", "1", "--sample-every", "100", "--device", "cpu", "--quiet", *TINY[entry]]
    # the same 4 steps straight through, and stopped after 2 then resumed by the same command
    cli("train", "shapes", "--model", family, "--name", "straight", "--steps", "4", *common)
    cli("train", "shapes", "--model", family, "--name", "r", "--steps", "2", *common)
    assert "resuming" in cli("train", "shapes", "--model", family, "--name", "r", "--steps", "4", *common)
    assert run_losses(runs / "r") == run_losses(runs / "straight") and len(run_losses(runs / "r")) == 4
    straight, resumed = checkpoint_tensors(runs / "straight"), checkpoint_tensors(runs / "r")
    assert set(straight) == set(resumed) and any("text" in name for name in straight)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert "text_dim=384" in cli("info", "r", "--runs-dir", runs)

    prompt = "a red circle at the top left on a black background"
    cli("sample", "r", "--runs-dir", runs, "-n", "2", "--seed", "3", "--prompt", prompt, "-o", tmp_path / "a", "--device", "cpu")
    png = tmp_path / "a" / "seed000004.png"
    assert read_settings(png)["prompt"] == prompt
    cli("sample", "--from", png, "--runs-dir", runs, "-o", tmp_path / "again", "--device", "cpu")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "again" / png.name)))

    # the API: prompts per image; a negative prompt where the family has guidance, a clear error where not
    g = pixelforge.load(runs / "r", device="cpu")
    images, settings = g.generate_tensor(2, prompts=[prompt, None], seed=3)
    assert images.shape == (2, 3, 8, 8) and [s["prompt"] for s in settings] == [prompt, None]
    if "guidance" in FAMILIES[family].capabilities:
        _, settings = g.generate_tensor(1, prompt=prompt, negative_prompt="a blue square", guidance=2.0, seed=3)
        assert settings[0]["negative_prompt"] == "a blue square"
    else:
        with pytest.raises(ValueError, match="has no classifier-free guidance"):
            g.generate_tensor(1, prompt=prompt, negative_prompt="a blue square", seed=3)
