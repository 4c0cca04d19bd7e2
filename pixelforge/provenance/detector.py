"""A generated-image detector: a small CNN telling real images from generated ones, trained on real data sets
against images drawn from runs and models (or folders of generated images), with its ROC AUC on held-out images
per source and, optionally, on a model family it never saw (docs/detector.md).

Every image is brought to one input form before the network sees it (prepare_image): Pillow's ImageOps.fit to
size x size (centre crop to a square, bicubic resize), then mode RGB (a grayscale image's value replicated on R,
G and B by Pillow's convert), as uint8 (3, S, S) scaled to [-1, 1].

Stored as DIR/detector.safetensors (the weights) + DIR/detector.json (architecture, input size, sources, seed,
the AUC table, the command) + DIR/splits.json (which images of each source went to training and to the held-out
test); never pickle. The folder is written under a temporary name and renamed, so an interrupted training leaves
no half-written detector.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from ..device import pick_device
from ..files import TEMP_PREFIX
from ..models.common import seeded_init
from ..progress import image_bar, stage_bar
from ..runs.checkpoint import atomic_save_tensors, atomic_write_text, read_tensors

FORMAT_VERSION = 1
WEIGHTS_FILE = "detector.safetensors"
CARD_FILE = "detector.json"
SPLITS_FILE = "splits.json"
SIZE_RANGE = (8, 256)  # input side in pixels
WIDTH_RANGE = (1, 512)  # channels of each stage
MAX_STAGES = 6  # each stage halves the side
UNKNOWN_FAMILY = "unknown"  # a folder of generated images given without family=NAME:
INPUT = ("Pillow ImageOps.fit to SIZE x SIZE (centre crop to a square, bicubic resize), mode RGB (grayscale "
         "replicated on R, G and B), uint8 / 127.5 - 1")


# --------------------------------------------------------------------------------------------------------------
# The network


@dataclass(frozen=True)
class DetectorConfig:
    """The classifier's architecture: input side `size` and the widths of its stages (each two 3x3 convolutions,
    the second with stride 2), then global average pooling and one logit ("generated")."""

    size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        lo, hi = SIZE_RANGE
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not lo <= self.size <= hi:
            raise ValueError(f"detector size must be an integer number of pixels in {lo}..{hi}, got {self.size!r}")
        w = tuple(self.widths) if isinstance(self.widths, (list, tuple)) else None
        if (not w or len(w) > MAX_STAGES or any(isinstance(x, bool) or not isinstance(x, int)
                                                or not WIDTH_RANGE[0] <= x <= WIDTH_RANGE[1] for x in w)):
            raise ValueError(f"detector widths must be 1..{MAX_STAGES} integers in {WIDTH_RANGE[0]}..{WIDTH_RANGE[1]}, "
                             f"got {self.widths!r}")
        object.__setattr__(self, "widths", w)


class DetectorNet(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B,) logits of "generated". Global average pooling keeps it to local
    statistics (texture, noise, edges) rather than where things are."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in config.widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU()]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, widths[-1], S / 2^k, S / 2^k)
        return self.head(h.mean(dim=(2, 3)))[:, 0]  # (B,)


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL image -> (3, size, size) uint8: ImageOps.fit (centre crop, bicubic), then RGB (gray replicated;
    alpha dropped, palette expanded)."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA", "LA") else image.convert("RGB")
    fitted = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(fitted.convert("RGB")).transpose(2, 0, 1))  # (3, S, S)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def _tensor_images(x: torch.Tensor) -> list[Image.Image]:
    """(N, C, H, W) uint8 with C 1 or 3 -> PIL images (L or RGB)."""
    arr = x.numpy()
    return [Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB") for a in arr]


# --------------------------------------------------------------------------------------------------------------
# A trained detector


class Detector:
    """A trained detector: `Detector.load(dir).probability(images)` -> each image's probability of being generated."""

    def __init__(self, net: DetectorNet, config: DetectorConfig, card: dict, path: Path | None = None, *,
                 device: str | torch.device = "auto"):
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.config = config
        self.card = card
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto") -> "Detector":
        """Read DIR/detector.json and DIR/detector.safetensors (no pickle); a missing or damaged file, or weights
        that do not fit the described network, is a ValueError naming the file."""
        path = Path(path)
        card_file, weights = path / CARD_FILE, path / WEIGHTS_FILE
        if not path.is_dir():
            raise ValueError(f"--detector {path}: not a folder (a detector folder holds {CARD_FILE} and {WEIGHTS_FILE}; "
                             f"make one with `pixelforge detector train`)")
        for f in (card_file, weights):
            if not f.is_file():
                raise ValueError(f"{f}: missing; a detector folder holds {CARD_FILE} and {WEIGHTS_FILE} "
                                 f"(made by `pixelforge detector train`)")
        try:
            card = json.loads(card_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{card_file}: not valid JSON ({e})") from None
        if not isinstance(card, dict) or card.get("format_version") != FORMAT_VERSION:
            got = card.get("format_version") if isinstance(card, dict) else None
            raise ValueError(f"{card_file}: format_version must be {FORMAT_VERSION}, got {got!r}")
        arch = card.get("architecture")
        if not isinstance(arch, dict):
            raise ValueError(f"{card_file}: architecture must be an object with size and widths")
        try:
            config = DetectorConfig(size=arch.get("size"), widths=tuple(arch.get("widths") or ()))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{card_file}: architecture: {e}") from None
        net = DetectorNet(config)
        state = read_tensors(weights)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            wrong = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
            raise ValueError(f"{weights}: the weights do not fit the network {CARD_FILE} describes "
                             f"(first mismatch: {wrong[0]})")
        net.load_state_dict(state)
        return cls(net, config, card, path, device=device)

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (N, 3, S, S) uint8 (prepare_image)."""
        return torch.from_numpy(np.stack([prepare_image(im, self.config.size) for im in images])) if images else \
            torch.zeros((0, 3, self.config.size, self.config.size), dtype=torch.uint8)

    def logit(self, images: Sequence[Image.Image] | torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
        """(N,) float64 logits that each image is generated (what AUCs are computed on: they never saturate).
        images: PIL images, or a uint8 tensor (N, C, H, W) with C 1 or 3 (brought to the input form the same way)."""
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
                raise ValueError(f"images must be PIL images or a uint8 tensor (N, 1 or 3, H, W), got "
                                 f"{images.dtype} {tuple(images.shape)}")
            images = _tensor_images(images.cpu())
        return _logits(self.net, self.prepare(list(images)), self.device, batch_size)

    def probability(self, images: Sequence[Image.Image] | torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
        """(N,) float64 probabilities that each image is generated: the sigmoid of logit(), in float64 (exactly 0
        or 1 only beyond a logit of about +-37, where float32 gave up at +-17)."""
        return sigmoid(self.logit(images, batch_size=batch_size))


@torch.no_grad()
def _logits(net: DetectorNet, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """(N, 3, S, S) uint8 -> (N,) float64 logits, in eval mode."""
    net.eval()
    out = [net(_to_unit(x[i:i + batch_size].to(device))).double().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The sigmoid of float64 logits (scipy's expit: no overflow warning for large ones)."""
    from scipy.special import expit

    return expit(np.asarray(logits, np.float64))


# --------------------------------------------------------------------------------------------------------------
# ROC AUC


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The ROC AUC of scores where `positive` should score higher: the Mann-Whitney U of the positives over the
    negatives divided by n_pos n_neg (ties count one half), computed by scipy; NaN when either side is empty."""
    from scipy.stats import mannwhitneyu

    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    u = mannwhitneyu(positive, negative, alternative="two-sided").statistic  # U of the first sample
    return float(u) / (len(positive) * len(negative))


# --------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """One source of training images. kind: "bundled" (a bundled data set by name), "folder" (a folder of
    images, recursively), "model" (a run or bundled model whose samples are drawn); real: real or generated;
    family: the model family of generated images (from the run's config, or family=NAME:DIR; "unknown" for a
    folder given without one), None for real images."""

    spec: str
    kind: str
    real: bool
    path: str
    family: str | None = None


def parse_source(spec: str, *, real: bool, runs_dir: str | os.PathLike | None = None) -> Source:
    """A --real or --fake argument -> Source. --real: a bundled data set name or a folder of images. --fake: a run
    folder, a run name or a bundled model (its family from its config), family=NAME:DIR (a folder of generated
    images of that family), or a folder of images (family unknown). A ValueError naming the option otherwise."""
    from ..data.bundled import BUNDLED

    flag = "--real" if real else "--fake"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{flag}: empty source")
    if real:
        if spec in BUNDLED and not Path(spec).exists():
            return Source(spec, "bundled", True, spec)
        if Path(spec).is_dir():
            return Source(spec, "folder", True, spec)
        raise ValueError(f"{flag} {spec}: not a folder of images nor a bundled data set ({', '.join(BUNDLED)})")
    if spec.startswith("family="):
        family, sep, folder = spec[len("family="):].partition(":")
        if not sep or not family.strip() or not folder:
            raise ValueError(f"{flag} {spec}: expected family=NAME:DIR, e.g. family=gan:./gan_images")
        if not Path(folder).is_dir():
            raise ValueError(f"{flag} {spec}: {folder} is not a folder")
        return Source(spec, "folder", False, folder, family.strip().lower())
    from ..runs.store import resolve_run

    try:
        run = resolve_run(spec, runs_dir)
    except FileNotFoundError:
        if Path(spec).is_dir():
            return Source(spec, "folder", False, spec, UNKNOWN_FAMILY)
        raise ValueError(f"{flag} {spec}: not a run, a bundled model, a folder of images or family=NAME:DIR") from None
    try:
        family = json.loads((run / "config.json").read_text())["family"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{flag} {spec}: cannot read the family from {run / 'config.json'} ({e})") from None
    return Source(spec, "model", False, str(run), str(family))


@dataclass
class _Loaded:
    """A source's images in the detector's input form and what identifies each one (for splits.json)."""

    source: Source
    images: torch.Tensor  # (N, 3, S, S) uint8
    items: list[str]  # "index 12" (bundled), a path relative to the folder, "seed 7" (generated)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _load_source(src: Source, cfg: "TrainDetectorConfig", index: int, *, device: str, runs_dir, progress: bool) -> _Loaded:
    """Up to cfg.per_source images of a bundled set or folder (a seeded choice when it holds more), or exactly
    cfg.per_source images drawn from a model (seeds seed*1000003 + i, labels balanced over its classes; never
    watermarked, so the classifier cannot learn the mark instead of the images)."""
    size, n = cfg.size, cfg.per_source
    rng = np.random.default_rng((cfg.seed, index, 1))
    if src.kind == "bundled":
        from ..data.bundled import load_bundled

        data = load_bundled(src.path).images  # (N, C, h, w) uint8
        chosen = np.sort(rng.permutation(len(data))[:n])
        pics = _tensor_images(data[torch.from_numpy(chosen)])
        return _Loaded(src, _stack(pics, size), [f"index {i}" for i in chosen.tolist()])
    if src.kind == "folder":
        from ..data.folder import check_file, scan_folder

        scan = scan_folder(src.path)
        if scan.error:
            raise ValueError(f"{'--real' if src.real else '--fake'} {src.spec}: {scan.error}")
        order = rng.permutation(len(scan.files)).tolist()
        pics, items, skipped = [], [], []
        bar = stage_bar(min(n, len(scan.files)), f"reading {src.spec}", enabled=progress)
        for k in order:  # in a seeded order until n usable images: a bad file is skipped and listed
            if len(pics) == n:
                break
            entry = scan.files[k]
            im, reason = check_file(scan.root / entry.path)
            if im is None:
                skipped.append((entry.path, str(reason)))
                continue
            pics.append(im)
            items.append(entry.path)
            bar.update(1)
        bar.close()
        if not pics:
            raise ValueError(f"{'--real' if src.real else '--fake'} {src.spec}: no usable image"
                             + (f" ({len(skipped)} unreadable, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
        return _Loaded(src, _stack(pics, size), items, skipped)
    from ..api import load  # generation goes through the API, as evaluation's does (evaluate.py)
    from ..metrics.evaluate import balanced_labels, to_uint8

    g = load(src.path, device=device, runs_dir=runs_dir, moderation=None)
    seeds = [cfg.seed * 1_000_003 + i for i in range(n)]
    labels = balanced_labels(n, g.num_classes) if "labels" in g.inputs else None
    items = [f"seed {s}" for s in seeds]
    # Generated images are cached under $PIXELFORGE_CACHE, keyed by the weights, config, options, seeds and input
    # size: training again (another --hold-out-family, another seed of the network) does not sample again.
    key = {"weights": g.checkpoint_hash, "config": g.config.to_json(),
           "options": g.resolve_options(), "seeds": seeds, "labels": labels, "size": size, "input": INPUT}
    cache = _generated_cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32] + ".safetensors")
    if cache.is_file():
        try:
            cached = read_tensors(cache)["images"]
            if tuple(cached.shape) == (n, 3, size, size) and cached.dtype == torch.uint8:
                return _Loaded(src, cached, items)
        except (ValueError, KeyError):
            pass  # a damaged cache file is made again
    bar, cb = image_bar(n, f"generating {src.spec}", enabled=progress)
    images, _ = g.generate_tensor(n, labels=labels, seeds=seeds, callback=cb)
    cb(n, n)  # a family that reports no progress still ends its bar at n
    bar.close()
    prepared = _stack(_tensor_images(to_uint8(images)), size)
    atomic_save_tensors({"images": prepared}, cache)
    return _Loaded(src, prepared, items)


def _generated_cache_dir() -> Path:
    from ..data.prepare import default_cache_dir

    return default_cache_dir().parent / "detector-generated"  # beside the prepared data sets


def _stack(pics: list[Image.Image], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([prepare_image(im, size) for im in pics]))  # (N, 3, S, S) uint8


# --------------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainDetectorConfig:
    """What `train_detector` does. real / fake: source specs (parse_source); size: the input side; widths: the
    network's stages; steps, batch_size (half real, half generated in every batch), lr (Adam); per_source: images
    per real source and folder (at most) and per model (exactly); test_fraction: of each source, held out for
    the AUC (seeded by `seed`); hold_out_family: a family whose every source is kept out of training and only
    tested, to measure the AUC on a family the detector never saw."""

    real: tuple[str, ...]
    fake: tuple[str, ...]
    size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    per_source: int = 500
    test_fraction: float = 0.2
    hold_out_family: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("real", "fake"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"--{name}: give at least one source")
            object.__setattr__(self, name, tuple(value))
        DetectorConfig(self.size, self.widths)  # checks size and widths
        object.__setattr__(self, "widths", tuple(self.widths))
        for name, lo, hi in (("steps", 1, 1_000_000), ("batch_size", 2, 4096), ("per_source", 2, 100_000),
                             ("seed", 0, 2**31 - 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer in {lo}..{hi}, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or not 0 < self.lr <= 1:
            raise ValueError(f"--lr must be a number in (0, 1], got {self.lr!r}")
        if not isinstance(self.test_fraction, (int, float)) or not 0 < self.test_fraction < 1:
            raise ValueError(f"--test-fraction must be a number strictly between 0 and 1, got {self.test_fraction!r}")
        if self.hold_out_family is not None:
            if not isinstance(self.hold_out_family, str) or not self.hold_out_family.strip():
                raise ValueError(f"--hold-out-family must be a family name, got {self.hold_out_family!r}")
            object.__setattr__(self, "hold_out_family", self.hold_out_family.strip().lower())


@dataclass(frozen=True)
class TrainResult:
    """What train_detector made: the detector (loaded back from its files) and its card (detector.json)."""

    detector: Detector
    card: dict
    path: Path


def _split(n: int, fraction: float, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a source of n images: a seeded permutation, round(fraction n) (at least one)
    held out for testing."""
    perm = np.random.default_rng((seed, index, 2)).permutation(n)
    k = min(n - 1, max(1, round(fraction * n))) if n > 1 else n
    return np.sort(perm[k:]), np.sort(perm[:k])


def train_detector(config: TrainDetectorConfig, out: str | os.PathLike, *, device: str = "auto",
                   runs_dir: str | os.PathLike | None = None, progress: bool = True, overwrite: bool = False,
                   command: str | None = None) -> TrainResult:
    """Train a detector on config's real and generated sources and write it to `out` (detector.safetensors,
    detector.json with the AUC table, splits.json), atomically. The held-out AUC is measured per source (a
    generated source's test images against every real test image; a real source's against every generated
    test image of a family seen in training), over the seen families, and on the held-out family."""
    out = Path(out)
    _check_out(out, overwrite)
    sources = [parse_source(s, real=True, runs_dir=runs_dir) for s in config.real]
    sources += [parse_source(s, real=False, runs_dir=runs_dir) for s in config.fake]
    families = sorted({s.family for s in sources if not s.real})
    held = config.hold_out_family
    if held is not None:
        if held not in families:
            raise ValueError(f"--hold-out-family {held}: no --fake source of that family; the families given: "
                             f"{', '.join(families)}")
        if len(families) < 2:
            raise ValueError(f"--hold-out-family {held}: it is the only family given, so nothing generated would be "
                             f"left to train on; add --fake sources of another family")
    dev = pick_device(device)
    t0 = time.perf_counter()
    loaded = [_load_source(s, config, i, device=device, runs_dir=runs_dir, progress=progress) for i, s in enumerate(sources)]
    load_seconds = time.perf_counter() - t0

    train_x, train_y, rows, splits = [], [], [], {}
    tests: list[tuple[int, np.ndarray]] = []  # (source index, test indices)
    for i, ld in enumerate(loaded):
        unseen = held is not None and ld.source.family == held
        tr, te = (np.zeros(0, dtype=np.int64), np.arange(len(ld.images))) if unseen else \
            _split(len(ld.images), config.test_fraction, config.seed, i)
        if len(tr):
            train_x.append(ld.images[torch.from_numpy(tr)])
            train_y.append(torch.full((len(tr),), 0.0 if ld.source.real else 1.0))
        tests.append((i, te))
        splits[ld.source.spec] = {"train": [ld.items[k] for k in tr], "test": [ld.items[k] for k in te]}
        rows.append({"source": ld.source.spec, "kind": ld.source.kind, "real": ld.source.real,
                     "family": ld.source.family, "held_out_family": unseen, "images": len(ld.images),
                     "train": int(len(tr)), "test": int(len(te)), "skipped": len(ld.skipped)})
    x = torch.cat(train_x)  # (N, 3, S, S) uint8
    y = torch.cat(train_y)  # (N,) 1 generated, 0 real
    if not (y == 0).any() or not (y == 1).any():
        raise ValueError("nothing real or nothing generated is left to train on: each --real source needs at "
                         "least two images and some --fake source must be of a family not held out")

    net_cfg = DetectorConfig(config.size, config.widths)
    with seeded_init(config.seed):
        net = DetectorNet(net_cfg)
    t1 = time.perf_counter()
    losses = _fit(net, x, y, config, dev, progress)
    train_seconds = time.perf_counter() - t1

    # AUCs on the logits: float32 probabilities saturate at 0 and 1, and saturated scores tie (AUC 0.5 between them)
    logits = [(i, _logits(net, loaded[i].images[torch.from_numpy(te)], dev)) for i, te in tests]
    auc = _auc_table(logits, loaded, rows, held)
    card = {
        "format_version": FORMAT_VERSION,
        "kind": "pixelforge generated-image detector",
        "architecture": {"name": "DetectorNet", "size": net_cfg.size, "widths": list(net_cfg.widths),
                         "parameters": sum(p.numel() for p in net.parameters()), "input": INPUT.replace("SIZE", str(net_cfg.size))},
        "training": {**{k: v for k, v in asdict(config).items() if k not in ("real", "fake")},
                     "widths": list(config.widths), "train_images": int(len(y)),
                     "train_real": int((y == 0).sum()), "train_generated": int((y == 1).sum()),
                     "final_loss": round(float(np.mean(losses[-20:])), 4), "load_seconds": round(load_seconds, 1),
                     "train_seconds": round(train_seconds, 1), "device": str(dev)},
        "sources": rows,
        "auc": auc,
        "command": command,
    }
    _write(out, net, card, splits, overwrite)
    return TrainResult(Detector.load(out, device=device), card, out)


def _fit(net: DetectorNet, x: torch.Tensor, y: torch.Tensor, config: TrainDetectorConfig, device: torch.device,
         progress: bool) -> list[float]:
    """Adam on balanced batches (half real, half generated, drawn with replacement from a generator seeded with
    config.seed); binary cross-entropy on the logits. Returns the per-step losses."""
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    # the learning rate decays along a cosine to 0: the last steps settle rather than jump
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    gen = torch.Generator().manual_seed(config.seed)
    real_idx, fake_idx = torch.nonzero(y == 0)[:, 0], torch.nonzero(y == 1)[:, 0]
    half = config.batch_size // 2
    target = torch.cat([torch.zeros(half), torch.ones(config.batch_size - half)]).to(device)  # (B,)
    losses: list[float] = []
    bar = stage_bar(config.steps, "training detector", unit="step", enabled=progress)
    for step in range(config.steps):
        pick = torch.cat([real_idx[torch.randint(len(real_idx), (half,), generator=gen)],
                          fake_idx[torch.randint(len(fake_idx), (config.batch_size - half,), generator=gen)]])
        batch = _to_unit(x[pick].to(device))  # (B, 3, S, S)
        loss = F.binary_cross_entropy_with_logits(net(batch), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if step % 20 == 19 or step == config.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    net.eval()
    return losses


def _auc_table(probs: list[tuple[int, np.ndarray]], loaded: list[_Loaded], rows: list[dict], held: str | None) -> dict:
    """The AUC figures (see train_detector), each with its counts; per-source AUCs go into `rows`. probs: each
    source's index and its test images' logits (any monotone score gives the same AUC; logits do not tie)."""
    real = np.concatenate([p for i, p in probs if loaded[i].source.real] or [np.zeros(0)])
    seen = np.concatenate([p for i, p in probs if not loaded[i].source.real and loaded[i].source.family != held] or [np.zeros(0)])
    for (i, p), row in zip(probs, rows):
        auc = roc_auc(seen, p) if loaded[i].source.real else roc_auc(p, real)
        row["auc"] = None if math.isnan(auc) else round(auc, 4)
        row["mean_probability"] = round(float(sigmoid(p).mean()), 4) if len(p) else None
    table = {"seen_families": _rounded(roc_auc(seen, real)), "real_test": int(len(real)), "generated_test_seen": int(len(seen))}
    if held is not None:
        unseen = np.concatenate([p for i, p in probs if loaded[i].source.family == held])
        table.update(held_out_family=held, unseen_family=_rounded(roc_auc(unseen, real)), generated_test_unseen=int(len(unseen)))
    table["per_family"] = {fam: _rounded(roc_auc(np.concatenate([p for i, p in probs if loaded[i].source.family == fam]), real))
                           for fam in sorted({ld.source.family for ld in loaded if not ld.source.real})}
    return table


def _rounded(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


# --------------------------------------------------------------------------------------------------------------
# Writing the folder


def _is_detector(path: Path) -> bool:
    return (path / CARD_FILE).is_file() or (path / WEIGHTS_FILE).is_file()


def _check_out(out: Path, overwrite: bool) -> None:
    """-o must be a new or empty folder, or a detector folder with overwrite; checked before any work."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_detector(out):
            raise ValueError(f"-o {out}: a folder that holds other files; give a new or empty folder")
        if not overwrite:
            raise ValueError(f"-o {out}: holds a detector already; pass --overwrite to replace it")


def _write(out: Path, net: DetectorNet, card: dict, splits: dict, overwrite: bool) -> None:
    """Write the three files into a temporary folder beside `out`, then rename it to `out` (replacing an empty
    folder, or an old detector when overwrite): a reader never sees half a detector, and a killed training
    leaves only a .tmp- folder, never a partial `out`."""
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{TEMP_PREFIX}{out.name}-{secrets.token_hex(4)}"
    tmp.mkdir()  # the usual folder mode (mkdtemp's would be 0700)
    try:
        atomic_save_tensors(net.state_dict(), tmp / WEIGHTS_FILE,
                            metadata={"format": "pixelforge-detector", "format_version": str(FORMAT_VERSION)})
        atomic_write_text(tmp / CARD_FILE, json.dumps(card, indent=2) + "\n")
        atomic_write_text(tmp / SPLITS_FILE, json.dumps(splits) + "\n")
        old = None
        if out.is_dir() and any(out.iterdir()):  # an old detector (checked above): moved aside, removed after
            old = out.parent / f"{TEMP_PREFIX}{out.name}-old-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(tmp, out)  # rename(2) replaces a missing or empty folder in one step
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------------------
# Detection: the watermark and the classifier together

# The watermark's false-positive rate at its default thresholds (one per size class): 0 of 1,500 clean images of
# each size class scored at or above its threshold (docs/watermark.md, "False positives"). The rule of three puts
# the 95% upper bound that zero in 1,500 allows at 2 / 1,000; 3 / 1,000, the bound of the earlier calibration on
# 1,000 images, is kept as the more cautious figure rather than an optimistic 0.
WATERMARK_FALSE_POSITIVE_RATE = 3 / 1000
NO_DETECTOR_NOTE = ("no classifier: the watermark alone, which says nothing about unmarked images; train one with "
                    "`pixelforge detector train` and pass --detector DIR")


def combine(watermark_detected: bool, classifier_probability: float | None) -> tuple[float | None, str | None]:
    """(probability that the image is generated, what it rests on). A detected watermark: 1 - its calibrated
    false-positive rate (WATERMARK_FALSE_POSITIVE_RATE; the chance a clean image carries a mark by accident,
    with even prior odds), whatever the classifier says: the mark is the stronger evidence. Otherwise the
    classifier's probability, or None without a classifier (an unmarked image may still be generated)."""
    if watermark_detected:
        return 1.0 - WATERMARK_FALSE_POSITIVE_RATE, "watermark"
    if classifier_probability is None:
        return None, None
    return float(classifier_probability), "classifier"


def detect_file(path: str | os.PathLike, detector: Detector | None = None, *, key: str | None = None) -> dict:
    """One image file -> {file, generated_probability, basis, watermark {detected, score, payload, too_small},
    classifier_probability, detector, note}. The watermark is read by provenance.marks.detect_file (the code of
    `pixelforge watermark detect`); the classifier sees the file as data loading reads it (data.folder.check_file:
    EXIF rotation applied, alpha over white). A file that cannot be read is a ValueError naming it."""
    from ..data.folder import check_file
    from .marks import detect_file as watermark_detect_file

    mark = watermark_detect_file(path, key=key)  # a ValueError naming the file when it cannot be read
    p_cls = None
    if detector is not None:
        im, reason = check_file(path)
        if im is None:
            raise ValueError(f"{path}: {reason}")
        p_cls = float(detector.probability([im])[0])
    p, basis = combine(mark["detected"], p_cls)
    record = {"file": str(path), "generated_probability": None if p is None else round(p, 4), "basis": basis,
              "watermark": {"detected": mark["detected"], "score": mark["score"], "payload": mark["payload"],
                            "too_small": mark["too_small"]},
              "classifier_probability": None if p_cls is None else round(p_cls, 4),
              "detector": None if detector is None else detector_name(detector)}
    if detector is None:
        record["note"] = NO_DETECTOR_NOTE
    if basis == "watermark":
        record["note"] = (f"watermark found: generated unless a clean image matched the mark by chance "
                          f"(false-positive rate {WATERMARK_FALSE_POSITIVE_RATE:g} at the threshold)")
    return record


def detector_name(detector: Detector) -> str:
    """The name a record gives a detector: its folder."""
    return str(detector.path) if detector.path is not None else "(in memory)"
