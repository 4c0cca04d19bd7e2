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
from ..progress import stage_bar
from .kid import kernel_inception_distance, subset_size_used
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


def extract_features(extractor, images: torch.Tensor, *, batch_size: int = 64, with_logits: bool = False,
                     progress: bool = False, desc: str = "features"):
    """extractor.features(images, ...) under a progress bar with ETA: fed batch by batch when progress
    is on, which changes no feature (each image is resized and passed on its own terms)."""
    if not progress or len(images) == 0:
        return extractor.features(images, batch_size=batch_size, with_logits=with_logits)
    feats, logits = [], []
    with stage_bar(len(images), desc) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            out = extractor.features(chunk, batch_size=batch_size, with_logits=with_logits)
            feats.append(out[0] if with_logits else out)
            if with_logits:
                logits.append(out[1])
            bar.update(len(chunk))
    return (np.concatenate(feats), np.concatenate(logits)) if with_logits else np.concatenate(feats)


def fake_features(extractor, fake: torch.Tensor, *, batch_size: int = 64, progress: bool = False,
                  desc: str = "features: fake images") -> tuple[np.ndarray, np.ndarray | None]:
    """(features, logits) of generated uint8 images (N, C, H, W); logits None where the extractor has no
    classification head. What evaluate_images computes when it is not given them (a sharded evaluation
    computes each process's share and gathers them)."""
    if extractor.has_logits:
        return extract_features(extractor, fake, batch_size=batch_size, with_logits=True, progress=progress, desc=desc)
    return extract_features(extractor, fake, batch_size=batch_size, progress=progress, desc=desc), None


def _bar_callback(bar) -> Callable[[int, int], None]:
    """callback(done, total) -> the bar at done."""
    return lambda done, total: bar.update(done - bar.n)


def real_features(
    images: torch.Tensor,
    extractor,
    *,
    cache_dir: str | os.PathLike | None = None,
    label: str = "",
    batch_size: int = 64,
    progress: bool = False,
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
    feats = extract_features(extractor, images, batch_size=batch_size, progress=progress, desc="features: real images")
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
    progress: bool = False,
) -> dict:
    """Every figure from features; IS only where the extractor has a classification head.
    "kid_subset_size" is the subset size KID used: options.kid_subset_size capped at the smaller set."""
    mu_r, sigma_r = real_stats if real_stats is not None else feature_stats(real_features_)
    mu_f, sigma_f = feature_stats(fake_features)
    kid_size = subset_size_used(options.kid_subset_size, len(fake_features), len(real_features_))
    with stage_bar(options.kid_subsets, f"KID subsets of {kid_size}", unit="subset", enabled=progress) as bar:
        kid, kid_std = kernel_inception_distance(fake_features, real_features_, subsets=options.kid_subsets,
                                                 subset_size=kid_size, seed=options.seed, callback=_bar_callback(bar))
    with stage_bar(2 * (len(real_features_) + len(fake_features)), "precision/recall", unit="row",
                   enabled=progress) as bar:
        precision, recall = precision_recall(real_features_, fake_features, k=options.pr_k, callback=_bar_callback(bar))
    out = {
        "fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r),
        "kid": float(kid),
        "kid_std": float(kid_std),
        "is": None,
        "is_std": None,
        "precision": float(precision),
        "recall": float(recall),
        "kid_subset_size": kid_size,
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
    progress: bool = False,
    fake_feats: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> dict:
    """fake, real: uint8 (N, C, H, W). Returns the figures plus what produced them (JSON-ready);
    progress: a bar with ETA for each stage (features of each set, KID, precision/recall) on stderr.
    fake_feats: fake_features(extractor, fake) where the caller has them already (a sharded evaluation)."""
    if len(fake) < 2 or len(real) < 2:
        raise ValueError(f"need at least 2 fake and 2 real images, got {len(fake)} and {len(real)}")
    r_feats, mu_r, sigma_r = real_features(real, extractor, cache_dir=cache_dir, label=real_label,
                                           batch_size=options.batch_size, progress=progress)
    if fake_feats is None:
        fake_feats = fake_features(extractor, fake, batch_size=options.batch_size, progress=progress)
    f_feats, f_logits = fake_feats
    figures = compute_figures(f_feats, r_feats, fake_logits=f_logits, real_stats=(mu_r, sigma_r), options=options,
                              progress=progress)
    kid_size = figures.pop("kid_subset_size")
    figures.update({
        "extractor": extractor.name,
        "n_fake": int(len(fake)),
        "n_real": int(len(real)),
        "settings": {
            "resize": RESIZE_METHOD,
            "is_note": "Inception Score from the domain classifier's logits: not comparable to published IS"
            if f_logits is not None else "no classification head: IS not computed",
            **asdict(options),
            "kid_subset_size": kid_size,  # the size used, not the one asked for (capped at the smaller set)
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
    so figures over training differ only because the model changed.

    Sharded (evaluator.sharded): in a distributed training every process calls it, samples and extracts the
    features of its share of the n images (distributed.shard) and the features are gathered; rank 0 returns
    the figures, the others {}. In one process it computes them all."""
    from ..condition import Cond
    from ..distributed import current, gather_rows, shard

    r_feats, mu_r, sigma_r = real_features(real, extractor, cache_dir=cache_dir, batch_size=options.batch_size)
    labels = balanced_labels(n, num_classes)

    def evaluator(model: torch.nn.Module, step: int) -> dict[str, float]:
        # Only the options this family takes (e.g. a GAN has no sampler or steps).
        opts = {k: v for k, v in sample_options.items() if k in getattr(model, "sample_options", {})}
        world = current()
        share = shard(n, world)
        chunks = []
        for start in range(share.start, share.stop, options.batch_size):
            stop = min(share.stop, start + options.batch_size)
            cond = Cond(labels=torch.tensor(labels[start:stop])) if labels else None
            chunks.append(to_uint8(model.sample(stop - start, cond, seeds=list(range(start, stop)), **opts)))
        f_feats = extractor.features(torch.cat(chunks), batch_size=options.batch_size)
        if world.distributed:
            f_feats = gather_rows(torch.from_numpy(np.ascontiguousarray(f_feats))).numpy()
            if not world.main:
                return {}
        mu_f, sigma_f = feature_stats(f_feats)
        kid, kid_std = kernel_inception_distance(f_feats, r_feats, subsets=options.kid_subsets,
                                                 subset_size=options.kid_subset_size, seed=options.seed)
        return {"fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r), "kid": float(kid), "kid_std": float(kid_std)}

    evaluator.sharded = True  # type: ignore[attr-defined]  # the training loop calls it on every process
    return evaluator
