"""Reconstruction figures of an autoencoder: PSNR and, where scikit-image is installed, SSIM (Wang et al.
2004), pure functions of two sets of 8-bit images of the same shape."""

from __future__ import annotations

import math

import numpy as np
import torch

PEAK = 255.0  # the largest 8-bit value: PSNR's peak signal


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.dtype != torch.uint8 or fake.dtype != torch.uint8:
        raise ValueError(f"reconstruction figures take uint8 images, got {real.dtype} and {fake.dtype}")
    if real.ndim != 4 or real.shape != fake.shape:
        raise ValueError(f"reconstruction figures need two (N, C, H, W) sets of one shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")


def psnr(real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB, (N,): 10 log10(255^2 / MSE) over each image's C*H*W
    values, real and fake uint8 (N, C, H, W); inf for an exact copy."""
    _check_pair(real, fake)
    mse = (real.double() - fake.double()).square().flatten(1).mean(1).numpy()  # (N,)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(PEAK**2 / mse)


def ssim(real: torch.Tensor, fake: torch.Tensor) -> np.ndarray | None:
    """Per-image structural similarity, (N,) in [-1, 1], by scikit-image's structural_similarity (its default
    uniform 7x7 window, shrunk to the largest odd side that fits an image smaller than 7); None when
    scikit-image is not installed."""
    _check_pair(real, fake)
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    side = min(real.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return None  # images under 3 pixels on a side have no SSIM window
    return np.array([structural_similarity(r.numpy(), f.numpy(), data_range=PEAK, channel_axis=0, win_size=win)
                     for r, f in zip(real, fake)])


def reconstruction_figures(real: torch.Tensor, fake: torch.Tensor) -> dict:
    """{"psnr": mean dB over the images (copies counted at their finite best, so one exact copy cannot make
    the mean infinite: 10 log10(255^2 / (1/12)), the MSE of rounding to 8 bits), "ssim": mean or None,
    "n": N}."""
    per_image = np.minimum(psnr(real, fake), 10.0 * math.log10(PEAK**2 * 12))
    s = ssim(real, fake)
    return {"psnr": float(per_image.mean()), "ssim": None if s is None else float(s.mean()), "n": int(real.shape[0])}
