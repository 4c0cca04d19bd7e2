"""Text prompts end to end on the diffusion family: train on captions, sample with a prompt, regenerate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")

from pixelforge.cli import main  # noqa: E402

TINY_TEXT = ["--text", "--no-labels", "--steps", "4", "--batch-size", "8", "--image-size", "16", "--base-channels", "8",
             "--channel-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "8", "--val-every", "4",
             "--ckpt-every", "4", "--sample-every", "4", "--log-every", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def text_run(text_runs, tmp_path_factory):
    """conftest's tiny text run "st", with a data cache of this module's own while its tests run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield text_runs


def _sample(runs, out, *flags):
    return main(["sample", "st", "--runs-dir", str(runs), "-n", "2", "--steps", "3", "--device", "cpu", "-o", str(out), *flags])


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_a_text_run_samples_from_a_prompt_and_its_png_regenerates_exactly(text_run, tmp_path):
    from pixelforge.images import read_settings

    assert _sample(text_run, tmp_path / "a", "--prompt", "a large blue star at the top right on a black background") == 0
    settings = read_settings(tmp_path / "a" / "seed000000.png")
    assert settings["prompt"] == "a large blue star at the top right on a black background"
    assert main(["sample", "--from", str(tmp_path / "a" / "seed000000.png"), "--runs-dir", str(text_run),
                 "-o", str(tmp_path / "again"), "--device", "cpu"]) == 0
    assert np.array_equal(_pixels(tmp_path / "a" / "seed000000.png"), _pixels(tmp_path / "again" / "seed000000.png"))


def test_the_prompt_and_the_negative_prompt_steer_the_samples(text_run, tmp_path):
    import torch

    import pixelforge

    g = pixelforge.load("st", runs_dir=text_run, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 4 steps leave the zero-initialised output layers near zero: make the prompt matter
        for p in g.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    red = g.generate_tensor(1, prompt="a red circle", steps=3)[0]
    blue = g.generate_tensor(1, prompt="a blue square on the left", steps=3)[0]
    assert (red - blue).abs().max() > 1e-3
    guided = g.generate_tensor(1, prompt="a red circle", steps=3, guidance=3.0)[0]
    negative = g.generate_tensor(1, prompt="a red circle", negative_prompt="a blue square", steps=3, guidance=3.0)[0]
    assert (guided - negative).abs().max() > 1e-3
    # no prompt at all: the unconditional model, the same as an explicit empty condition every time
    assert (g.generate_tensor(1, steps=3)[0] - red).abs().max() > 1e-3


def test_a_prompt_for_a_label_only_model_and_a_label_for_a_text_only_model_are_clear_errors(text_run, tmp_path, capsys):
    code = main(["sample", "mnist-diffusion", "-n", "1", "--prompt", "a seven", "--steps", "2", "-o", str(tmp_path / "x")])
    assert code == 2 and "takes no text; the conditions it takes: labels" in capsys.readouterr().err
    assert _sample(text_run, tmp_path / "y", "--label", "2") == 2
    assert "takes no labels; the conditions it takes: text" in capsys.readouterr().err


def test_training_with_text_on_data_without_captions_is_a_clear_error(tmp_path, pixelforge_cache, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    code = main(["train", str(folder), "--name", "nocap", "--runs-dir", str(tmp_path / "runs"), *TINY_TEXT])
    assert code == 2 and "has no captions" in capsys.readouterr().err


def test_demo_of_a_text_model_draws_one_row_per_demo_prompt(text_run, tmp_path):
    from pixelforge.cli_demo import DEMO_PROMPTS
    from pixelforge.images import read_settings

    assert main(["demo", "--model", str(text_run / "st"), "--per-class", "2", "--steps", "2", "--device", "cpu",
                 "-o", str(tmp_path / "demo")]) == 0
    pngs = sorted((tmp_path / "demo").glob("seed*.png"))
    assert [read_settings(p)["prompt"] for p in pngs] == [p for p in DEMO_PROMPTS for _ in range(2)]
    assert Image.open(tmp_path / "demo" / "grid.png").size[1] > Image.open(tmp_path / "demo" / "grid.png").size[0]


@pytest.mark.slow  # trains and resumes a text run: ~22 s
def test_a_whitened_text_run_fits_its_whitening_to_the_captions_and_a_resume_keeps_it(tmp_path, pixelforge_cache):
    """--set text_whiten=true: the conditioner's whitening comes from the training captions at the start
    (not the identity it is built with), is saved with the weights, and a resumed run continues with it."""
    from safetensors.torch import load_file

    from pixelforge.condition.text import caption_embeddings, load_text_encoder
    from pixelforge.data.bundled import load_bundled

    runs = tmp_path / "runs"
    args = ["train", "shapes", "--name", "w", "--runs-dir", str(runs), *TINY_TEXT, "--set", "text_whiten=true"]
    assert main(args) == 0
    ckpts = sorted((runs / "w" / "checkpoints").glob("*.safetensors"))
    first = load_file(str(ckpts[-1]))
    mean = first["model/text_cond.pooled_mean"]
    shapes = load_bundled("shapes")  # every wording trains: the captions, then each image's variants
    wordings = list(shapes.captions) + [v for more in shapes.caption_variants or [] for v in more]
    expected = caption_embeddings(wordings, load_text_encoder(max_tokens=32)).pooled.mean(0)
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-4)
    assert not torch.equal(first["model/text_cond.token_whiten"], torch.eye(mean.shape[0]))
    steps = args.index("--steps")
    assert main(args[: steps + 1] + ["8"] + args[steps + 2:]) == 0  # resumed from step 4
    last = load_file(str(sorted((runs / "w" / "checkpoints").glob("*.safetensors"))[-1]))
    assert torch.equal(last["model/text_cond.pooled_whiten"], first["model/text_cond.pooled_whiten"])


def test_each_training_step_draws_one_wording_per_image_the_same_for_any_batch_split():
    """TrainingConditions: image i's text is one of its wordings (caption or variant), drawn from (seed, step)
    alone, so a resumed run or another split of the batch draws the same; an image without variants
    always gets its caption."""
    from pixelforge.train.conditions import TrainingConditions

    conds = TrainingConditions.__new__(TrainingConditions)
    conds.text = object()  # only its presence matters to the draw
    # image 0: caption row 0 and variants 3, 4; image 1: caption only; image 2: caption 2 and variant 5
    conds.wordings = torch.tensor([[0, 3, 4], [1, 1, 1], [2, 5, 2]])
    conds.counts = torch.tensor([3, 1, 2])
    idx = torch.tensor([0, 1, 2])
    draws = torch.stack([conds._drawn_wording(idx, step, seed=0) for step in range(200)])  # (200, 3)
    assert set(draws[:, 0].tolist()) == {0, 3, 4} and set(draws[:, 1].tolist()) == {1} and set(draws[:, 2].tolist()) == {2, 5}
    assert 40 < int((draws[:, 0] == 3).sum()) < 100  # about a third
    assert torch.equal(conds._drawn_wording(idx[2:], 17, seed=0), draws[17, 2:])  # any split of the batch
    assert not torch.equal(torch.stack([conds._drawn_wording(idx, s, seed=1) for s in range(200)]), draws)
