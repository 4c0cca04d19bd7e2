"""Image editing (img2img and inpainting) with the bundled diffusion model: the API, the schedule it starts
from, and the `pixelforge edit` command with good and hostile input files."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import pixelforge
from pixelforge.cli import main
from pixelforge.images import read_settings
from pixelforge.sampling import karras_sigmas, truncate_sigmas

STEPS = 4  # Heun: 7 network evaluations an image; enough to tell the behaviours apart


@pytest.fixture(scope="module")
def g():
    return pixelforge.load("mnist-diffusion", device="cpu")


@pytest.fixture(scope="module")
def digit(g) -> Image.Image:
    """A 28x28 grayscale digit (a 3) drawn by the model itself: something the edits can be compared to."""
    (im,) = g.generate(1, label=3, seed=11, steps=8)
    return im.copy()


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float64)


def _left_half_mask() -> Image.Image:
    mask = Image.new("L", (28, 28), 0)
    mask.paste(255, (0, 0, 14, 28))  # white: repaint the left half
    return mask


# --- the schedule an edit starts from --------------------------------------------------------------


@pytest.mark.parametrize("strength, kept", [(1.0, 10), (0.5, 5), (0.25, 2), (0.04, 0), (0.0, 0)])
def test_truncated_schedule_keeps_the_last_strength_share_of_the_steps(strength, kept):
    full = karras_sigmas(10)
    tail = truncate_sigmas(full, strength)
    assert len(tail) == kept + 1 and torch.equal(tail, full[len(full) - kept - 1:])
    assert tail[-1] == 0 and bool((tail[:-1] > tail[1:]).all())


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_truncated_schedule_refuses_a_strength_outside_0_1(strength):
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        truncate_sigmas(karras_sigmas(10), strength)


# --- the API ---------------------------------------------------------------------------------------


def test_strength_0_returns_the_input_within_quantisation(g, digit):
    (out,) = g.edit(digit, strength=0.0, steps=STEPS, seed=3)
    assert np.abs(_px(out) - _px(digit)).max() <= 1


def test_an_rgb_input_is_converted_to_the_models_grayscale(g):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB")
    (out,) = g.edit(rgb, strength=0.0, steps=STEPS)
    assert out.mode == "L" and np.abs(_px(out) - _px(rgb.convert("L"))).max() <= 1


def test_inpainting_keeps_the_unmasked_pixels_and_repaints_the_masked_ones(g, digit):
    for extra in ({}, {"resample": 2, "sampler": "ancestral"}):
        (out,) = g.edit(digit, mask=_left_half_mask(), strength=1.0, steps=STEPS, seed=0, label=7, **extra)
        change = np.abs(_px(out) - _px(digit))
        assert change[:, 14:].max() <= 1, extra  # kept: the right half
        assert change[:, :14].mean() > 10, extra  # repainted: the left half (a mean change of 10 grey levels)


def test_a_grey_mask_is_binarised_at_half(g, digit):
    mask = Image.new("L", (28, 28), 100)  # below half: kept
    mask.paste(200, (0, 0, 14, 28))  # above half: repainted
    (out,) = g.edit(digit, mask=mask, strength=1.0, steps=STEPS, seed=0, label=7)
    change = np.abs(_px(out) - _px(digit))
    assert change[:, 14:].max() <= 1 and change[:, :14].mean() > 10


def test_higher_strength_changes_the_input_more(g, digit):
    seeds = list(range(4))
    changes = []
    for strength in (0.25, 0.5, 0.75, 1.0):
        outs = g.edit([digit] * len(seeds), strength=strength, steps=8, seeds=seeds)
        changes.append(np.mean([np.abs(_px(o) - _px(digit)).mean() for o in outs]))
    assert all(a < b for a, b in zip(changes, changes[1:])), changes


def test_an_edit_depends_on_its_seed_alone(g, digit):
    pair = g.edit([digit, digit], strength=0.7, steps=STEPS, seed=5)
    (alone,) = g.edit(digit, strength=0.7, steps=STEPS, seeds=[6])
    (again,) = g.edit(digit, strength=0.7, steps=STEPS, seed=5)
    assert np.array_equal(_px(pair[1]), _px(alone)) and np.array_equal(_px(pair[0]), _px(again))
    assert not np.array_equal(_px(pair[0]), _px(pair[1]))


def test_the_label_steers_the_edit_and_is_recorded(g, digit):
    (as3,) = g.edit(digit, strength=0.9, steps=STEPS, seed=0, label=3)
    (as7,) = g.edit(digit, strength=0.9, steps=STEPS, seed=0, label=7)
    assert np.abs(_px(as3) - _px(as7)).mean() > 5
    assert as7.info["pixelforge"]["label"] == 7
    with pytest.raises(ValueError, match=r"label 12 out of range; valid labels are 0..9"):
        g.edit(digit, label=12, steps=STEPS)


def test_a_condition_the_model_does_not_take_is_a_clear_error(g, digit):
    with pytest.raises(ValueError, match="mnist-diffusion takes no text; the conditions it takes: labels"):
        g.edit(digit, prompt="a seven", steps=STEPS)


def test_the_settings_record_the_strength_and_the_inputs_hashes(g, digit, tmp_path):
    digit.save(tmp_path / "in.png")
    _left_half_mask().save(tmp_path / "mask.png")
    (plain,) = g.edit(tmp_path / "in.png", strength=0.3, steps=STEPS)
    (painted,) = g.edit(tmp_path / "in.png", mask=tmp_path / "mask.png", strength=1.0, resample=2, steps=STEPS)
    sha = {name: _pixels_sha256(tmp_path / name) for name in ("in.png", "mask.png")}
    s = plain.info["pixelforge"]
    assert (s["strength"], s["image_sha256"], s["mask_sha256"], s["steps"]) == (0.3, sha["in.png"], None, STEPS)
    assert (s["image"], s["mask"]) == (f"image-{sha['in.png'][:16]}.png", None)  # the name of the input's copy
    assert "resample" not in s  # only inpainting resamples
    s = painted.info["pixelforge"]
    assert (s["strength"], s["image_sha256"], s["mask_sha256"], s["resample"]) == (1.0, sha["in.png"], sha["mask.png"], 2)
    assert s["mask"] == f"mask-{sha['mask.png'][:16]}.png"
    # an upload (the file's bytes) and a PIL image record the hash of the same pixels as the file
    (from_bytes,) = g.edit((tmp_path / "in.png").read_bytes(), strength=0.3, steps=STEPS)
    (from_pil,) = g.edit(Image.open(tmp_path / "in.png"), strength=0.3, steps=STEPS)
    assert from_bytes.info["pixelforge"]["image_sha256"] == from_pil.info["pixelforge"]["image_sha256"] == sha["in.png"]


def _pixels_sha256(path) -> str:
    """The SHA-256 of an image file's decoded pixels (mode, size, bytes), computed here independently."""
    im = Image.open(path)
    im.load()
    return hashlib.sha256(f"{im.mode} {im.size}\n".encode() + im.tobytes()).hexdigest()


def test_without_a_strength_an_edit_takes_the_familys_declared_default(g, digit, monkeypatch):
    import dataclasses

    specs = tuple(dataclasses.replace(s, default=0.35) if s.name == "strength" else s for s in g.model.edit_option_specs)
    monkeypatch.setattr(type(g.model), "edit_option_specs", specs)  # a family declaring another default
    (out,) = g.edit(digit, steps=STEPS, seed=3)
    (same,) = g.edit(digit, strength=0.35, steps=STEPS, seed=3)
    assert out.info["pixelforge"]["strength"] == 0.35
    assert np.array_equal(_px(out), _px(same))


@pytest.mark.parametrize("kwargs, message", [
    ({"strength": 1.5}, r"strength must be a finite number in \[0, 1\]"),
    ({"resample": 0}, r"resample must be an integer in \[1, 20\]"),
    ({"temperature": 0.5}, "diffusion models take no option temperature"),
])
def test_bad_edit_options_name_the_option_and_its_range(g, digit, kwargs, message):
    with pytest.raises(ValueError, match=message):
        g.edit(digit, steps=STEPS, **kwargs)


def _untrained_run(folder, family: str, model: dict, source: str, channels: int, randomize=None):
    """A run folder (config.json, model.safetensors) of a freshly built model, without training it;
    randomize: gives the zero-initialised layers random weights, so the output depends on the condition."""
    from safetensors.torch import save_file

    from pixelforge.data import DataConfig
    from pixelforge.runs.config import RunConfig, build_model

    cfg = RunConfig(family=family, model=model,
                    data=DataConfig(source=source, image_size=model["image_size"], channels=channels)).resolved()
    folder.mkdir()
    (folder / "config.json").write_text(cfg.to_json())
    net = build_model(cfg, torch.device("cpu"))
    if randomize is not None:
        randomize(net)
    save_file(net.state_dict(), str(folder / "model.safetensors"))
    return folder


def test_a_family_that_cannot_edit_says_so(tmp_path, digit):
    from pixelforge.models import FAMILIES

    for name, cls in FAMILIES.items():  # the capability is declared with what it needs
        assert ("edit" in cls.capabilities) == hasattr(cls, "edit") == hasattr(cls, "edit_option_specs"), name
    run = _untrained_run(tmp_path / "gan", "gan", {"image_size": 8, "channels": 1, "z_dim": 8, "base_channels": 8},
                         "digits", 1)
    with pytest.raises(ValueError, match="^gan models cannot edit images$"):
        pixelforge.load(run, device="cpu").edit(digit)


AUTOENCODERS = {
    "vae": {"image_size": 8, "channels": 1, "base_channels": 8, "channel_mult": [1, 2], "latent_dim": 8},
    "vqvae": {"image_size": 8, "channels": 1, "base_channels": 8, "downsample": 2, "codebook_size": 16,
              "code_dim": 4},
}


def _randomize_vq_prior(net) -> None:
    """A VQ-VAE's prior is uniform until it is trained: give it a skewed one, so redrawn codes differ."""
    if hasattr(net, "code_frequencies"):
        g = torch.Generator().manual_seed(0)
        net.code_frequencies.copy_(torch.rand(net.code_frequencies.shape, generator=g) ** 4)


@pytest.mark.parametrize("family", sorted(AUTOENCODERS))
def test_an_autoencoder_family_edits_by_encode_decode(family, tmp_path, digit):
    """VAE and VQ-VAE edit in their latents: strength 0 returns the input exactly, a higher strength changes
    it more, an edit depends on its seed alone, and a mask keeps every pixel outside it."""
    run = _untrained_run(tmp_path / family, family, AUTOENCODERS[family], "digits", 1, randomize=_randomize_vq_prior)
    g = pixelforge.load(run, device="cpu")
    src = digit.resize((8, 8))
    (same,) = g.edit(src, strength=0.0, watermark=False)
    assert np.array_equal(_px(same), _px(src))
    diffs = [np.abs(_px(g.edit(src, strength=s, seed=3, watermark=False)[0]) - _px(src)).mean() for s in (0.3, 1.0)]
    assert 0 < diffs[0] < diffs[1], diffs
    a, b, c = (g.edit(src, strength=0.8, seed=s, watermark=False)[0] for s in (5, 5, 6))
    assert np.array_equal(_px(a), _px(b)) and not np.array_equal(_px(a), _px(c))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))  # the left half is repainted
    (painted,) = g.edit(src, mask=mask, strength=1.0, seed=3, watermark=False)
    assert np.array_equal(_px(painted)[:, 4:], _px(src)[:, 4:])
    assert not np.array_equal(_px(painted)[:, :4], _px(src)[:, :4])


def test_a_prompt_and_a_negative_prompt_steer_the_edit_of_a_text_model(tmp_path, randomize_zero_init):
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    model = {"image_size": 8, "channels": 3, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
             "text_encoder": "all-MiniLM-L6-v2", "text_dim": 384, "text_tokens": 8}
    run = _untrained_run(tmp_path / "text", "diffusion", model, "shapes", 3, lambda net: randomize_zero_init(net, std=0.3))
    g = pixelforge.load(run, device="cpu")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    common = {"strength": 0.8, "steps": STEPS, "seed": 0, "guidance": 3.0}
    # an untrained network: the prompts change the output a little, where ignoring them would change nothing
    star, square = (g.edit_tensor(image, prompt=p, **common)[0] for p in ("a red star", "a blue square"))
    steered, (s,) = g.edit_tensor(image, prompt="a red star", negative_prompt="a blue square", **common)
    assert (star - square).abs().mean() > 1e-3 and (star - steered).abs().mean() > 1e-3
    assert (s["prompt"], s["negative_prompt"], s["guidance"]) == ("a red star", "a blue square", 3.0)


# --- the command -----------------------------------------------------------------------------------


def _edit(*flags: str) -> int:
    return main(["edit", "mnist-diffusion", "--steps", str(STEPS), "--device", "cpu", *flags])


def test_edit_command_writes_pngs_with_their_settings_and_warns_about_the_size(digit, tmp_path, capsys, monkeypatch):
    big = digit.convert("RGB").resize((40, 40), Image.Resampling.LANCZOS)  # another size and another mode
    big.save(tmp_path / "in.png")
    _left_half_mask().resize((56, 56), Image.Resampling.NEAREST).save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    assert _edit("--image", "in.png", "--mask", "mask.png", "--strength", "1", "--label", "7", "-n", "2") == 0
    err = capsys.readouterr().err
    assert "warning: image in.png is 40x40: resized to the model's 28x28" in err
    assert "warning: mask mask.png is 56x56" in err
    (out,) = (tmp_path / "out" / "mnist-diffusion").iterdir()  # a fresh out/RUN/TIMESTAMP folder
    s = read_settings(out / "edit-seed000001-label7.png")
    # the input's and the mask's lossless copies, once for both edits, beside them
    assert sorted(p.name for p in out.iterdir()) == sorted(["edit-seed000000-label7.png", "edit-seed000001-label7.png",
                                                            "grid.png", s["image"], s["mask"]])
    assert s["seed"] == 1 and s["strength"] == 1.0 and s["label"] == 7
    assert s["image_sha256"] == _pixels_sha256(tmp_path / "in.png")
    assert s["mask_sha256"] == _pixels_sha256(tmp_path / "mask.png")
    fitted = big.resize((28, 28), Image.Resampling.LANCZOS).convert("L")  # what the model was given
    kept = np.abs(_px(Image.open(out / "edit-seed000000-label7.png")) - _px(fitted))
    assert kept[:, 14:].max() <= 1


def _edit_then_replay(tmp_path, capsys, digit, *flags: str) -> tuple:
    """`pixelforge edit` of the digit (written as an RGB JPEG of another size: lossy, another mode), then
    `sample --from` of each output: (the edit's folder, [(original, regenerated) PNG paths])."""
    digit.convert("RGB").resize((40, 40), Image.Resampling.LANCZOS).save(tmp_path / "in.jpg", quality=80)
    out = tmp_path / "out"
    assert _edit("--image", str(tmp_path / "in.jpg"), "--label", "7", "-n", "2", "-o", str(out), *flags) == 0
    assert "is 40x40: resized to the model's 28x28" in capsys.readouterr().err
    pairs = []
    for png in sorted(out.glob("edit-seed*.png")):
        again = tmp_path / f"again-{png.stem}"
        assert main(["sample", "--from", str(png), "-o", str(again), "--device", "cpu"]) == 0
        assert "is 40x40: resized to the model's 28x28" in capsys.readouterr().err  # the copy is the input as given
        (regenerated,) = again.glob("seed*.png")  # beside it, the copies of its inputs again
        pairs.append((png, regenerated))
    return out, pairs


def test_sample_from_replays_an_img2img_edit_pixel_for_pixel(digit, tmp_path, capsys):
    out, pairs = _edit_then_replay(tmp_path, capsys, digit, "--strength", "0.6")
    s = read_settings(pairs[0][0])
    assert sorted(p.name for p in out.glob("image-*.png")) == [s["image"]]  # one copy for both edits
    assert Image.open(out / s["image"]).size == (40, 40)  # the input as given, before fitting
    assert len(pairs) == 2
    for png, regenerated in pairs:
        assert np.array_equal(_px(Image.open(png)), _px(Image.open(regenerated))), png
        assert read_settings(regenerated)["image_sha256"] == read_settings(png)["image_sha256"]
    assert not np.array_equal(_px(Image.open(pairs[0][0])), _px(Image.open(pairs[1][0])))  # two seeds, two images


def test_sample_from_replays_an_inpainting_pixel_for_pixel(digit, tmp_path, capsys):
    _left_half_mask().save(tmp_path / "mask.png")
    out, pairs = _edit_then_replay(tmp_path, capsys, digit, "--mask", str(tmp_path / "mask.png"), "--strength", "1",
                                   "--option", "resample=2")
    s = read_settings(pairs[0][0])
    assert (out / s["mask"]).is_file() and s["resample"] == 2
    for png, regenerated in pairs:
        assert np.array_equal(_px(Image.open(png)), _px(Image.open(regenerated))), png
        again = read_settings(regenerated)
        assert (again["mask_sha256"], again["resample"], again["strength"]) == (s["mask_sha256"], 2, 1.0)


@pytest.mark.parametrize("kind", ["image", "mask"])
@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_missing_or_changed_input_copy_is_one_clear_error(kind, damage, digit, tmp_path, capsys):
    digit.save(tmp_path / "in.png")
    _left_half_mask().save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert _edit("--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "-o", str(out)) == 0
    png = out / "edit-seed000000.png"
    copy = out / read_settings(png)[kind]
    if damage == "missing":
        copy.unlink()
        expected = f"which is not beside it at {copy}"
    else:
        Image.new("L", (28, 28), 255).save(copy)
        expected = f"{copy} is not the {kind} {png} was made from: its SHA-256 differs from the recorded one"
    capsys.readouterr()
    assert main(["sample", "--from", str(png), "-o", str(tmp_path / "again"), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "again").exists()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A small PNG whose header claims 20000 x 20000 pixels (400 million)."""
    data = _png(Image.new("L", (8, 8), 0))
    ihdr = struct.pack(">II", 20000, 20000) + data[24:29]  # width, height, then depth, colour type, ...
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def _noise_png() -> bytes:
    return _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L"))


HOSTILE = {
    "zero-byte": (lambda: b"", "zero-byte file"),
    "truncated": (lambda: _noise_png()[:400], "truncated image"),
    "not an image": (lambda: b"just some text, not pixels\n" * 10, "not an image or unsupported format"),
    "bomb": (_bomb, "decompression bomb"),
}


@pytest.mark.parametrize("flag", ["--image", "--mask"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_file_is_one_error_line_and_exit_2(kind, flag, digit, tmp_path, capsys):
    make, reason = HOSTILE[kind]
    (tmp_path / "bad.png").write_bytes(make())
    digit.save(tmp_path / "in.png")
    files = {"--image": str(tmp_path / "in.png"), "--mask": None, flag: str(tmp_path / "bad.png")}
    args = [a for f, path in files.items() if path is not None for a in (f, path)]
    assert _edit(*args, "-o", str(tmp_path / "out")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    what = flag.lstrip("-")
    expected = f"pixelforge edit: error: {what} {tmp_path / 'bad.png'}: {reason}"
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "out").exists()


def test_edit_command_takes_the_edit_options_as_option_too(digit, tmp_path):
    digit.save(tmp_path / "in.png")
    assert _edit("--image", str(tmp_path / "in.png"), "--option", "strength=0", "-o", str(tmp_path / "out")) == 0
    out = tmp_path / "out" / "edit-seed000000.png"
    assert read_settings(out)["strength"] == 0.0 and np.abs(_px(Image.open(out)) - _px(digit)).max() <= 1


def test_post_processing_an_edit_copies_its_inputs_so_sample_from_replays_it(digit, tmp_path):
    digit.save(tmp_path / "in.png")
    _left_half_mask().save(tmp_path / "mask.png")
    assert _edit("--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "-o", str(tmp_path / "out")) == 0
    assert main(["post", str(tmp_path / "out" / "edit-seed000000.png"), "--sharpen", "-o", str(tmp_path / "post")]) == 0
    s = read_settings(tmp_path / "post" / "edit-seed000000.png")
    assert (tmp_path / "post" / s["image"]).is_file() and (tmp_path / "post" / s["mask"]).is_file()
    assert main(["sample", "--from", str(tmp_path / "post" / "edit-seed000000.png"), "-o", str(tmp_path / "again"),
                 "--device", "cpu"]) == 0
    (again,) = (tmp_path / "again").glob("seed*.png")
    assert np.array_equal(_px(Image.open(again)), _px(Image.open(tmp_path / "post" / "edit-seed000000.png")))
