"""Specifications of the generated-image detector: `pixelforge detector train`, `pixelforge detect` and
pixelforge.provenance.detector, on tiny settings (the bundled 8x8 digits against folders of noise)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.cli import main
from pixelforge.provenance import detector as D
from pixelforge.provenance.watermark import embed

TINY = {"size": 16, "widths": (8, 16), "steps": 80, "batch_size": 32, "lr": 3e-3, "per_source": 60}


@pytest.fixture(autouse=True)
def _isolated(pixelforge_cache):
    """Every test here prepares data under its own temporary $PIXELFORGE_CACHE."""


def _noise_folder(path, n: int, *, seed: int, value: int | None = None, side: int = 12):
    """n PNGs of uniform RGB noise (or a flat `value`), side x side."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (side, side, 3), dtype=np.uint8) if value is None else np.full((side, side, 3), value, np.uint8)
        Image.fromarray(arr, "RGB").save(path / f"img{i:03d}.png")
    return path


@pytest.fixture(scope="module")
def noise_detector(tmp_path_factory):
    """A detector trained on bundled digits (real) against a folder of noise (generated, family "noise")."""
    root = tmp_path_factory.mktemp("det")
    noise = _noise_folder(root / "noise", 60, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        cfg = D.TrainDetectorConfig(real=("digits",), fake=(f"family=noise:{noise}",), **TINY)
        result = D.train_detector(cfg, root / "detector", device="cpu", progress=False)
    return result, root


# --- training and the AUC --------------------------------------------------------------------------------------


def test_roc_auc_matches_scikit_learn_on_scores_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float) + 0.7, rng.integers(0, 6, 55).astype(float)
    ours = D.roc_auc(pos, neg)
    theirs = roc_auc_score(np.r_[np.ones(40), np.zeros(55)], np.r_[pos, neg])
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert D.roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_two_images_with_different_logits_never_tie_in_the_auc():
    # a confident classifier: logits near 20, where a float32 sigmoid is exactly 1.0 for both images
    net = D.DetectorNet(D.DetectorConfig(size=8, widths=(4,)))
    with torch.no_grad():
        net.head.weight.fill_(1.0)
        net.head.bias.fill_(20.0)
    det = D.Detector(net, D.DetectorConfig(size=8, widths=(4,)), {}, device="cpu")
    images = [Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))]
    logits = det.logit(images)
    assert logits.dtype == np.float64 and logits[0] != logits[1] and logits.min() > 17
    assert torch.sigmoid(torch.from_numpy(logits).float()).tolist() == [1.0, 1.0]  # what ties used to come from
    hi, lo = (1, 0) if logits[1] > logits[0] else (0, 1)
    assert D.roc_auc(logits[[hi]], logits[[lo]]) == 1.0 and D.roc_auc(logits[[lo]], logits[[hi]]) == 0.0
    p = det.probability(images)
    assert p.dtype == np.float64 and p[hi] > p[lo] and p.max() < 1.0


def test_the_classifier_separates_digits_from_noise_on_held_out_images(noise_detector):
    result, _ = noise_detector
    card = result.card
    by_source = {r["source"]: r for r in card["sources"]}
    noise = next(r for r in card["sources"] if not r["real"])
    assert by_source["digits"]["test"] == 12 and by_source["digits"]["train"] == 48  # 20% of 60 held out
    assert noise["family"] == "noise" and noise["test"] == 12
    assert card["auc"]["seen_families"] > 0.9
    assert noise["auc"] > 0.9 and by_source["digits"]["auc"] > 0.9


def test_the_card_records_architecture_sources_seed_and_input_form(noise_detector):
    result, root = noise_detector
    card = json.loads((root / "detector" / D.CARD_FILE).read_text())
    assert card["architecture"]["size"] == 16 and card["architecture"]["widths"] == [8, 16]
    assert "grayscale replicated" in card["architecture"]["input"]
    assert card["training"]["seed"] == 0 and card["training"]["steps"] == 80
    assert [r["source"] for r in card["sources"]] == ["digits", f"family=noise:{root / 'noise'}"]


def test_hold_out_family_images_never_enter_training_and_get_their_own_auc(tmp_path, monkeypatch):
    gan = _noise_folder(tmp_path / "gan", 30, seed=2)
    vae = _noise_folder(tmp_path / "vae", 20, seed=0, value=77)  # flat grey: recognisable in the training tensor
    seen: dict = {}
    real_fit = D._fit

    def spy(net, x, y, config, device, progress):
        seen["x"], seen["y"] = x.clone(), y.clone()
        return real_fit(net, x, y, config, device, progress)

    monkeypatch.setattr(D, "_fit", spy)
    cfg = D.TrainDetectorConfig(real=("digits",), fake=(f"family=gan:{gan}", f"family=vae:{vae}"),
                                hold_out_family="VAE", **{**TINY, "steps": 10})
    result = D.train_detector(cfg, tmp_path / "det", device="cpu", progress=False)
    splits = json.loads((tmp_path / "det" / D.SPLITS_FILE).read_text())
    vae_spec, gan_spec = f"family=vae:{vae}", f"family=gan:{gan}"
    assert splits[vae_spec]["train"] == [] and len(splits[vae_spec]["test"]) == 20
    assert len(splits[gan_spec]["train"]) == 24 and len(splits[gan_spec]["test"]) == 6
    assert not set(splits[gan_spec]["train"]) & set(splits[gan_spec]["test"])
    # what reached the training loop: the seen family's 24 training images and no flat-grey (vae) image
    assert int(seen["y"].sum()) == 24
    flat = (seen["x"] == 77).flatten(1).all(dim=1)
    assert not flat.any()
    auc = result.card["auc"]
    assert auc["held_out_family"] == "vae" and auc["generated_test_unseen"] == 20 and auc["generated_test_seen"] == 6
    assert auc["unseen_family"] is not None and auc["seen_families"] is not None
    rows = {r["source"]: r for r in result.card["sources"]}
    assert rows[vae_spec]["held_out_family"] and rows[vae_spec]["train"] == 0


def test_hold_out_family_must_name_a_given_family_and_leave_another(tmp_path):
    gan = _noise_folder(tmp_path / "gan", 4, seed=2)
    cfg = D.TrainDetectorConfig(real=("digits",), fake=(f"family=gan:{gan}",), hold_out_family="vae", **TINY)
    with pytest.raises(ValueError, match="--hold-out-family vae: no --fake source of that family; the families given: gan"):
        D.train_detector(cfg, tmp_path / "a", device="cpu", progress=False)
    cfg = D.TrainDetectorConfig(real=("digits",), fake=(f"family=gan:{gan}",), hold_out_family="gan", **TINY)
    with pytest.raises(ValueError, match="only family given"):
        D.train_detector(cfg, tmp_path / "b", device="cpu", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_model_source_is_sampled_once_with_its_family_from_the_config(tmp_path, monkeypatch):
    import pixelforge

    pixelforge.train("digits", name="tiny", runs_dir=tmp_path / "runs", image_size=8, steps=2, batch_size=8,
                     val_every=2, sample_every=100, ckpt_every=2, progress=False, device="cpu",
                     model_fields={"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1})
    src = D.parse_source("tiny", real=False, runs_dir=tmp_path / "runs")
    assert (src.kind, src.family) == ("model", "diffusion")
    cfg = D.TrainDetectorConfig(real=("digits",), fake=("tiny",), **{**TINY, "steps": 4, "per_source": 10})
    result = D.train_detector(cfg, tmp_path / "det", device="cpu", runs_dir=tmp_path / "runs", progress=False)
    row = next(r for r in result.card["sources"] if r["source"] == "tiny")
    assert (row["kind"], row["family"], row["images"]) == ("model", "diffusion", 10)
    splits = json.loads((tmp_path / "det" / D.SPLITS_FILE).read_text())["tiny"]
    assert sorted(splits["train"] + splits["test"], key=lambda s: int(s.split()[1])) == [f"seed {i}" for i in range(10)]
    # training again (another split seed of the network, another held-out family) reuses the generated images
    monkeypatch.setattr(pixelforge.api.Generator, "generate_tensor", lambda *a, **k: pytest.fail("sampled again"))
    again = D.train_detector(dataclasses.replace(cfg, steps=2), tmp_path / "det2", device="cpu",
                             runs_dir=tmp_path / "runs", progress=False)
    assert next(r for r in again.card["sources"] if r["source"] == "tiny")["images"] == 10


@pytest.mark.parametrize("spec, real, message", [
    ("no-such-set", True, "--real no-such-set: not a folder of images nor a bundled data set"),
    ("family=gan", False, "expected family=NAME:DIR"),
    ("family=gan:/no/such/dir", False, "/no/such/dir is not a folder"),
    ("no-such-run", False, "--fake no-such-run: not a run, a bundled model, a folder of images or family=NAME:DIR"),
])
def test_bad_sources_are_refused_naming_the_option(spec, real, message):
    with pytest.raises(ValueError, match=message):
        D.parse_source(spec, real=real)


@pytest.mark.parametrize("field, value, message", [
    ("size", 4, "detector size must be an integer number of pixels in 8..256"),
    ("steps", 0, "--steps must be an integer in 1..1000000"),
    ("test_fraction", 1.0, "--test-fraction must be a number strictly between 0 and 1"),
    ("real", (), "--real: give at least one source"),
])
def test_bad_settings_are_refused_naming_the_field(field, value, message):
    kwargs = {"real": ("digits",), "fake": ("x",), field: value}
    with pytest.raises(ValueError, match=message):
        D.TrainDetectorConfig(**kwargs)


# --- stored detector ------------------------------------------------------------------------------------------


def test_the_stored_detector_loads_without_pickle_and_reproduces_the_recorded_auc(noise_detector, monkeypatch):
    result, root = noise_detector
    folder = root / "detector"
    assert sorted(p.name for p in folder.iterdir()) == [D.CARD_FILE, D.WEIGHTS_FILE, D.SPLITS_FILE]

    def refuse(*_a, **_k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    det = D.Detector.load(folder, device="cpu")
    # the held-out images listed in splits.json, scored by the loaded detector, give the AUC the card recorded
    from pixelforge.data.bundled import load_bundled

    splits = json.loads((folder / D.SPLITS_FILE).read_text())
    digits = load_bundled("digits").images
    real = det.logit(digits[[int(s.split()[1]) for s in splits["digits"]["test"]]])
    noise_spec = next(k for k in splits if k.startswith("family=noise:"))
    fake = det.logit([Image.open(root / "noise" / f) for f in splits[noise_spec]["test"]])
    assert D.roc_auc(fake, real) == pytest.approx(result.card["auc"]["seen_families"], abs=1e-4)
    assert np.allclose(det.probability([Image.open(root / "noise" / "img000.png")]),
                       result.detector.probability([Image.open(root / "noise" / "img000.png")]))


def test_damaged_detector_files_are_refused_naming_the_file(noise_detector, tmp_path):
    _, root = noise_detector
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root / "detector", bad)
    (bad / D.WEIGHTS_FILE).write_bytes((bad / D.WEIGHTS_FILE).read_bytes()[:100])
    with pytest.raises(ValueError, match="detector.safetensors"):
        D.Detector.load(bad)
    card = json.loads((root / "detector" / D.CARD_FILE).read_text())
    shutil.copy(root / "detector" / D.WEIGHTS_FILE, bad / D.WEIGHTS_FILE)
    (bad / D.CARD_FILE).write_text(json.dumps({**card, "architecture": {"size": 16, "widths": [8, 32]}}))
    with pytest.raises(ValueError, match="do not fit the network"):
        D.Detector.load(bad)
    (bad / D.CARD_FILE).write_text(json.dumps({**card, "architecture": {"size": 16, "widths": [0]}}))
    with pytest.raises(ValueError, match="detector.json: architecture: detector widths"):
        D.Detector.load(bad)
    with pytest.raises(ValueError, match="not a folder"):
        D.Detector.load(tmp_path / "none")


def test_an_interrupted_training_leaves_no_detector_and_no_temporary_folder(tmp_path, monkeypatch):
    noise = _noise_folder(tmp_path / "noise", 6, seed=1)
    cfg = D.TrainDetectorConfig(real=("digits",), fake=(str(noise),), **{**TINY, "steps": 2, "per_source": 6})

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "atomic_write_text", interrupted)  # killed while writing the folder
    with pytest.raises(KeyboardInterrupt):
        D.train_detector(cfg, tmp_path / "det", device="cpu", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["noise"]


def test_an_existing_detector_is_replaced_only_with_overwrite(noise_detector, tmp_path):
    noise = _noise_folder(tmp_path / "noise", 6, seed=1)
    cfg = D.TrainDetectorConfig(real=("digits",), fake=(str(noise),), **{**TINY, "steps": 2, "per_source": 6})
    D.train_detector(cfg, tmp_path / "det", device="cpu", progress=False)
    with pytest.raises(ValueError, match="holds a detector already; pass --overwrite"):
        D.train_detector(cfg, tmp_path / "det", device="cpu", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        D.train_detector(cfg, tmp_path / "other", device="cpu", progress=False)
    result = D.train_detector(cfg, tmp_path / "det", device="cpu", progress=False, overwrite=True)
    assert result.card["sources"][1]["family"] == "unknown"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["det", "noise", "other"]


# --- detect ---------------------------------------------------------------------------------------------------


def _digit_png(path, index: int = 0, side: int = 64):
    """A bundled digit scaled to side x side as a PNG (big enough to carry the watermark)."""
    from pixelforge.data.bundled import load_bundled

    arr = load_bundled("digits").images[index, 0].numpy()
    Image.fromarray(arr, "L").resize((side, side), Image.Resampling.BICUBIC).convert("RGB").save(path)
    return path


def test_combine_trusts_the_watermark_over_the_classifier():
    assert D.combine(True, 0.01) == (pytest.approx(1 - D.WATERMARK_FALSE_POSITIVE_RATE), "watermark")
    assert D.combine(False, 0.3) == (0.3, "classifier")
    assert D.combine(False, None) == (None, None)


def test_detect_json_lines_carry_every_field_and_a_marked_image_is_generated_whatever_the_classifier_says(
        noise_detector, tmp_path, capsys):
    _, root = noise_detector
    plain = _digit_png(tmp_path / "digit.png")
    marked = tmp_path / "marked.png"
    embed(Image.open(plain), 0x1234ABCD).save(marked)
    code = main(["detect", str(plain), str(marked), str(root / "noise" / "img001.png"),
                 "--detector", str(root / "detector"), "--json", "--device", "cpu"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for r in lines:
        assert {"file", "generated_probability", "basis", "watermark", "classifier_probability", "detector"} <= set(r)
        assert set(r["watermark"]) == {"detected", "score", "payload", "too_small"}
        assert r["detector"] == str(root / "detector")
    digit, mark, noise = lines
    assert digit["watermark"]["detected"] is False and digit["basis"] == "classifier"
    assert digit["generated_probability"] == digit["classifier_probability"] < 0.5
    # the classifier takes the marked digit for real, but the mark decides
    assert mark["classifier_probability"] < 0.5
    assert mark["watermark"] == {"detected": True, "score": mark["watermark"]["score"], "payload": "1234abcd",
                                 "too_small": False}
    assert mark["basis"] == "watermark" and mark["generated_probability"] == pytest.approx(0.997)
    assert noise["generated_probability"] > 0.5


def test_detect_without_a_detector_gives_the_watermark_alone_and_says_to_train_one(tmp_path, capsys):
    plain = _digit_png(tmp_path / "digit.png")
    assert main(["detect", str(plain), "--json"]) == 0
    (r,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert r["classifier_probability"] is None and r["detector"] is None and r["generated_probability"] is None
    assert "pixelforge detector train" in r["note"]
    assert main(["detect", str(plain)]) == 0
    captured = capsys.readouterr()
    assert "unknown whether generated" in captured.out and "pixelforge detector train" in captured.err
    assert r["watermark"]["too_small"] is False
    small = _digit_png(tmp_path / "small.png", side=28)  # under the watermark's smallest side: no mark to look for
    assert main(["detect", str(small), "--json"]) == 0
    (r,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert r["watermark"]["too_small"] is True and r["watermark"]["detected"] is False
    assert main(["detect", str(small)]) == 0
    assert "too small to carry a watermark" in capsys.readouterr().out


def test_bad_files_get_one_line_each_and_the_others_are_still_checked(noise_detector, tmp_path, capsys):
    _, root = noise_detector
    good = _digit_png(tmp_path / "digit.png")
    (tmp_path / "text.png").write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    files = [str(tmp_path / "missing.png"), str(tmp_path / "text.png"), str(truncated), str(good)]
    code = main(["detect", *files, "--detector", str(root / "detector"), "--device", "cpu"])
    assert code == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3
    for f, line in zip(files[:3], errors):
        assert line.startswith(f"{f}: error: ")
    assert captured.out.startswith(f"{good}: probability generated")
    assert main(["detect", *files, "--detector", str(root / "detector"), "--json", "--device", "cpu"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ["error" in r for r in lines] == [True, True, True, False]


def test_cli_detector_train_prints_the_auc_table_and_records_the_command(tmp_path, capsys):
    noise = _noise_folder(tmp_path / "noise", 10, seed=1)
    code = main(["detector", "train", "-o", str(tmp_path / "det"), "--real", "digits", "--fake", f"family=gan:{noise}",
                 "--size", "16", "--steps", "3", "--per-source", "10", "--device", "cpu", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "families seen in training: AUC" in out and "detector written to" in out
    card = json.loads((tmp_path / "det" / D.CARD_FILE).read_text())
    assert card["command"].startswith(f"pixelforge detector train -o {tmp_path / 'det'} --real digits --fake family=gan:")
    assert "--steps 3" in card["command"] and "--per-source 10" in card["command"]
    assert main(["detector", "train", "-o", str(tmp_path / "d2"), "--real", "nope", "--fake", str(noise)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pixelforge detector: error: --real nope: not a folder of images nor a bundled data set "
                   "(mnist, digits, emoji, textures, shapes)"]
