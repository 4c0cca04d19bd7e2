"""From images to every figure: features of fake and real images (real ones cached), then FID, KID,
IS, precision and recall, always reported with the extractor and settings that produced them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .frechet import feature_stats, frechet_distance
from .inception_score import inception_score_from_logits
from .kid import kernel_inception_distance
from .precision_recall import precision_recall

RESIZE_METHOD = "clean-fid style: Pillow bicubic on the float pixel values (mode F), per channel"
REAL_CACHE_VERSION = 1


@dataclass(frozen=True)
class EvalOptions:
    """Settings of the figures themselves (recorded beside them in every report)."""

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    is_splits: int = 10
    seed: int = 0
    batch_size: int = 64


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8, rounded exactly as saved PNGs are, so figures match the files."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("PIXELFORGE_CACHE", Path.home() / ".cache" / "pixelforge")) / "real-features"


def real_features(
    images: torch.Tensor,
    extractor,
    *,
    cache_dir: str | os.PathLike | None = None,
    label: str = "",
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, mu, sigma) of real uint8 images, computed once and cached on disk.

    The cache key is the images' content hash, the extractor's name and the resize method, so a
    changed data set, extractor or preprocessing never reuses stale statistics.
    """
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
    key_fields = {"version": REAL_CACHE_VERSION, "content": digest, "shape": list(images.shape),
                  "extractor": extractor.name, "resize": RESIZE_METHOD}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    folder = _cache_dir(cache_dir)
    path = folder / f"{key}.safetensors"
    if path.exists():
        d = load_file(str(path))
        return d["features"], d["mu"], d["sigma"]
    feats = extractor.features(images, batch_size=batch_size)
    mu, sigma = feature_stats(feats)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"features": np.ascontiguousarray(feats), "mu": mu, "sigma": np.ascontiguousarray(sigma)}, str(tmp),
              metadata={"label": label, **{k: str(v) for k, v in key_fields.items()}})
    os.replace(tmp, path)
    return feats, mu, sigma


def compute_figures(
    fake_features: np.ndarray,
    real_features_: np.ndarray,
    *,
    fake_logits: np.ndarray | None = None,
    real_stats: tuple[np.ndarray, np.ndarray] | None = None,
    options: EvalOptions = EvalOptions(),
) -> dict:
    """Every figure from features; IS only where the extractor has a classification head."""
    mu_r, sigma_r = real_stats if real_stats is not None else feature_stats(real_features_)
    mu_f, sigma_f = feature_stats(fake_features)
    kid, kid_std = kernel_inception_distance(fake_features, real_features_, subsets=options.kid_subsets,
                                             subset_size=options.kid_subset_size, seed=options.seed)
    precision, recall = precision_recall(real_features_, fake_features, k=options.pr_k)
    out = {
        "fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r),
        "kid": float(kid),
        "kid_std": float(kid_std),
        "is": None,
        "is_std": None,
        "precision": float(precision),
        "recall": float(recall),
    }
    if fake_logits is not None and len(fake_logits) >= options.is_splits:
        is_mean, is_std = inception_score_from_logits(fake_logits, splits=options.is_splits)
        out["is"], out["is_std"] = float(is_mean), float(is_std)
    return out


def evaluate_images(
    fake: torch.Tensor,
    real: torch.Tensor,
    extractor,
    *,
    options: EvalOptions = EvalOptions(),
    cache_dir: str | os.PathLike | None = None,
    real_label: str = "",
) -> dict:
    """fake, real: uint8 (N, C, H, W). Returns the figures plus what produced them (JSON-ready)."""
    if len(fake) < 2 or len(real) < 2:
        raise ValueError(f"need at least 2 fake and 2 real images, got {len(fake)} and {len(real)}")
    r_feats, mu_r, sigma_r = real_features(real, extractor, cache_dir=cache_dir, label=real_label,
                                           batch_size=options.batch_size)
    if extractor.has_logits:
        f_feats, f_logits = extractor.features(fake, batch_size=options.batch_size, with_logits=True)
    else:
        f_feats, f_logits = extractor.features(fake, batch_size=options.batch_size), None
    figures = compute_figures(f_feats, r_feats, fake_logits=f_logits, real_stats=(mu_r, sigma_r), options=options)
    figures.update({
        "extractor": extractor.name,
        "n_fake": int(len(fake)),
        "n_real": int(len(real)),
        "settings": {
            "resize": RESIZE_METHOD,
            "is_note": "Inception Score from the domain classifier's logits: not comparable to published IS"
            if f_logits is not None else "no classification head: IS not computed",
            **asdict(options),
        },
    })
    return figures


def nearest_real(fake_features: np.ndarray, real_features_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each fake image, the index of its nearest real image in feature space and the distance."""
    f = fake_features.astype(np.float64)
    r = real_features_.astype(np.float64)
    d2 = (f * f).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2 * f @ r.T  # (N_fake, N_real)
    idx = d2.argmin(1)
    return idx, np.sqrt(np.maximum(d2[np.arange(len(f)), idx], 0.0))


def balanced_labels(n: int, num_classes: int) -> list[int] | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... so every class is sampled equally often."""
    return [i % num_classes for i in range(n)] if num_classes else None


def make_training_evaluator(
    real: torch.Tensor,
    extractor,
    *,
    n: int,
    num_classes: int,
    sample_options: dict,
    cache_dir: str | os.PathLike | None = None,
    options: EvalOptions = EvalOptions(kid_subsets=20),
) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """evaluator(model, step) -> {"fid", "kid", "kid_std"} on n samples with fixed seeds (seed 0..n-1),
    so figures over training differ only because the model changed."""
    from ..condition import Cond

    r_feats, mu_r, sigma_r = real_features(real, extractor, cache_dir=cache_dir, batch_size=options.batch_size)
    labels = balanced_labels(n, num_classes)

    def evaluator(model: torch.nn.Module, step: int) -> dict[str, float]:
        # Only the options this family takes (e.g. a GAN has no sampler or steps).
        opts = {k: v for k, v in sample_options.items() if k in getattr(model, "sample_options", {})}
        chunks = []
        for start in range(0, n, options.batch_size):
            stop = min(n, start + options.batch_size)
            cond = Cond(labels=torch.tensor(labels[start:stop])) if labels else None
            chunks.append(to_uint8(model.sample(stop - start, cond, seeds=list(range(start, stop)), **opts)))
        f_feats = extractor.features(torch.cat(chunks), batch_size=options.batch_size)
        mu_f, sigma_f = feature_stats(f_feats)
        kid, kid_std = kernel_inception_distance(f_feats, r_feats, subsets=options.kid_subsets,
                                                 subset_size=options.kid_subset_size, seed=options.seed)
        return {"fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r), "kid": float(kid), "kid_std": float(kid_std)}

    return evaluator
